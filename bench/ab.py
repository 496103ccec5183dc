"""Two versions of Nära served side by side on the security scenario's database, compared round by round.

    python -m bench.ab --a HEAD~1 --b WORKTREE --kind search --actor staff --rounds 10
    python -m bench.ab --a HEAD --b HEAD --kind search --actor staff   # A/A: what the harness itself favours
    python -m bench.ab --a HEAD --a-server unaudited --a-actor superuser --b HEAD --b-actor staff --kind read

The last form measures issue 4's target directly: the same requests by a staff member under the full policy
and audit (B) against a superuser with policy off on the twin server that writes no read audit (A,
``bench/unaudited_server.py``); each side may name its own actor and server, not only its version.

Why: a change to the read or search path moves throughput by a few percent, while two runs of the same code
on a shared 2-core machine differ by 10% or more. Here the two versions take turns on one database
(`nara serve`, one worker, with its sealer and the development IdP, started for each turn and warmed for a
second): A then B, then B then A, and so on. The figure is the median of the rounds' ratios B/A
(throughput, p95 latency and CPU per request of the server's processes); an A/A run is its control.

Each version runs from a git worktree of its commit (``WORKTREE``: this checkout as it is), through
``PYTHONPATH``; the two must share the database schema (no migration between them). The database is the
security scenario's (``nara_bench_security``); ``--generate`` makes it
(`nara generate`, 600 people) when it is missing. With ``--record-name`` the figures are written to
bench/records/<date>-ab-<name>.json (shown in docs/performance.md).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from bench import pgbaseline
from bench.loadgen import run_wrk, write_plan
from bench.results import claim_record_name, command_line, loadavg, machine_facts, short_commit, write_record
from bench.scenarios import SECURITY_DB, generate_security_region, security_data, security_requests, security_tokens
from bench.target import ROOT, NaraServer, dev_idp_env, free_port

WORKTREE = "WORKTREE"
SERVERS = ("serve", "unaudited")  # `nara serve`, or the benchmark's twin without read audit
ACTORS = ("staff", "superuser")


@dataclass(frozen=True)
class Side:
    """What one side of a comparison serves and asks: a version, a server, an actor, and settings of its own
    (``NARA_*`` variables, e.g. ``NARA_AUDIT_SEALER=external`` for a server without its sealer)."""

    ref: str
    actor: str
    server: str = "serve"
    env: tuple[tuple[str, str], ...] = ()

    def describe(self, commit: str) -> str:
        where = "the server without read audit" if self.server == "unaudited" else "nara serve"
        settings = "".join(f", {k}={v}" for k, v in self.env)
        return f"{self.actor} on {where} at {commit}{settings}"


def env_setting(text: str) -> tuple[str, str]:
    """One ``--a-env``/``--b-env`` value: ``NAME=value``, a Nära setting (NARA_*)."""
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("NARA_"):
        raise argparse.ArgumentTypeError(f"{text!r}: give NARA_NAME=value")
    return name, value


def sides(args: argparse.Namespace) -> dict[str, Side]:
    """The two sides of a run: each side's own actor and server where given, else the common ``--actor``."""
    return {
        side: Side(
            getattr(args, side),
            getattr(args, f"{side}_actor") or args.actor,
            getattr(args, f"{side}_server"),
            tuple(getattr(args, f"{side}_env", None) or ()),
        )
        for side in ("a", "b")
    }


def failed_requests(sample: dict[str, Any]) -> str | None:
    """What went wrong in a round's requests, if anything: a server that answers errors (a 401 for a stale
    token, a 500) answers them fast and would look faster, so such a round is no measurement."""
    if not sample["errors"]:
        return None
    return (
        f"{sample['errors']} requests failed (status {sample['status']}, transport errors {sample['transport_errors']})"
    )


def round_order(index: int) -> tuple[str, str]:
    """Which version goes first in round ``index``: A in even rounds, B in odd ones."""
    return ("a", "b") if index % 2 == 0 else ("b", "a")


def paired_ratios(a: list[float], b: list[float]) -> dict[str, Any]:
    """The rounds' ratios B/A and their median (rounds pair A's and B's figures measured next to each other)."""
    if len(a) != len(b) or not a:
        raise ValueError("the two versions need the same number of rounds, at least one")
    ratios = [y / x for x, y in zip(a, b, strict=True)]
    return {
        "median": round(statistics.median(ratios), 3),
        "rounds": [round(r, 3) for r in ratios],
        "b_above_a": sum(r > 1 for r in ratios),
    }


@contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """A directory holding version ``ref``: a temporary git worktree of it, or this checkout for WORKTREE."""
    if ref == WORKTREE:
        yield ROOT
        return
    where = Path(tempfile.mkdtemp(prefix="nara-ab-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], cwd=ROOT, check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, check=False, capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="git ref of version A, or WORKTREE")
    ap.add_argument("--b", required=True, help="git ref of version B, or WORKTREE")
    ap.add_argument("--kind", choices=("read", "search"), default="search")
    ap.add_argument("--actor", choices=ACTORS, default="staff", help="who asks, on both sides unless given per side")
    for side in ("a", "b"):
        ap.add_argument(f"--{side}-actor", choices=ACTORS, help=f"who asks on side {side.upper()}")
        ap.add_argument(
            f"--{side}-server", choices=SERVERS, default="serve", help=f"side {side.upper()}'s server (default serve)"
        )
        ap.add_argument(
            f"--{side}-env", type=env_setting, action="append", help=f"NARA_NAME=value for side {side.upper()} only"
        )
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=4, help="per version and round")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--generate", action="store_true", help="generate the demo region first (empties the database)")
    ap.add_argument("--record-name", help="write bench/records/<date>-ab-<name>.json")
    ap.add_argument("--note", default="", help="added to the record's note")
    args = ap.parse_args(argv)
    if args.record_name:
        claim_record_name(ap, f"ab-{args.record_name}")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    url = pgbaseline.pg_url(SECURITY_DB)
    if args.generate:
        generate_security_region(url)
    try:
        data = security_data(url)
    except Exception as exc:  # one readable line, not a stack trace
        print(f"the security database {SECURITY_DB} has no demo region ({exc}); run with --generate", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="nara-ab-work-"))
    key_file = work / "idp-key.json"
    staff, superuser = security_tokens(key_file, data.nurse)
    reads, searches = security_requests(data, lambda p: f"/fhir/{p}")
    plan = write_plan(reads if args.kind == "read" else searches, work)
    spec = sides(args)
    tokens = {side: staff if spec[side].actor == "staff" else superuser for side in spec}
    figures: dict[str, list[tuple[float, float, float]]] = {"a": [], "b": []}
    with ExitStack() as stack:
        sources = {side: stack.enter_context(checkout(spec[side].ref)) for side in ("a", "b")}
        for i in range(args.rounds):
            for side in round_order(i):
                # One server at a time, started for its turn: two servers running at once were measured to favour
                # one of them (A/A 0.93 with the second one started slower in 9 rounds of 10), through their
                # sealers and connection pools sharing the machine and the audit chain's lock.
                env = {
                    **dev_idp_env(key_file),
                    "PYTHONPATH": str(sources[side] / "src"),
                    "NARA_AUDIT_OUTBOX": str(work / f"outbox-{side}"),
                    **dict(spec[side].env),
                }
                module = "bench.unaudited_server" if spec[side].server == "unaudited" else None
                server = NaraServer(url, free_port(), 1, work / f"server-{side}.log", env=env, module=module)
                token = tokens[side]
                server.start(fresh=False)
                try:
                    origin = f"http://127.0.0.1:{server.port}"
                    # Warm: the driver prepares statements after five runs, SQLAlchemy caches compiled ones.
                    run_wrk(origin, plan, connections=args.connections, seconds=1, base_path="/fhir", token=token)
                    cpu0 = server.cpu_seconds()
                    sample, command = run_wrk(
                        origin, plan, connections=args.connections, seconds=args.seconds, base_path="/fhir", token=token
                    )
                    time.sleep(0.3)  # the sealer drains what the round appended
                    cpu_ms = (server.cpu_seconds() - cpu0) * 1000 / max(sample["requests"], 1)
                finally:
                    server.stop()
                failed = failed_requests(sample)
                if failed:
                    print(f"round {i + 1} {side}: {failed}; no figures are kept", file=sys.stderr)
                    return 3
                figures[side].append((sample["throughput"], sample["p95_ms"], cpu_ms))
                print(
                    f"round {i + 1} {side}: {sample['throughput']:.0f}/s, p95 {sample['p95_ms']:.1f} ms, "
                    f"{cpu_ms:.3f} ms CPU a request",
                    flush=True,
                )
    shutil.rmtree(work, ignore_errors=True)
    result = {
        name: paired_ratios([x[k] for x in figures["a"]], [x[k] for x in figures["b"]])
        for k, name in enumerate(("throughput", "p95", "cpu"))
    }
    medians = {
        side: [round(statistics.median(x[k] for x in figures[side]), 3) for k in range(3)] for side in ("a", "b")
    }
    summary = (
        f"B/A median of {args.rounds} rounds: throughput {result['throughput']['median']} "
        f"(B above A in {result['throughput']['b_above_a']}), p95 {result['p95']['median']}, "
        f"CPU a request {result['cpu']['median']}"
    )
    print(summary)
    if args.record_name:
        m = machine_facts()
        load = loadavg()
        what = "reads by id" if args.kind == "read" else "patient-scoped searches"
        a, b = (
            spec[x].describe(short_commit(ROOT, None if spec[x].ref == WORKTREE else spec[x].ref)) for x in ("a", "b")
        )
        record = {
            "title": f"A/B: {what}, {a} (A) against {b} (B)",
            "command": command_line("bench.ab", argv),
            "date": date.today().isoformat(),
            "machine": f"{m.get('cores')} cores, {m.get('memory_gib')} GiB, PostgreSQL on the same machine",
            "conditions": (
                f"the security scenario's database ({len(data.patients)} patients of the district nurse); each side "
                f"one server with one worker (`nara serve` with its sealer, or the twin without read audit), started "
                f"for its turn and warmed 1 s; wrk, {args.connections} connections, "
                f"{args.seconds} s per version and round, alternating order; load average {load} at the end; "
                f"wrk command: {command}"
            ),
            "figures": {
                "result": summary,
                "A medians (requests/s, p95 ms, CPU ms a request)": str(medians["a"]),
                "B medians (requests/s, p95 ms, CPU ms a request)": str(medians["b"]),
                "throughput ratios B/A by round": str(result["throughput"]["rounds"]),
            },
            "note": args.note or "an A/A run of the same settings is the control",
        }
        write_record(f"ab-{args.record_name}", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
