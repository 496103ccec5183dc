"""Physical baselines: what PostgreSQL itself does with the same data on the same machine.

- COPY of the same resources into a bare table (type, id, jsonb) and into Nära's own schema (the
  ``resource`` table and the ``sp_*`` search-index tables, with every index Nära creates), the index
  rows computed beforehand with Nära's extractor so that only PostgreSQL's work is timed;
- single-row INSERT commits per second (pgbench, prepared statements, one commit per row) into a
  table with the ``resource`` table's indexes, at the client counts of the HTTP create scenario;
- point reads by primary key (pgbench) from the loaded ``resource`` table.

All of it runs in a scratch database (``nara_bench_baseline``) that is dropped and recreated per run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

from bench.stats import latency_summary
from bench.target import process_cpu_seconds

BASELINE_DB = "nara_bench_baseline"
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"


def pg_url(db: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"


def server_facts() -> dict[str, Any]:
    """PostgreSQL version and the settings that decide write and read speed."""
    keys = (
        "shared_buffers",
        "work_mem",
        "maintenance_work_mem",
        "effective_cache_size",
        "max_connections",
        "synchronous_commit",
        "fsync",
        "full_page_writes",
        "wal_level",
        "wal_buffers",
        "max_wal_size",
        "checkpoint_timeout",
        "random_page_cost",
        "jit",
    )
    with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        rows = conn.execute("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", (list(keys),))
        settings = {name: f"{setting}{' ' + unit if unit else ''}" for name, setting, unit in rows}
    return {"version": version[0] if version else "unknown", "settings": settings}


DB_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted", "tup_fetched")


def database_counters(db: str) -> dict[str, int]:
    """Cumulative transaction and row counters of one database (pg_stat_database)."""
    with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
        row = conn.execute(
            f"SELECT {', '.join(DB_COUNTERS)} FROM pg_stat_database WHERE datname = %s", (db,)
        ).fetchone()
    if row is None:
        raise RuntimeError(f"no statistics for database {db}")
    return dict(zip(DB_COUNTERS, (int(v) for v in row), strict=True))


def backend_cpu_seconds(db: str) -> float | None:
    """CPU seconds (user + system) used so far by the PostgreSQL backends connected to ``db``, from /proc.

    Only for a PostgreSQL on this machine (the suite's own); None when /proc shows none of its backends. A
    backend's process title names its database (``postgres: 15/main: user db host(port) state``)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    total, found = 0.0, False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        if not title.startswith("postgres:") or f" {db} " not in title:
            continue
        seconds = process_cpu_seconds(int(entry.name))
        if seconds is not None:
            total += seconds
            found = True
    return total if found else None


def table_activity(db: str, top: int = 8) -> list[dict[str, Any]]:
    """The tables of a database that were read most (sequential tuples read + index tuples fetched)."""
    with psycopg.connect(pg_url(db), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, seq_scan, seq_tup_read, idx_scan, idx_tup_fetch, n_tup_ins, n_tup_upd, n_live_tup "
            "FROM pg_stat_user_tables "
            "ORDER BY coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) DESC LIMIT %s",
            (top,),
        ).fetchall()
    keys = ("table", "seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch", "inserted", "updated", "live_rows")
    return [dict(zip(keys, (v if v is not None else 0 for v in row), strict=True)) for row in rows]


def reset_scratch() -> None:
    with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BASELINE_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BASELINE_DB}"')


def drop_scratch() -> None:
    with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BASELINE_DB}" WITH (FORCE)')


# ---- COPY ----------------------------------------------------------------------------------------
def _copy_text(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _rows_text(rows: Sequence[Sequence[Any]]) -> bytes:
    return "".join("\t".join(_copy_text(v) for v in row) + "\n" for row in rows).encode()


class CopyPayload:
    """COPY input for the bare table and for Nära's schema, prepared before anything is timed."""

    RESOURCE_COLS = (
        "rid",
        "res_type",
        "res_id",
        "version",
        "patient_id",
        "last_updated",
        "deleted",
        "method",
        "index_mask",
        "content",
    )

    def __init__(self, resources: Sequence[dict[str, Any]]) -> None:
        from nara.fhir.searchparams import compartment_patient, extract
        from nara.store.indexing import index_params, mask_of
        from nara.store.schema import INDEX_VALUE_COLUMNS

        self.count = len(resources)
        now = datetime.now(UTC).replace(tzinfo=None)
        bare, resource_rows = [], []
        index_rows: dict[str, list[tuple[Any, ...]]] = {}
        seen: set[tuple[str, str]] = set()
        for n, res in enumerate(resources, start=1):
            res = dict(res)
            res.setdefault("id", f"copy-{n}")
            if (res["resourceType"], res["id"]) in seen:  # Synthea repeats shared resources per Bundle
                res["id"] = f"{res['id'][:50]}-{n}"
            seen.add((res["resourceType"], res["id"]))
            text = orjson.dumps(res).decode()
            rows = extract(res)
            patient = compartment_patient(res, rows)
            bare.append((res["resourceType"], res["id"], text))
            resource_rows.append(
                (n, res["resourceType"], res["id"], 1, patient, now, False, "POST", mask_of(rows), text)
            )
            for kind, params in index_params(n, res["resourceType"], patient, rows).items():
                cols = ("rid", "res_type", "param", "patient_id", *INDEX_VALUE_COLUMNS[kind])
                index_rows.setdefault(kind, []).extend(tuple(p[c] for c in cols) for p in params)
        self.bare = _rows_text(bare)
        self.resource = _rows_text(resource_rows)
        self.index = {kind: _rows_text(rows) for kind, rows in index_rows.items()}
        self.index_row_count = sum(len(r) for r in index_rows.values())


def create_nara_schema() -> None:
    """Nära's tables and indexes (from its SQLAlchemy metadata) in the scratch database."""
    from sqlalchemy import text

    from nara.store.database import create_engine
    from nara.store.schema import metadata

    engine = create_engine(pg_url(BASELINE_DB))
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS bare_resource (res_type text, res_id text, content jsonb)"))
    finally:
        engine.dispose()


COPY_VARIANTS = {
    "bare": "a bare table (type, id, jsonb) without indexes",
    "resource": "Nära's resource table with its indexes (no search-index rows)",
    "full": "Nära's resource table and search-index tables (sp_*) with all their indexes and index rows",
}


def copy_once(payload: CopyPayload, variant: str) -> dict[str, Any]:
    """One timed COPY (and commit) of the payload; tables are emptied first (not timed)."""
    from nara.store.schema import INDEX_TABLES

    indexed = variant != "bare"
    with psycopg.connect(pg_url(BASELINE_DB)) as conn:
        tables = ["bare_resource"] if not indexed else ["resource", *(t.name for t in INDEX_TABLES.values())]
        conn.execute("TRUNCATE " + ", ".join(tables))
        conn.commit()
        conn.execute("CHECKPOINT")
        conn.commit()
        start = time.perf_counter()
        with conn.cursor() as cur:
            if not indexed:
                with cur.copy("COPY bare_resource (res_type, res_id, content) FROM STDIN") as cp:
                    cp.write(payload.bare)
            else:
                cols = ", ".join(CopyPayload.RESOURCE_COLS)
                with cur.copy(f"COPY resource ({cols}) FROM STDIN") as cp:
                    cp.write(payload.resource)
                from nara.store.schema import INDEX_VALUE_COLUMNS

                for kind, data in payload.index.items() if variant == "full" else ():
                    icols = ", ".join(("rid", "res_type", "param", "patient_id", *INDEX_VALUE_COLUMNS[kind]))
                    with cur.copy(f"COPY {INDEX_TABLES[kind].name} ({icols}) FROM STDIN") as cp:
                        cp.write(data)
        conn.commit()
        seconds = time.perf_counter() - start
        if indexed:  # later single-row INSERTs take rids after the copied ones
            conn.execute("SELECT setval(pg_get_serial_sequence('resource', 'rid'), (SELECT max(rid) FROM resource))")
            conn.commit()
    return {
        "requests": 1,
        "resources": payload.count,
        "seconds": round(seconds, 4),
        "throughput": payload.count / seconds,
    }


# ---- pgbench -------------------------------------------------------------------------------------
def pgbench_path() -> str:
    found = shutil.which("pgbench")
    if not found:
        raise RuntimeError("pgbench is not installed (Debian package postgresql-client or postgresql-contrib)")
    return found


def _pgbench(
    script: str, clients: int, seconds: int, defines: dict[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    with tempfile.TemporaryDirectory(prefix="nara-pgbench-") as tmp:
        script_path = Path(tmp) / "script.sql"
        script_path.write_text(script)
        cmd = [
            pgbench_path(),
            "-h",
            PG_HOST,
            "-p",
            str(PG_PORT),
            "-U",
            PG_USER,
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(seconds),
            "-l",
            "--log-prefix",
            f"{tmp}/log",
            "-f",
            str(script_path),
        ]
        for k, v in (defines or {}).items():
            cmd += ["-D", f"{k}={v}"]
        cmd.append(BASELINE_DB)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench failed: {proc.stderr.strip()[-400:]}")
        m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", proc.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
        done = re.search(r"number of transactions actually processed: (\d+)", proc.stdout)
        latencies = []
        for log in Path(tmp).glob("log*"):
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3:
                    latencies.append(int(parts[2]) / 1000)
    n = int(done.group(1)) if done else len(latencies)
    errors = int(failed.group(1)) if failed else 0
    sample: dict[str, Any] = {
        "requests": n,
        "seconds": seconds,
        "throughput": float(m.group(1)) if m else n / seconds,
        "errors": errors,
        "error_rate": errors / n if n else 0.0,
        "connections": clients,
    }
    if latencies:
        sample.update(latency_summary(latencies))
    return sample, _shown(cmd, tmp)


def _shown(cmd: list[str], tmp: str) -> str:
    """The pgbench command line as published: temporary paths and the JSON body abbreviated."""
    out: list[str] = []
    for arg in cmd:
        if arg == f"{tmp}/log":
            out.pop()  # drop "--log-prefix"
        elif arg.startswith(tmp):
            out.append("script.sql")
        elif arg.startswith("content="):
            out.append("content='<Observation JSON>'")
        else:
            out.append(arg)
    return " ".join(out)


INSERT_SCRIPT = (
    "INSERT INTO resource (res_type, res_id, version, patient_id, last_updated, deleted, method, index_mask, content)"
    " VALUES ('Observation', gen_random_uuid()::text, 1, :patient, now(), false, 'POST', 0, (:content)::jsonb);\n"
)


def insert_commits(observation: dict[str, Any], clients: int, seconds: int) -> tuple[dict[str, Any], str]:
    """Single-row INSERT + commit per transaction into the indexed ``resource`` table."""
    return _pgbench(
        INSERT_SCRIPT,
        clients,
        seconds,
        {"content": orjson.dumps(observation).decode(), "patient": "bench-pat-000001"},
    )


def point_reads(max_rid: int, clients: int, seconds: int) -> tuple[dict[str, Any], str]:
    """SELECT of one resource's JSON by primary key."""
    script = f"\\set n random(1, {max_rid})\nSELECT content::text FROM resource WHERE rid = :n;\n"
    return _pgbench(script, clients, seconds)
