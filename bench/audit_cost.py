"""What a read's audit record costs the worker in CPU, measured in-process, without HTTP and other threads.

    python -m bench.audit_cost [--calls 20000] [--repetitions 5] [--record-name NAME]

Why: the record is appended by the worker before the read answers (``Gate.audit_read``: the record built,
checked as the log will store it and written to the outbox). Its share of a request over HTTP is a few percent,
smaller than what two runs of the same code differ by on a shared machine (bench/ab.py's A/A control), so a
change to it cannot be judged over HTTP alone. Here one read by id of the security scenario is made through
the request path (``dispatch``) for each actor, and its audit hook is then called many times on the same
transaction and outcome, timed by the thread's CPU clock; the figure is the median of the repetitions. Each
call appends a real record to a temporary outbox (not drained). The whole read in-process (``_execute``:
policy, statement, audit) is given beside it, for scale.

Runs on the security scenario's database (``nara_bench_security``; `python -m bench.ab --generate ...`
makes it) and measures this checkout. To compare two versions, run it at each in turns (A, B, A, B, ...) and
compare the pairs: on a shared machine the same code's figure moved between 31 and 57 µs from one run to the
next (2026-12-07).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

from bench import pgbaseline
from bench.results import claim_record_name, command_line, loadavg, machine_facts, short_commit, write_record
from bench.scenarios import SECURITY_DB, security_data, security_tokens
from bench.target import ROOT, dev_idp_env


def cpu_us_per_call(fn: Callable[[], Any], calls: int, repetitions: int) -> list[float]:
    """Microseconds of this thread's CPU per call of ``fn``, one figure per repetition (after a warm-up)."""
    for _ in range(min(calls, 500)):
        fn()
    figures = []
    for _ in range(repetitions):
        start = time.thread_time()
        for _ in range(calls):
            fn()
        figures.append((time.thread_time() - start) * 1e6 / calls)
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000, help="calls per repetition")
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--record-name", help="write bench/records/<date>-<name>.json")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    if args.record_name:
        claim_record_name(ap, args.record_name)
    if args.calls < 1 or args.repetitions < 1:
        ap.error("--calls and --repetitions must be at least 1")
    url = pgbaseline.pg_url(SECURITY_DB)
    try:
        data = security_data(url)
    except Exception as exc:  # one readable line, not a stack trace
        print(f"the security database {SECURITY_DB} has no demo region ({exc}); make it with bench.ab --generate")
        return 2
    work = Path(tempfile.mkdtemp(prefix="nara-audit-cost-"))
    key_file = work / "idp-key.json"
    staff_token, superuser_token = security_tokens(key_file, data.nurse)
    os.environ.update(
        {
            **dev_idp_env(key_file),
            "NARA_AUDIT_OUTBOX": str(work / "outbox"),
            "NARA_AUDIT_SEALER": "external",  # nothing drains it: the records stay in the temporary outbox
        }
    )
    from nara.config import Settings
    from nara.security.gate import current_policy, redact, redact_versions
    from nara.server.app import _execute, create_app
    from nara.server.dispatch import Context, FhirRequest, dispatch
    from nara.store.store import Store

    settings = Settings(database_url=url)
    store = Store.from_url(settings.database_url, settings.store, pool_size=2)
    gate = create_app(settings, store).state.gate
    figures: dict[str, Any] = {}
    try:
        for who, token in (("superuser", superuser_token), ("staff", staff_token)):
            actor = gate.authenticate(f"Bearer {token}")
            req = FhirRequest("GET", f"/Observation/{data.reads[0]}", [], {}, None)
            ctx = Context(base_url="http://127.0.0.1/fhir", settings=settings)
            reset = current_policy.set(gate.policy(actor))
            try:
                with store.transaction(write=False) as tx:
                    out = dispatch(tx, ctx, req)  # the read as served (its own record appended once)
                    if out.status != 200 or not out.returned:
                        print(f"the {who}'s read answered {out.status}; nothing to measure")
                        return 1
                    hook = cpu_us_per_call(partial(gate.audit_read, tx, req, out), args.calls, args.repetitions)
            finally:
                current_policy.reset(reset)

            def whole_read(actor: Any = actor, req: Any = req) -> None:
                context = Context(  # the server's hooks (server/app.py), so that the read is the one served
                    base_url="http://127.0.0.1/fhir",
                    settings=settings,
                    audit=gate.audit_read,
                    audit_before=gate.prepare_read_audit,
                    redact=redact,
                    redact_versions=redact_versions,
                )
                _execute(store, gate, actor, context, req)

            whole = cpu_us_per_call(whole_read, max(args.calls // 10, 1), args.repetitions)
            figures[who] = {"audit_read_us": statistics.median(hook), "read_us": statistics.median(whole)}
            print(
                f"{who}: the audit hook {figures[who]['audit_read_us']:.1f} µs of CPU a read (repetitions "
                f"{', '.join(f'{x:.1f}' for x in hook)}); the whole read in-process {figures[who]['read_us']:.0f} µs"
            )
    finally:
        store.dispose()
        shutil.rmtree(work, ignore_errors=True)
    if args.record_name:
        commit = short_commit(ROOT)
        m = machine_facts()
        write_record(
            args.record_name,
            {
                "title": f"The audit hook's CPU a read by id, in-process, at {commit}",
                "command": command_line("bench.audit_cost", argv),
                "date": date.today().isoformat(),
                "machine": f"{m.get('cores')} cores, {m.get('memory_gib')} GiB, PostgreSQL on the same machine",
                "conditions": (
                    f"the security scenario's database; one read by id per actor through dispatch, then "
                    f"Gate.audit_read called {args.calls:,} times a repetition on its transaction and outcome "
                    f"(thread CPU clock), {args.repetitions} repetitions, median; each call appends to a temporary "
                    f"outbox; load average {loadavg()} at the end"
                ),
                "figures": {
                    f"{who}: audit hook / whole read in-process (µs of CPU)": (
                        f"{v['audit_read_us']:.1f} / {v['read_us']:.0f}"
                    )
                    for who, v in figures.items()
                },
                "note": args.note or "in-process: no HTTP, no other threads",
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
