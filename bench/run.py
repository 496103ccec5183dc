"""The one entry command of the benchmark suite.

    python -m bench.run --quick            # make bench-quick: everything, short, under 10 minutes
    python -m bench.run                    # make bench: long mode (10-minute ingest, SQLite too, scale run)
    python -m bench.run --base-url http://127.0.0.1:8080/fhir --token T   # another FHIR server

Without ``--base-url`` the suite starts Nära itself (``nara serve`` on a fresh PostgreSQL database,
and on SQLite with ``--sqlite``), loads data, runs the scenarios, writes one JSON file per run under
``bench/results/`` and regenerates ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from bench import fhirclient, pgbaseline, report, scenarios
from bench.loadgen import LoadGenError, wrk_version
from bench.results import RESULTS_DIR, Run
from bench.target import ROOT, NaraServer, Target, dev_idp, free_port

ALL_SCENARIOS = (
    "baseline",
    "noop",
    "growth",
    "create",
    "crud",
    "transaction",
    "synthea-import",
    "ingest",
    "security",
    "scale",
)
DEFAULT_SCALE = 1_400_000


def settings_for(args: argparse.Namespace) -> scenarios.Settings:
    if args.quick:
        s = scenarios.Settings(mode="quick")
    else:
        s = scenarios.Settings(
            mode="long",
            seconds=10,
            growth_base=150,
            observations_per_patient=30,
            synthea_files=40,
            deep_page=10,
            deep_at_every_step=True,
            ingest_seconds=600,
            ingest_slice=30,
            ingest_devices=2000,
            copy_resources=100_000,
            profile_seconds=10,
        )
    if args.seconds:
        s.seconds = args.seconds
    if args.reps:
        s.reps = args.reps
    if args.growth_base:
        s.growth_base = args.growth_base
    if args.ingest_seconds:
        s.ingest_seconds = args.ingest_seconds
    if args.no_profile:
        s.profile = False
    s.load_via = args.load_via
    return s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short mode (make bench-quick), under 10 minutes")
    p.add_argument("--base-url", help="FHIR base URL of a running server to measure instead of starting Nära")
    p.add_argument("--token", help="bearer token sent with every HTTP request")
    p.add_argument("--target-name", help="name of the measured server in the results (default: nara or the host)")
    p.add_argument("--noop-url", help="a no-op URL on the target for the generator ceiling (Nära: /noop)")
    p.add_argument("--workers", type=int, default=2, help="nara serve --workers on PostgreSQL (default 2)")
    p.add_argument("--sqlite", action=argparse.BooleanOptionalAction, default=None, help="also measure Nära on SQLite")
    p.add_argument("--only", help=f"comma-separated scenarios to run ({', '.join(ALL_SCENARIOS)})")
    p.add_argument("--skip", help="comma-separated scenarios to leave out")
    p.add_argument("--seconds", type=int, help="seconds per measurement")
    p.add_argument("--reps", type=int, help="repetitions per measurement (at least 3 for published figures)")
    p.add_argument("--growth-base", type=int, help="patients at 1x of the growth curve")
    p.add_argument("--ingest-seconds", type=int, help="duration of the sustained ingest")
    p.add_argument(
        "--load-via",
        choices=("bulk", "http"),
        default="bulk",
        help="growth data for a Nära the suite starts: its bulk loader (default) or FHIR transactions",
    )
    p.add_argument("--no-profile", action="store_true", help="do not profile the server with py-spy")
    p.add_argument("--staff-token", help="security overhead: token of a staff member (full policy and audit)")
    p.add_argument("--superuser-token", help="security overhead: token of a superuser (policy off)")
    p.add_argument(
        "--scale", type=int, default=None, help=f"scale run population (long mode default {DEFAULT_SCALE:,})"
    )
    p.add_argument("--scale-source", type=Path, help="folder of FHIR data for the scale run (demo generator output)")
    p.add_argument("--note", action="append", default=[], help="a note stored with the run (e.g. 'machine shared')")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where result files go")
    p.add_argument("--no-report", action="store_true", help="do not regenerate docs/performance.md")
    return p.parse_args(argv)


def selected(args: argparse.Namespace) -> set[str]:
    chosen = set(args.only.split(",")) if args.only else set(ALL_SCENARIOS)
    if args.skip:
        chosen -= set(args.skip.split(","))
    unknown = chosen - set(ALL_SCENARIOS) - {"read", "search"}
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}; choose from {', '.join(ALL_SCENARIOS)}")
    return chosen


def run_http(b: scenarios.Bench, chosen: set[str], args: argparse.Namespace, full: bool = True) -> None:
    """The HTTP scenarios against one target, in an order that keeps the growth curve clean."""
    if "noop" in chosen:
        scenarios.noop(b)
    if "growth" in chosen and full:
        scenarios.growth_and_search(b)
    if "create" in chosen:
        scenarios.creates_and_reads(b)
    if "crud" in chosen:
        scenarios.crud(b)
    if "transaction" in chosen:
        scenarios.transaction_bundle(b)
    if "synthea-import" in chosen and full:
        scenarios.synthea_import(b)
    if "ingest" in chosen and full:
        scenarios.ingest(b)
    if "security" in chosen and full:
        scenarios.security(b, args.staff_token, args.superuser_token or b.target.token)


def record_table_activity(run: Run, label: str, server: NaraServer) -> None:
    """Which tables the whole run read most (PostgreSQL statistics of the server's database)."""
    if not server.database_url.startswith("postgresql"):
        return
    try:
        activity = pgbaseline.table_activity(server.database_url.rsplit("/", 1)[1])
    except Exception as e:  # statistics are a bonus; a busy shared PostgreSQL must not fail the run
        print(f"   (no table statistics: {str(e).splitlines()[0]})", flush=True)
        return
    run.data.setdefault("table_activity", {})[label] = activity


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_for(args)
    chosen = selected(args)
    if "search" in chosen or "read" in chosen:
        chosen |= {"growth"} if "search" in chosen else {"create"}
    sqlite = args.sqlite if args.sqlite is not None else settings.mode == "long"
    command = "python -m bench.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    run = Run(settings.mode, command.strip(), ROOT, args.results_dir)
    run.data["notes"] = list(args.note)
    run.data["settings"] = {k: v for k, v in vars(settings).items()}
    try:
        run.data["generator"] = {"http": wrk_version() + " (1 thread, Lua plan script bench/lua/plan.lua)"}
    except LoadGenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run.data["generator"]["bundles"] = f"async httpx {fhirclient.httpx.__version__}"
    run.data["generator"]["postgres"] = "pgbench (prepared statements) and psycopg COPY"
    try:
        run.data["postgres"] = pgbaseline.server_facts()
    except Exception as e:  # the external-target mode may run without a local PostgreSQL
        run.data["postgres"] = {"version": "unreachable", "settings": {}, "error": str(e).splitlines()[0]}
    print(f"Benchmark run {run.run_id} ({settings.mode} mode) -> {run.path}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="nara-bench-"))
    servers: list[NaraServer] = []
    try:
        if "baseline" in chosen and run.data["postgres"].get("version") != "unreachable":
            b0 = scenarios.Bench(run, Target("postgresql", "http://127.0.0.1/"), settings, "postgresql", work)
            scenarios.baselines(b0)
        if args.base_url:
            name = args.target_name or args.base_url.split("//", 1)[-1].split("/", 1)[0]
            target = Target(name, args.base_url.rstrip("/"), token=args.token, noop_url=args.noop_url)
            targets = [(target, True)]
        else:
            env, system_token = dev_idp(work / "dev-idp-key.json")
            token = args.token or system_token
            if token and not args.token:
                run.data["notes"].append(
                    "Requests carry a system-client token from Nära's development IdP (policy off, still audited)."
                )
            pg = NaraServer(
                pgbaseline.pg_url("nara_bench"),
                free_port(),
                args.workers,
                run.artifact_dir / "nara-postgresql.log",
                env=env,
            )
            pg.start()
            servers.append(pg)
            t = Target("nara", pg.base_url, token=token, database="postgresql", server=pg)
            t.noop_url = f"{t.origin}/noop"
            targets = [(t, True)]
            if sqlite:
                db = ROOT / "var" / "bench" / "nara-bench.db"
                sq = NaraServer(f"sqlite:///{db}", free_port(), 1, run.artifact_dir / "nara-sqlite.log", env=env)
                st = Target("nara", sq.base_url, token=token, database="sqlite", server=sq)
                st.noop_url = f"{st.origin}/noop"
                targets.append((st, False))
        run.data["targets"] = [t.describe() for t, _ in targets]
        for target, full in targets:
            if target.server is not None and target.server.proc is None:
                target.server.start()
                servers.append(target.server)
            label = f"{target.name}-{target.database}" if target.database != "unknown" else target.name
            b = scenarios.Bench(run, target, settings, label, work)
            run_http(b, chosen, args, full=full)
            if full and "scale" in chosen and settings.mode == "long":
                scenarios.scale(b, args.scale or DEFAULT_SCALE, args.scale_source)
            if target.server is not None:
                run.data["targets"] = [t.describe() for t, _ in targets]
                record_table_activity(run, label, target.server)
                target.server.stop()
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
    run.data["goals"] = report.goals(run.data)
    run.data["comparisons"] = report.comparisons(run.data)
    path = run.finish()
    print(f"Wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", flush=True)
    if not args.no_report:
        out = report.write()
        print(f"Regenerated {out.relative_to(ROOT)}", flush=True)
    failed = [s["id"] for s in run.data["scenarios"] if s["status"] == "failed"]
    if failed:
        print(f"Failed scenarios: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
