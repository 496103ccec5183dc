"""Generate ``docs/performance.md`` from the result files in ``bench/results/``.

    python -m bench.report            # regenerate from every result file (newest run in detail)

Every figure on the page carries the machine, the data size, the exact command and percentiles, as
recorded in the result file it comes from; nothing on the page is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.results import RESULTS_DIR, all_results
from bench.stats import SPREAD_LIMIT, ratio

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"

# Issue 2's targets: (scenario, goal text, minimum throughput, p99 bound in ms or None)
GOALS = (
    ("create", "single creates >= 1,500/s at p99 < 30 ms", 1500.0, 30.0),
    ("read", "reads by id >= 4,000/s at p99 < 10 ms", 4000.0, 10.0),
    ("transaction", "transaction ingest of vital signs >= 5,000 resources/s", 5000.0, None),
)


# ---- derived figures -------------------------------------------------------------------------------
def scenario(data: dict[str, Any], sid: str, target: str | None = None) -> dict[str, Any] | None:
    for sc in data["scenarios"]:
        if sc["id"] == sid and (target is None or sc["target"] == target) and sc["status"] == "ok":
            return sc
    return None


def http_targets(data: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for sc in data["scenarios"]:
        if sc["target"] != "postgresql" and sc["target"] not in seen:
            seen.append(sc["target"])
    return seen


def goals(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 2's targets against the best qualifying measurement of each HTTP target."""
    out = []
    for target in http_targets(data):
        for sid, text, minimum, p99_bound in GOALS:
            sc = scenario(data, sid, target)
            if sc is None or not sc["measurements"]:
                continue
            ms = [m for m in sc["measurements"] if m["summary"]["throughput"] is not None]
            qualifying = [m for m in ms if p99_bound is None or (m["summary"]["p99_ms"] or 1e9) < p99_bound]
            best = max(qualifying or ms, key=lambda m: m["summary"]["throughput"])
            s = best["summary"]
            met = bool(qualifying) and s["throughput"] >= minimum
            out.append(
                {
                    "target": target,
                    "scenario": sid,
                    "goal": text,
                    "measurement": best["label"],
                    "throughput": s["throughput"],
                    "unit": best["unit"],
                    "p99_ms": s["p99_ms"],
                    "met": met,
                    "note": None if qualifying else f"no measurement had p99 < {p99_bound} ms",
                }
            )
    return out


def _by_conn(sc: dict[str, Any] | None, group: str | None = None) -> dict[int, dict[str, Any]]:
    if sc is None:
        return {}
    return {
        m["params"]["connections"]: m
        for m in sc["measurements"]
        if "connections" in m["params"] and (group is None or m.get("group") == group)
    }


def _best(sc: dict[str, Any] | None, group: str | None = None) -> dict[str, Any] | None:
    if sc is None:
        return None
    ms = [m for m in sc["measurements"] if group is None or m.get("group") == group]
    ms = [m for m in ms if m["summary"]["throughput"] is not None]
    return max(ms, key=lambda m: m["summary"]["throughput"]) if ms else None


def comparisons(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each Nära figure as a fraction of the physical baseline it is bounded by."""
    base = scenario(data, "baseline")
    out: list[dict[str, Any]] = []

    def add(target: str, figure: str, m: dict[str, Any] | None, bname: str, bm: dict[str, Any] | None) -> None:
        if m is None or bm is None:
            return
        value, bvalue = m["summary"]["throughput"], bm["summary"]["throughput"]
        out.append(
            {
                "target": target,
                "figure": figure,
                "value": value,
                "unit": m["unit"],
                "baseline": bname,
                "baseline_value": bvalue,
                "baseline_unit": bm["unit"],
                "fraction": ratio(value, bvalue),
            }
        )

    copy = {m["params"].get("variant"): m for m in (base or {}).get("measurements", []) if m.get("group") == "copy"}
    copy_syn = {
        m["params"].get("variant"): m for m in (base or {}).get("measurements", []) if m.get("group") == "copy-synthea"
    }
    inserts, reads_pg = _by_conn(base, "insert"), _by_conn(base, "point-read")
    for target in http_targets(data):
        noop = _by_conn(scenario(data, "noop", target))
        for c, m in _by_conn(scenario(data, "create", target)).items():
            add(target, f"creates/s, {c} connections", m, f"INSERT commits/s, {c} clients", inserts.get(c))
        for c, m in _by_conn(scenario(data, "read", target)).items():
            add(target, f"reads/s, {c} connections", m, f"point reads/s by primary key, {c} clients", reads_pg.get(c))
            add(target, f"reads/s, {c} connections", m, f"no-op HTTP requests/s, {c} connections", noop.get(c))
        tx = _best(scenario(data, "transaction", target))
        add(
            target,
            "transaction resources/s (best)",
            tx,
            "COPY resources/s, Nära's tables and indexes",
            copy.get("full"),
        )
        add(target, "transaction resources/s (best)", tx, "COPY resources/s, resource table only", copy.get("resource"))
        add(target, "transaction resources/s (best)", tx, "COPY resources/s, bare table", copy.get("bare"))
        imp = _best(scenario(data, "synthea-import", target))
        add(
            target,
            "Synthea import resources/s (best)",
            imp,
            "COPY of the same resources, Nära's tables",
            copy_syn.get("full"),
        )
        ing = _best(scenario(data, "ingest", target))
        add(
            target,
            "home-monitoring ingest resources/s",
            ing,
            "COPY resources/s, Nära's tables and indexes",
            copy.get("full"),
        )
    return out


# ---- formatting ------------------------------------------------------------------------------------
def num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "n/a"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.0f}%"


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    h = list(header)
    lines = ["| " + " | ".join(h) + " |", "|" + "|".join("---" for _ in h) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def measurement_rows(measurements: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for m in measurements:
        s = m["summary"]
        flag = f"**spread {pct(s['spread'])} > {SPREAD_LIMIT:.0%}**" if s["flagged"] else pct(s["spread"])
        rows.append(
            [
                m["label"],
                f"{num(s['throughput'])} {m['unit']}",
                flag,
                ms(s["p50_ms"]),
                ms(s["p95_ms"]),
                ms(s["p99_ms"]),
                pct(s["error_rate"]) if s["error_rate"] is not None else "n/a",
                str(s["reps"]) + (" (extended)" if any(r.get("extended") for r in m["reps"]) else ""),
                _load(m["reps"]),
            ]
        )
    return rows


MEASUREMENT_HEADER = (
    "measurement",
    "median throughput",
    "spread",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "errors",
    "reps",
    "machine load",
)


def _load(reps: list[dict[str, Any]]) -> str:
    """The 1-minute load average when the repetitions started (2 cores: above ~2 means others were busy)."""
    loads = [r["loadavg_1m"] for r in reps if r.get("loadavg_1m") is not None]
    if not loads:
        return "n/a"
    return f"{min(loads):.1f}–{max(loads):.1f}"


def machine_lines(data: dict[str, Any]) -> list[str]:
    m, pg, git = data["machine"], data.get("postgres") or {}, data["git"]
    settings = pg.get("settings", {})
    shown = ", ".join(
        f"{k}={settings[k]}"
        for k in ("shared_buffers", "work_mem", "synchronous_commit", "fsync", "max_wal_size", "jit")
        if k in settings
    )
    rows = [
        ("run", f"`{data['run_id']}` ({data['mode']} mode, {data.get('duration_s') or '?'} s)"),
        ("command", f"`{data['command']}`"),
        ("git commit", f"`{git['commit'][:12]}`{' (uncommitted changes)' if git.get('dirty') else ''}"),
        ("started", data["started"]),
        ("machine", f"{m.get('cpu')}, {m['cores']} cores, {m['memory_gib']} GiB memory, Linux {m.get('kernel')}"),
        ("load average", f"{m.get('loadavg_start')} at start, {m.get('loadavg_end')} at end (1/5/15 min)"),
        ("PostgreSQL", f"{pg.get('version', 'n/a')}; {shown}"),
        ("Python", m.get("python", "n/a")),
        ("load generators", "; ".join(f"{k}: {v}" for k, v in data.get("generator", {}).items())),
    ]
    for t in data.get("targets", []):
        desc = f"{t['base_url']} on {t['database']}"
        if t.get("workers"):
            desc += f", {t['workers']} worker(s): `{t.get('command', '')}`"
        rows.append((f"target {t['name']}-{t['database']}", desc))
    lines = table(("", ""), rows)
    for note in data.get("notes", []):
        lines.append("")
        lines.append(f"> **Note:** {note}")
    return lines


def scenario_section(data: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    out = ["", f"### {sc['title']} — `{sc['target']}`", ""]
    if sc.get("description"):
        out.append(sc["description"].rstrip(".") + ".")
        out.append("")
    if sc["status"] != "ok":
        out.append(f"**{sc['status']}**: {sc['reason']}")
        return out
    if sc.get("data_size"):
        out.append(f"Data: {sc['data_size']}.")
        out.append("")
    commands = []
    for m in sc["measurements"]:
        if m["command"] and m["command"] not in commands:
            commands.append(m["command"])
    if commands:
        out.append(
            "Command (one repetition): `"
            + commands[0]
            + "`"
            + (f" (and {len(commands) - 1} more like it)" if len(commands) > 1 else "")
        )
        out.append("")
    if sc["id"] == "growth":
        out += growth_tables(sc)
    else:
        out += table(MEASUREMENT_HEADER, measurement_rows(sc["measurements"]))
    extra = sc.get("extra", {})
    for key, title in (("not_available", "Not available on this target"),):
        if extra.get(key):
            out.append("")
            out.append(f"{title}: " + "; ".join(f"`{k}` ({v})" for k, v in extra[key].items()) + ".")
    if extra.get("no_deep_pages"):
        out.append("")
        out.append("No deep pages reachable for: " + ", ".join(extra["no_deep_pages"]) + ".")
    if sc["id"] == "ingest" and extra.get("timeline"):
        out.append("")
        out.append("Over time (each row one slice):")
        out.append("")
        out += table(
            ("t (s)", "resources/s", "p99 ms", "errors", "server RSS MiB", "database MiB"),
            (
                (
                    p["t_s"],
                    num(p["resources_per_s"]),
                    ms(p["p99_ms"]),
                    pct(p["error_rate"]),
                    p["server_rss_mib"],
                    p["database_mib"],
                )
                for p in extra["timeline"]
            ),
        )
    if sc["id"] == "scale" and extra.get("load"):
        load = extra["load"]
        out.append("")
        out.append(f"Load: `{load['command']}` took {load['seconds']} s; database {load.get('database_mib')} MiB.")
    return out


def growth_tables(sc: dict[str, Any]) -> list[str]:
    extra = sc.get("extra", {})
    out: list[str] = []
    loads = extra.get("loads", [])
    if loads:
        out.append("Loading:")
        out.append("")
        out += table(
            ("patients", "resources in store", "how", "load seconds", "resources/s"),
            (
                (
                    num(s["patients"]),
                    num(s["resources"]),
                    s.get("method", "FHIR transactions"),
                    s["seconds"],
                    num(s["resources_per_s"]),
                )
                for s in loads
            ),
        )
        out.append("")
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in sc["measurements"]:
        groups.setdefault(m["group"] or m["label"], []).append(m)
    factors = sorted({m["params"]["factor"] for m in sc["measurements"]})
    last_first = f"{factors[-1]}x/{factors[0]}x" if factors else "ratio"
    header = ["query", *(f"{f}x p50 / p95 ms" for f in factors), f"{last_first} p50", f"{last_first} p95"]
    rows = []
    ratios = extra.get("ratio_last_first", {})
    for group, ms_ in groups.items():
        by_factor = {m["params"]["factor"]: m["summary"] for m in ms_}
        cells = [
            f"{ms(by_factor[f]['p50_ms'])} / {ms(by_factor[f]['p95_ms'])}" if f in by_factor else "n/a" for f in factors
        ]
        r = ratios.get(group, {})
        rows.append(
            [group, *cells, num(r.get("p50"), 2) + "x" if r else "n/a", num(r.get("p95"), 2) + "x" if r else "n/a"]
        )
    out += table(header, rows)
    out.append("")
    out.append("All measurements of the curve:")
    out.append("")
    out += table(MEASUREMENT_HEADER, measurement_rows(sc["measurements"]))
    return out


def limits_section(data: dict[str, Any]) -> list[str]:
    out = ["", "## What limits us now", ""]
    out.append(
        "From a py-spy profile (100 Hz, all server processes, an extra untimed run of each scenario) saved with "
        "the run as collapsed stacks (open with speedscope or flamegraph.pl). Shares are of all samples; "
        "library frames called from our code count toward the library, standard-library frames toward their caller."
    )
    found = False
    for sc in data["scenarios"]:
        for name, prof in (sc.get("profiles") or {}).items():
            if not prof.get("samples"):
                continue
            found = True
            out.append("")
            out.append(
                f"**{sc['title']}** (`{sc['target']}`, profile `{name}`, {prof['samples']:,} samples, "
                f"file `bench/results/{prof.get('file', '')}`)"
            )
            out.append("")
            out.append(f"- top cost: {prof.get('top_cost', '')}")
            out.append("- by layer: " + ", ".join(f"{x['name']} {pct(x['share'])}" for x in prof["layers"][:5]))
            out.append(
                "- hottest functions (own time): "
                + ", ".join(f"`{x['name']}` {pct(x['share'])}" for x in prof["self"][:4])
            )
            work = (sc.get("db_work") or {}).get(name)
            if work:
                unit = "resource" if sc["id"] == "synthea-import" else "request"
                out.append(
                    f"- PostgreSQL work per {unit} (pg_stat_database over {work['units']:,} {unit}s): "
                    f"{work['xact_commit']} commits, {work['tup_inserted']} rows inserted, "
                    f"{work['tup_updated']} updated, {work['tup_deleted']} deleted, {work['tup_fetched']} fetched"
                )
            out.append(
                "- our code, inclusive: "
                + ", ".join(f"`{x['name']}` {pct(x['share'])}" for x in prof["own_inclusive"][:5])
            )
    if not found:
        out.append("")
        out.append("No profiles in this run (run without `--no-profile` against a server the suite starts).")
    for label, tables in (data.get("table_activity") or {}).items():
        out += ["", f"Tables read most over the whole run (`{label}`, PostgreSQL pg_stat_user_tables):", ""]
        out += table(
            (
                "table",
                "index scans",
                "index tuples fetched",
                "per index scan",
                "seq scans",
                "seq tuples read",
                "rows inserted",
                "rows updated",
                "live rows",
            ),
            (
                (
                    f"`{t['table']}`",
                    num(t["idx_scan"]),
                    num(t["idx_tup_fetch"]),
                    num(t["idx_tup_fetch"] / t["idx_scan"], 1) if t["idx_scan"] else "n/a",
                    num(t["seq_scan"]),
                    num(t["seq_tup_read"]),
                    num(t["inserted"]),
                    num(t["updated"]),
                    num(t["live_rows"]),
                )
                for t in tables
            ),
        )
    return out


RECORDS_DIR = ROOT / "bench" / "records"


def _security(data: dict[str, Any]) -> dict[str, Any] | None:
    return next((x for x in data["scenarios"] if x["id"] == "security" and x["status"] == "ok"), None)


def _extract_row(sc: dict[str, Any], run: str | None) -> tuple[str, str, str, str] | None:
    load = sc.get("extra", {}).get("audit_extract_load")
    extract = next((m for m in sc["measurements"] if m["params"].get("kind") == "log-extract"), None)
    if extract is None or not load:
        return None
    p95 = extract["summary"]["p95_ms"]
    n = load.get("audit_records", 0)
    return (
        f"log extract, {n:,} audit records (about {load.get('per_patient')} per patient)"
        + (f", run `{run}`" if run else ""),
        "p95 < 200 ms with 10 million records",
        f"p95 {ms(p95)} ms",
        (
            "yes"
            if p95 is not None and p95 < 200 and n >= 10_000_000
            else "**no**"
            if p95 is not None and p95 >= 200
            else "not at 10 million records (long mode loads them)"
        ),
    )


_AB_RESULT = re.compile(r"throughput (?P<throughput>[0-9.]+) .*p95 (?P<p95>[0-9.]+)")


def newest_target_record(kind: str, records_dir: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest direct measurement of the target for ``kind`` (read or search): a ``*-ab-target-<kind>*``
    record of Nära as it runs by default, that is, without settings of its own on either side (a probe with a
    temporary switch, such as ``--a-env NARA_PROBE_THREADS=2``, is not the target). Newest by the record's date,
    then by its time of day (records written before records had one come first on their day)."""
    found = []
    for path in (records_dir or RECORDS_DIR).glob(f"*-ab-target-{kind}*.json"):
        rec = json.loads(path.read_text())
        if "--a-env" in rec.get("command", "") or "--b-env" in rec.get("command", ""):
            continue
        found.append(((str(rec.get("date") or path.name[:10]), str(rec.get("recorded_at") or "")), path, rec))
    if not found:
        return None
    _, path, rec = max(found, key=lambda x: x[0])
    return path, rec


def paired_target_rows(records_dir: Path | None = None) -> list[tuple[str, str, str, str]]:
    """The target as ``bench/ab.py`` measures it directly (``newest_target_record``): the staff member under
    policy and audit against the superuser on the twin without read audit, one server at a time, the median of
    the rounds' ratios B/A."""
    rows = []
    for kind in ("read", "search"):
        newest = newest_target_record(kind, records_dir)
        if newest is None:
            continue
        path, rec = newest
        match = _AB_RESULT.search(rec["figures"]["result"])
        if match is None:
            continue
        costs = (("throughput", 1 - float(match["throughput"])), ("p95", float(match["p95"]) - 1))
        for measure, cost in costs:
            rows.append(
                (
                    f"{kind} {measure}: policy + audit against the superuser with neither, paired rounds with one "
                    f"server at a time (`bench/ab.py`, record `{path.stem}`)",
                    "<= 15%",
                    pct(cost),
                    "yes" if cost <= 0.15 else "**no**",
                )
            )
    return rows


def _extract_records(sc: dict[str, Any]) -> int:
    return int((sc.get("extra", {}).get("audit_extract_load") or {}).get("audit_records") or 0)


def security_targets(data: dict[str, Any], earlier: list[dict[str, Any]] | None = None) -> list[str]:
    """Issue 4's targets from the security scenario: policy and audit overhead, and the log extract. When the
    latest run loaded fewer than 10 million audit records (quick mode), the extract of the most recent earlier
    run that loaded them (long mode, or ``--only security``) is shown too, with its run id."""
    sc = _security(data)
    if sc is None:
        return []
    rows = []
    extra = sc.get("extra", {})
    # (what is compared, goal or None): the policy against the audited superuser, the audit record against the
    # unaudited one, and both together against the unaudited one (the strictest reading of the target).
    comparisons = (
        ("overhead", "policy + the staff audit record, against the superuser (policy off, audited)", True),
        ("audit_overhead", "the audit record alone: superuser audited against not audited", False),
        ("total_overhead", "policy + audit, against the superuser with neither (policy off, not audited)", True),
    )
    for key, what, goal in comparisons:
        for kind, o in (extra.get(key) or {}).items():
            for measure, value in (("throughput", o.get("throughput")), ("p95", o.get("p95"))):
                met = "" if not goal else ("yes" if value is not None and value <= 0.15 else "**no**")
                rows.append((f"{kind} {measure}: {what}", "<= 15%" if goal else "(no goal)", pct(value), met))
    rows += paired_target_rows()
    row = _extract_row(sc, None)
    if row is not None:
        rows.append(row)
    if _extract_records(sc) < 10_000_000:
        for other in reversed(earlier or []):
            osc = _security(other)
            if other is not data and osc is not None and _extract_records(osc) >= 10_000_000:
                row = _extract_row(osc, other["run_id"])
                if row is not None:
                    rows.append(row)
                break
    if not rows:
        return []
    return [
        "",
        "## Targets of issue 4 (security)",
        "",
        f"Measured by the `security` scenario ({sc.get('data_size') or 'data size not recorded'}), "
        "one server worker each, 8 connections, "
        "repetitions in turn; the cost is 1 − measured/baseline for throughput and measured/baseline − 1 for p95. "
        "The issue compares with 'a superuser with policy off'; every access is audited in Nära, a superuser's "
        "too, so the first rows take the audited superuser as the baseline, and the last rows a twin server "
        "that writes no read audit (`bench/unaudited_server.py`, benchmark only). The scenario runs its servers "
        "side by side, which favours one of them, and repeats each measurement a few times; the rows marked "
        "'paired rounds' (`bench/ab.py`: one server at a time, ten or more rounds in alternating order, the "
        "median of the rounds' ratios) are the measurement of record for the targets.",
        "",
        *table(("figure", "goal", "measured", "met"), rows),
        *cpu_lines(extra.get("cpu_per_request")),
        *audit_chain_lines(extra.get("audit_chain")),
    ]


def cpu_lines(cpu: dict[str, dict[str, dict[str, float | None]]] | None) -> list[str]:
    """CPU per request of each kind and actor (the security scenario's cpu_per_request; no goal): the server's
    processes' and PostgreSQL's, median over repetitions."""
    if not cpu:
        return []
    actors = (("unaudited", "superuser, no read audit"), ("superuser", "superuser"), ("staff", "staff"))
    present = [(who, label) for who, label in actors if any(who in by_who for by_who in cpu.values())]

    def cell(v: dict[str, float | None] | None) -> str:
        if not v or v.get("server_cpu_ms") is None:
            return "–"
        db = v.get("db_cpu_ms")
        return f"{v['server_cpu_ms']:.2f} + {db:.2f}" if db is not None else f"{v['server_cpu_ms']:.2f} + ?"

    rows = [(kind, *(cell(by_who.get(who)) for who, _ in present)) for kind, by_who in cpu.items()]
    return [
        "",
        "CPU per request in ms, the server's processes (worker and audit sealer) + PostgreSQL's backends (median "
        "of the repetitions; no goal; the database figure counts every backend of the scenario's database, a "
        "sealer's too):",
        "",
        *table(("request", *(label for _, label in present)), rows),
    ]


def audit_chain_lines(chain: dict[str, Any] | None) -> list[str]:
    """What sealing and verifying the hash chain cost (the security scenario's audit_chain; no goal)."""
    if not chain:
        return []
    db_cpu = chain.get("seal_db_cpu_ms_per_record")
    return [
        "",
        f"Audit hash chain (no goal; {chain['records_per_repetition']:,} new records per repetition, sealed on a "
        f"database of their own): sealing takes {chain['seal_ms_per_record']:.3f} ms a record"
        + (f", of which PostgreSQL's CPU {db_cpu:.3f} ms" if db_cpu is not None else "")
        + f"; `nara audit verify` walks {chain['verify_records_per_s']:,} records a second."
        + (
            f" Reads' records are chained by the outbox's drain as it inserts them: drained "
            f"{chain['drain_batch']} at a time, a record costs {chain['drain_ms_per_record']:.3f} ms, of which "
            f"the drainer's CPU {chain['drain_cpu_ms_per_record']:.3f} ms"
            + (
                f" and PostgreSQL's {chain['drain_db_cpu_ms_per_record']:.3f} ms"
                if chain.get("drain_db_cpu_ms_per_record") is not None
                else ""
            )
            + "."
            if chain.get("drain_ms_per_record") is not None
            else ""
        ),
    ]


def recorded_section() -> list[str]:
    """One-off measurements made with their own command (e.g. generating the 1.4-million-person region),
    recorded as JSON in bench/records/ with the command, machine and conditions."""
    files = sorted(RECORDS_DIR.glob("*.json")) if RECORDS_DIR.exists() else []
    if not files:
        return []

    lines = ["", "## One-off measurements", ""]
    for f in files:
        r = json.loads(f.read_text())
        lines += [
            f"### {r['title']}",
            "",
            f"- command: `{r['command']}`",
            f"- date: {r['date']}",
            f"- machine: {r['machine']}",
            f"- conditions: {r.get('conditions', '-')}",
        ]
        for k, v in r.get("figures", {}).items():
            lines.append(f"- {k}: {v}")
        if r.get("note"):
            lines.append(f"- note: {r['note']}")
        lines.append("")
    return lines[:-1]


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "# Performance",
        "",
        "<!-- Generated by `python -m bench.report` from bench/results/*.json. Do not edit by hand. -->",
        "",
        "Figures from Nära's benchmark suite (`bench/`, issue 6). Run it with `make bench-quick` "
        "(under ten minutes) or "
        "`make bench` (long mode: ten-minute ingest, SQLite as well, scale run when its data exists). "
        "`python -m bench.run --base-url URL [--token T]` measures any other FHIR R4 server with the same scenarios.",
        "",
        "Method: HTTP load comes from wrk (Debian package, one thread, LuaJIT plan script `bench/lua/plan.lua`) "
        "on keep-alive loopback connections, closed loop; Bundle imports from an async httpx client. "
        "Latency percentiles are wrk's (per request) or the client's (per Bundle). Every measurement is repeated "
        f"(3 times unless stated); tables show the median of the repetitions and the spread (max − min) / median "
        f"of throughput, **flagged when above {SPREAD_LIMIT:.0%}**. Baselines run in the same run on the same "
        "machine, straight against PostgreSQL.",
    ]
    if not results:
        lines += ["", "No result files yet: run `make bench-quick`."]
        return "\n".join(lines) + "\n"
    data = results[-1]
    lines += ["", f"## Latest run ({data['started'][:10]})", ""]
    lines += machine_lines(data)
    g = data.get("goals") or goals(data)
    if g:
        lines += ["", "## Targets of issue 2", ""]
        lines += table(
            ("target", "goal", "best measurement (within the p99 bound if any is)", "throughput", "p99 ms", "met"),
            (
                (
                    x["target"],
                    x["goal"],
                    x["measurement"],
                    f"{num(x['throughput'])} {x['unit']}",
                    ms(x["p99_ms"]),
                    ("yes" if x["met"] else "**no**") + (f" ({x['note']})" if x.get("note") else ""),
                )
                for x in g
            ),
        )
    comps = data.get("comparisons") or comparisons(data)
    if comps:
        lines += ["", "## Compared with the physical baselines", ""]
        lines += table(
            ("target", "Nära figure", "value", "baseline", "baseline value", "fraction"),
            (
                (
                    c["target"],
                    c["figure"],
                    f"{num(c['value'])} {c['unit']}",
                    c["baseline"],
                    f"{num(c['baseline_value'])} {c['baseline_unit']}",
                    pct(c["fraction"]),
                )
                for c in comps
            ),
        )
    lines += security_targets(data, results)
    lines += recorded_section()
    lines += ["", "## Scenarios"]
    for sc in data["scenarios"]:
        lines += scenario_section(data, sc)
    lines += limits_section(data)
    lines += ["", "## All runs", ""]
    lines += table(
        ("run", "mode", "commit", "machine", "notes"),
        (
            (
                f"`{r['run_id']}`",
                r["mode"],
                f"`{r['git']['commit'][:8]}`",
                f"{r['machine']['cores']} cores, {r['machine']['memory_gib']} GiB, "
                f"load {r['machine'].get('loadavg_start')}",
                " ".join(r.get("notes", [])),
            )
            for r in reversed(results)
        ),
    )
    return "\n".join(lines) + "\n"


def write(results_dir: Path = RESULTS_DIR, doc: Path = DOC) -> Path:
    results = all_results(results_dir)
    results.sort(key=lambda r: r["started"])
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render(results))
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report", description="Regenerate docs/performance.md from bench/results/*.json."
    )
    parser.parse_args(argv)
    out = write()
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
