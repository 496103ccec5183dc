"""The ``nara`` command run for real in a subprocess, against SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Column, delete, func, insert, inspect, select
from sqlalchemy.exc import DBAPIError

from nara.security.schema import audit_access, audit_event, audit_review
from nara.store.database import create_engine, drop_database
from nara.store.migrate import alembic_config, current_revision
from nara.store.store import Store
from tests.conftest import Backend
from tests.server.test_rest_interactions import bp, patient

TRACE_SIGNS = ("Traceback", 'File "')


def nara(*args: str, timeout: int = 300, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env_extra or {})}
    env.pop("NARA_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "nara.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def head_revision(engine_url: str) -> str:
    from alembic.script import ScriptDirectory

    engine = create_engine(engine_url)
    try:
        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    finally:
        engine.dispose()
    assert head is not None
    return head


@pytest.fixture
def fresh_url(backend: Backend, tmp_path: Path) -> Iterator[str]:
    """The URL of a database that does not exist yet, on the current backend."""
    if backend.name == "sqlite":
        yield f"sqlite:///{tmp_path}/sub/fresh.db"
        return
    url = backend.url.rsplit("/", 1)[0] + f"/nara_cli_{uuid.uuid4().hex[:10]}"
    try:
        yield url
    finally:
        drop_database(url)


def test_db_upgrade_creates_the_schema_and_is_idempotent(fresh_url: str) -> None:
    first = nara("db", "upgrade", "--database-url", fresh_url)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "up to date" in first.stdout
    again = nara("db", "upgrade", "--database-url", fresh_url)
    assert again.returncode == 0, again.stdout + again.stderr
    engine = create_engine(fresh_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"resource", "resource_history", "sp_token", "sp_reference", "alembic_version"} <= tables
        assert current_revision(engine) == head_revision(fresh_url)
    finally:
        engine.dispose()


def _old_audit_record(url: str, years_ago: int) -> int:
    """An audit record written ``years_ago`` years ago (as a long-running region has), its seq."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn, conn.begin():
            at = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=365 * years_ago + 2)
            conn.execute(
                insert(audit_event).values(
                    recorded_at=at, action="read", outcome="permit", actor_kind="staff", patient_count=0
                )
            )
            return int(conn.execute(select(func.max(audit_event.c.seq))).scalar_one())
    finally:
        engine.dispose()


def _delete_audit_row(url: str, key: Column[int], row_id: int) -> str | None:
    """Delete the audit row whose ``key`` (e.g. ``audit_event.c.seq``) is ``row_id``: the refusal, or None."""
    engine = create_engine(url)
    try:
        with engine.connect().execution_options(nara_write=True) as conn, conn.begin():
            conn.execute(delete(key.table).where(key == row_id))
        return None
    except DBAPIError as e:
        return str(e.orig)
    finally:
        engine.dispose()


def test_r_log_2_the_retention_period_follows_the_setting_and_is_never_under_five_years(fresh_url: str) -> None:
    ten = nara("db", "upgrade", "--database-url", fresh_url, env_extra={"NARA_AUDIT_RETENTION_YEARS": "10"})
    assert ten.returncode == 0, ten.stdout + ten.stderr
    seq = _old_audit_record(fresh_url, 7)
    assert "within the retention period" in (_delete_audit_row(fresh_url, audit_event.c.seq, seq) or "")
    short = nara("db", "upgrade", "--database-url", fresh_url, env_extra={"NARA_AUDIT_RETENTION_YEARS": "3"})
    assert short.returncode != 0
    assert "NARA_AUDIT_RETENTION_YEARS must be at least 5" in short.stdout + short.stderr
    assert not any(sign in short.stdout + short.stderr for sign in TRACE_SIGNS)
    assert "within the retention period" in (
        _delete_audit_row(fresh_url, audit_event.c.seq, seq) or ""
    )  # still ten years
    five = nara("db", "upgrade", "--database-url", fresh_url, env_extra={"NARA_AUDIT_RETENTION_YEARS": "5"})
    assert five.returncode == 0, five.stdout + five.stderr
    assert _delete_audit_row(fresh_url, audit_event.c.seq, seq) is None  # seven years old: past the five-year period
    recent = _old_audit_record(fresh_url, 4)
    assert "within the retention period" in (_delete_audit_row(fresh_url, audit_event.c.seq, recent) or "")


def test_r_log_2_a_completed_review_is_kept_for_the_retention_period_and_may_go_after_it(fresh_url: str) -> None:
    """Log reviews (R-LOG-4) are audit records too: refused deletion while recent, allowed once past retention."""
    done = nara("db", "upgrade", "--database-url", fresh_url)
    assert done.returncode == 0, done.stdout + done.stderr
    engine = create_engine(fresh_url)
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        ids = {}
        with engine.connect() as conn, conn.begin():
            for name, years in (("old", 7), ("recent", 1)):
                ids[name] = conn.execute(
                    insert(audit_review)
                    .values(
                        reviewed_at=now - timedelta(days=365 * years),
                        reviewer="SE2321000016-AUD",
                        events="1",
                        finding="inga avvikelser",
                        action="ingen",
                    )
                    .returning(audit_review.c.id)
                ).scalar_one()
        assert "within the retention period" in (_delete_audit_row(fresh_url, audit_review.c.id, ids["recent"]) or "")
        assert _delete_audit_row(fresh_url, audit_review.c.id, ids["old"]) is None
    finally:
        engine.dispose()


def test_db_upgrade_reports_an_unreachable_database_without_a_trace() -> None:
    r = nara("db", "upgrade", "--database-url", "postgresql://postgres@127.0.0.1:1/nara")
    assert r.returncode == 1
    assert "cannot reach the database" in r.stderr
    assert not any(s in r.stdout + r.stderr for s in TRACE_SIGNS)


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else orjson.dumps(data))
    return path


def count_by_type(store: Store) -> dict[str, int]:
    from sqlalchemy import func, select

    from nara.store.schema import resource

    with store.engine.connect() as conn:
        rows = conn.execute(
            select(resource.c.res_type, func.count()).where(resource.c.deleted.is_(False)).group_by(resource.c.res_type)
        ).all()
    return {t: int(n) for t, n in rows}


def test_import_files_folders_and_ndjson_reports_bad_files_and_goes_on(
    backend: Backend, store: Store, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    single = write(tmp_path / "single.json", {**patient(family="Ensam"), "id": "single"})
    write(data / "a-patient.json", {**patient(), "id": "p1"})
    write(data / "b-broken.json", b'{"resourceType": "Patient",')
    write(data / "c-invalid.json", {**patient(), "id": "p2", "gender": "kvinna"})
    write(data / "d-not-fhir.json", {"hello": "world"})
    write(
        data / "nested" / "e-transaction.json",
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:p",
                    "resource": patient(family="Tx"),
                    "request": {"method": "POST", "url": "Patient"},
                },
                {
                    "resource": {**bp("x"), "subject": {"reference": "urn:uuid:p"}},
                    "request": {"method": "POST", "url": "Observation"},
                },
            ],
        },
    )
    write(
        data / "f-collection.json",
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": bp("p1")}, {"resource": {**bp("p1"), "status": "?"}}],
        },
    )
    lines = [
        orjson.dumps(bp("p1")),
        b"",
        orjson.dumps({**patient(), "id": "p3"}),
        b"{oops",
        orjson.dumps(bp("p1", 120)),
    ]
    write(data / "g-lines.ndjson", b"\n".join(lines) + b"\n")
    write(
        data / "h-bad-transaction.json",
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": patient(family="Aldrig"), "request": {"method": "POST", "url": "Patient"}},
                {"resource": patient(gender="x"), "request": {"method": "POST", "url": "Patient"}},
            ],
        },
    )
    write(data / "ignored.txt", b"not imported: not .json or .ndjson")

    r = nara("import", "--database-url", backend.url, str(single), str(data))
    out = r.stdout + r.stderr
    errors = " ".join(r.stderr.split())  # Rich wraps long lines
    assert r.returncode == 2, out  # some failures: non-zero, after importing everything else
    assert not any(s in out for s in TRACE_SIGNS), out
    assert "Importing" in r.stdout and "9/9" in r.stdout  # the progress bar counted every file
    # 9 files; created: single, p1, 2 in the transaction, 1 from the collection, 3 from NDJSON; 6 failures
    # (the failing transaction counts once and stores nothing).
    summary_row = next(line for line in r.stdout.splitlines() if line.count("│") == 5)
    assert [c.strip() for c in summary_row.strip("│ ").split("│")] == ["9", "8", "0", "6"]
    assert f"{data / 'b-broken.json'}: not valid JSON" in errors
    assert f"{data / 'c-invalid.json'}: Patient.gender: Code 'kvinna'" in errors
    assert f"{data / 'd-not-fhir.json'}: not a FHIR resource" in errors
    assert f"{data / 'f-collection.json'} Bundle.entry[1]: Observation.status" in errors
    assert f"{data / 'g-lines.ndjson'}:4: not valid JSON" in errors
    assert f"{data / 'h-bad-transaction.json'}: Bundle.entry[1]: Code 'x'" in errors
    assert "(at Bundle.entry[1].resource.gender)" in errors
    assert count_by_type(store) == {"Patient": 4, "Observation": 4}

    again = nara("import", "--database-url", backend.url, str(single), str(data / "a-patient.json"))
    assert again.returncode == 0, again.stdout + again.stderr
    row = next(line for line in again.stdout.splitlines() if line.count("│") == 5)
    assert [c.strip() for c in row.strip("│ ").split("│")] == ["2", "0", "2", "0"]


def test_import_of_a_missing_path_fails_before_importing(backend: Backend, store: Store, tmp_path: Path) -> None:
    good = write(tmp_path / "p.json", patient())
    r = nara("import", "--database-url", backend.url, str(good), str(tmp_path / "nope.json"))
    assert r.returncode == 1
    assert "no such file or folder" in r.stderr and "nope.json" in r.stderr
    assert count_by_type(store) == {}


def test_import_dedupes_shared_directory_resources_by_identifier(
    backend: Backend, store: Store, tmp_path: Path
) -> None:
    org = {
        "resourceType": "Organization",
        "identifier": [{"system": "urn:oid:1.2.752.29.4.19", "value": "SE2321000164-1"}],
        "name": "Vårdcentralen",
    }
    for n in range(3):
        write(
            tmp_path / f"b{n}.json",
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "fullUrl": f"urn:uuid:o{n}",
                        "resource": org,
                        "request": {"method": "POST", "url": "Organization"},
                    },
                    {
                        "resource": {**patient(), "managingOrganization": {"reference": f"urn:uuid:o{n}"}},
                        "request": {"method": "POST", "url": "Patient"},
                    },
                ],
            },
        )
    r = nara("import", "--database-url", backend.url, str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert count_by_type(store) == {"Organization": 1, "Patient": 3}
    with store.transaction(write=False) as tx:
        from nara.store.search import search_ids

        org_id = search_ids(tx, "Organization", "identifier=urn:oid:1.2.752.29.4.19|SE2321000164-1")[0].res_id
        patients = search_ids(tx, "Patient", f"organization=Organization/{org_id}", limit=10)
    assert len(patients) == 3


def test_export_writes_ndjson_per_type_of_current_resources(backend: Backend, store: Store, tmp_path: Path) -> None:
    with store.transaction() as tx:
        p = tx.create(patient()).stored
        assert p is not None
        for value in (120, 130, 140):
            tx.create(bp(p.res_id, value))
        gone = tx.create(patient(family="Borta")).stored
        assert gone is not None
        tx.update("Patient", p.res_id, {**p.resource(), "gender": "male"})
    with store.transaction() as tx:
        tx.delete("Patient", gone.res_id)
    out = tmp_path / "export"
    r = nara("export", "--database-url", backend.url, "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(f.name for f in out.iterdir()) == ["Observation.ndjson", "Patient.ndjson"]
    patients = [orjson.loads(line) for line in (out / "Patient.ndjson").read_bytes().splitlines()]
    assert [(x["id"], x["gender"], x["meta"]["versionId"]) for x in patients] == [(p.res_id, "male", "2")]
    observations = [orjson.loads(line) for line in (out / "Observation.ndjson").read_bytes().splitlines()]
    assert sorted(o["component"][0]["valueQuantity"]["value"] for o in observations) == [120, 130, 140]
    with store.transaction(write=False) as tx:
        for o in observations:
            assert tx.read("Observation", o["id"]).resource() == o
    only = tmp_path / "only"
    r2 = nara("export", "--database-url", backend.url, "--out", str(only), "--type", "Observation")
    assert r2.returncode == 0
    assert [f.name for f in only.iterdir()] == ["Observation.ndjson"]
    assert "Wrote 3 resources" in r2.stdout


def test_r_log_1_export_and_import_by_the_operator_are_logged_against_each_patient(
    backend: Backend, store: Store, tmp_path: Path
) -> None:
    """``nara export`` copies patients' data out and ``nara import`` writes it: each is one record of the
    operator (the operating-system user), naming every patient, written before the files (export) or with
    each file's writes (import)."""
    with store.transaction() as tx:
        first = tx.create(patient(family="Ett")).stored
        second = tx.create(patient(family="Två")).stored
        assert first is not None and second is not None
        tx.create(bp(first.res_id, 120))
    out = tmp_path / "out"
    assert nara("export", "--database-url", backend.url, "--out", str(out), "--type", "Observation").returncode == 0
    assert nara("export", "--database-url", backend.url, "--out", str(tmp_path / "all")).returncode == 0
    (tmp_path / "in").mkdir()
    write(tmp_path / "in" / "new.json", {**patient(family="Tre"), "id": "tre"})
    r = nara("import", "--database-url", backend.url, str(tmp_path / "in"))
    assert r.returncode == 0, r.stdout + r.stderr
    with store.engine.connect() as conn:
        logged = conn.execute(
            select(audit_event).where(audit_event.c.action.in_(["export", "import"])).order_by(audit_event.c.seq)
        ).all()
        whose = {
            e.seq: sorted(a.patient_id for a in conn.execute(select(audit_access).where(audit_access.c.seq == e.seq)))
            for e in logged
        }
    assert [(e.action, e.request, e.patient_count) for e in logged] == [
        ("export", "nara export --type Observation", 1),
        ("export", "nara export", 2),
        ("import", "nara import new.json", 1),
    ]
    assert [whose[e.seq] for e in logged] == [[first.res_id], sorted([first.res_id, second.res_id]), ["tre"]]
    assert all(e.actor_kind == "system" and (e.user_id or "").startswith("cli:") for e in logged)


def test_r_log_4_a_review_on_the_command_line_is_logged_against_each_patient_it_lists(
    backend: Backend, store: Store
) -> None:
    """``nara audit review`` shows the operator the accesses of many patients: one record of the operator naming
    each listed patient (access type log-review), as the API's $log-review does."""
    from nara.security import audit
    from tests.security.test_audit_commit import NURSE as nurse

    with store.transaction() as tx:
        for pid in ("p-one", "p-two"):
            audit.record(tx.conn, audit.AuditRecord("read", "permit", nurse, "Patient", pid, f"GET Patient/{pid}",
                                                    accesses=[audit.Access(pid, None, None, "own-unit")]))  # fmt: skip
    r = nara("audit", "review", "--database-url", backend.url, "--days", "1", "--sample", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "p-one" in r.stdout and "p-two" in r.stdout
    with store.engine.connect() as conn:
        review = conn.execute(select(audit_event).where(audit_event.c.action == "log-review")).one()
        listed = conn.execute(select(audit_access).where(audit_access.c.seq == review.seq)).all()
    assert review.request == "nara audit review --days 1" and (review.user_id or "").startswith("cli:")
    assert sorted((a.patient_id, a.access_type) for a in listed) == [("p-one", "log-review"), ("p-two", "log-review")]


def test_export_then_import_reproduces_the_resources(backend: Backend, store: Store, tmp_path: Path) -> None:
    with store.transaction() as tx:
        p = tx.create(patient()).stored
        assert p is not None
        tx.create(bp(p.res_id))
    out = tmp_path / "export"
    assert nara("export", "--database-url", backend.url, "--out", str(out)).returncode == 0
    exported = [orjson.loads(line) for f in sorted(out.iterdir()) for line in f.read_bytes().splitlines()]
    assert len(exported) == 2
    r = nara("import", "--database-url", backend.url, str(out))
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.count("│") == 5)
    assert [c.strip() for c in row.strip("│ ").split("│")] == ["2", "0", "2", "0"]  # same ids: updates
    with store.transaction(write=False) as tx:
        for res in exported:
            back = tx.read(res["resourceType"], res["id"]).resource()
            assert back["meta"]["versionId"] == "2"
            assert {k: v for k, v in back.items() if k != "meta"} == {k: v for k, v in res.items() if k != "meta"}


def test_audit_drain_takes_the_outbox_it_is_given_its_default_or_none_when_off(
    backend: Backend, store: Store, tmp_path: Path
) -> None:
    """`nara audit drain` drains the directory `--outbox` (or NARA_AUDIT_OUTBOX) names, else `nara serve`'s
    default under the directory it runs in; `off` (the setting that writes reads to the database) drains none."""
    if backend.name != "postgres":
        pytest.skip("the read-audit outbox is PostgreSQL's")
    from nara.security import audit
    from nara.security.actors import Actor
    from nara.security.audit_outbox import Outbox, database_tag

    spool = tmp_path / "var" / "audit-outbox"
    writer = Outbox(spool, lambda: database_tag(store.engine))
    actor = Actor(kind="system", subject="cli-test", client_id="cli-test", policy_off=True)
    for i in range(3):
        writer.append(
            audit.AuditRecord("read", "permit", actor, "Patient", f"cli-{i}", "GET /Patient"), audit.now_utc()
        )
    writer.close()
    url = ["--database-url", backend.url]
    off = nara("audit", "drain", "--outbox", "OFF", *url)
    assert off.returncode == 0 and "Drained 0 audit records" in off.stdout, off.stdout + off.stderr
    assert list(spool.glob("*.audit"))
    env = {k: v for k, v in os.environ.items() if k != "NARA_AUDIT_OUTBOX"}
    env.update({"COLUMNS": "200", "NO_COLOR": "1"})
    default = subprocess.run(
        [sys.executable, "-m", "nara.cli", "audit", "drain", *url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert default.returncode == 0 and "Drained 3 audit records" in default.stdout, default.stdout + default.stderr
    assert not list(spool.glob("*.audit"))
