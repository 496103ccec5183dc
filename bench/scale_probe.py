"""The search mix on an existing large database (e.g. the 1.4-million-person region from `nara generate`).

    python -m bench.scale_probe --database-url postgresql://postgres@127.0.0.1:5432/nara_skane
    python -m bench.scale_probe --database-url postgresql://postgres@127.0.0.1:5432/nara_bench_10m \
        --load 10000 --observations 1000

Starts `nara serve` on the database as it is (or, with --load, empties it and bulk-loads synthetic patient
histories first), picks patients with the most Observations, runs each everyday query with wrk (3
repetitions), and writes the figures with the command, machine and data size to
bench/records/<date>-scale-probe[-<load>].json (shown in docs/performance.md).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from urllib.parse import quote

import psycopg

from bench import synth
from bench.loadgen import Req, run_wrk, write_plan
from bench.results import claim_record_name, command_line, loadavg, machine_facts, write_record
from bench.stats import summarize
from bench.target import NaraServer, dev_idp, free_port

QUERIES = {
    "latest vitals (patient, code, _sort=-date, _count=20)": "Observation?patient={p}&code={c}&_sort=-date&_count=20",
    "$lastn vital signs": "Observation/$lastn?patient={p}&category=vital-signs",
    "a patient's observations, first page": "Observation?patient={p}&_count=20",
    "read Patient by id": "Patient/{p}",
    "Patient by name and birthdate": "Patient?name={family}&birthdate={birth}",
    "$everything": "Patient/{p}/$everything",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--load",
        type=int,
        metavar="PATIENTS",
        help="first empty the database and bulk-load this many synthetic patients (bench.synth histories)",
    )
    ap.add_argument("--observations", type=int, default=1000, help="Observations per loaded patient (with --load)")
    ap.add_argument("--note", default="", help="added to the record's note (e.g. how an existing database was loaded)")
    ap.add_argument("--record-name", help="file name part of the record (default scale-probe[-<load>x<observations>])")
    args = ap.parse_args(argv)
    record_name = args.record_name or (f"scale-probe-{args.load}x{args.observations}" if args.load else "scale-probe")
    claim_record_name(ap, record_name)
    work = Path(tempfile.mkdtemp(prefix="nara-scale-"))
    env, token = dev_idp(work / "idp.json")
    server = NaraServer(args.database_url, free_port(), args.workers, work / "server.log", env=env)
    server.start(fresh=args.load is not None, ready_timeout=180)
    loading = ""
    if args.load:
        server.stop()  # the load has the machine to itself
        loading = load_histories(args.database_url, args.load, args.observations)
        server.start(fresh=False, ready_timeout=180)
    with psycopg.connect(args.database_url.replace("postgresql+psycopg", "postgresql")) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM resource WHERE res_type = 'Patient'), "
            "(SELECT count(*) FROM resource WHERE res_type = 'Observation'), (SELECT count(*) FROM resource), "
            "pg_size_pretty(pg_database_size(current_database()))"
        ).fetchone()
        assert counts is not None
        rows = conn.execute(
            "SELECT r.patient_id, min(t.code) FROM resource r JOIN sp_token t ON t.rid = r.rid AND t.param = 'code' "
            "WHERE r.res_type = 'Observation' AND r.patient_id IS NOT NULL GROUP BY r.patient_id "
            "ORDER BY count(*) DESC LIMIT 200"
        ).fetchall()
        people: dict[str, str] = dict(
            conn.execute(
                "SELECT res_id, (content->'name'->0->>'family') || '|' || (content->>'birthDate') FROM resource "
                "WHERE res_type = 'Patient' AND res_id = ANY(%s)",
                ([p for p, _ in rows],),
            ).fetchall()
        )
    patients = [(p, c, *people.get(p, "|").split("|")) for p, c in rows if p]
    results = {}
    try:
        rng = random.Random(5)
        for label, template in QUERIES.items():
            reqs = []
            for _ in range(200):
                p, c, family, birth = rng.choice(patients)
                reqs.append(Req("GET", "/fhir/" + template.format(p=p, c=c, family=quote(family), birth=birth)))
            plan = write_plan(reqs, work)
            samples = []
            command = ""
            for _ in range(3):
                load = loadavg()
                sample, command = run_wrk(
                    f"http://127.0.0.1:{server.port}",
                    plan,
                    connections=args.connections,
                    seconds=args.seconds,
                    base_path="/fhir",
                    token=token,
                )
                sample["loadavg_1m"] = load[0] if load else None
                samples.append(sample)
            s = summarize(samples)
            loads = [x["loadavg_1m"] for x in samples if x.get("loadavg_1m") is not None]
            machine_load = f", machine load {min(loads):.1f}-{max(loads):.1f}" if loads else ""
            results[label] = (
                f"{s['throughput']:.0f} requests/s, p50 {s['p50_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms, "
                f"p99 {s['p99_ms']:.1f} ms, errors {s['error_rate']:.1%} (spread {s['spread']:.0%}{machine_load})"
            )
            print(f"{label}: {results[label]}", flush=True)
    finally:
        server.stop()
    m = machine_facts()
    record = {
        "title": f"The search mix on the large region ({counts[0]:,} people, {counts[1]:,} Observations)",
        "command": command_line("bench.scale_probe", argv),
        "date": date.today().isoformat(),
        "machine": f"{m.get('cores')} cores, {m.get('memory_gib')} GiB; nara serve --workers {args.workers}",
        "conditions": f"wrk, {args.connections} connections, {args.seconds} s x 3 per query, system-client token; "
        f"wrk command: {command}",
        "figures": {
            "data": (
                f"{counts[0]:,} Patients, {counts[1]:,} Observations, {counts[2]:,} resources, database {counts[3]}"
            ),
            **results,
        },
        "note": "patients drawn at random from the 200 with the most Observations"
        + loading
        + (f"; {args.note}" if args.note else ""),
    }
    write_record(record_name, record)
    return 0


def load_histories(database_url: str, patients: int, observations: int) -> str:
    """Bulk-load synthetic patient histories (structural validation off) and ANALYZE; says what it did."""
    from nara.store.bulk import BulkLoader
    from nara.store.store import Store

    store = Store.from_url(database_url, pool_size=2)
    t0 = time.perf_counter()
    try:
        with BulkLoader(store, method="PUT", validate=False) as loader:
            loader.add_all(e["resource"] for e in synth.directory_bundle()["entry"])
            for i in range(patients):
                loader.add_all(synth.patient_history(i, observations))
                if i % 100 == 99:
                    rate = loader.stats.resources / (time.perf_counter() - t0)
                    print(f"loaded {i + 1:,}/{patients:,} patients, {rate:,.0f} resources/s", flush=True)
        loader.analyze()
        seconds = time.perf_counter() - t0
        n = loader.stats.resources
        return (
            f"; loaded by this command with nara.store.bulk (validation off) and ANALYZEd: "
            f"{n:,} resources in {seconds / 60:.0f} min ({n / seconds:,.0f}/s)"
        )
    finally:
        store.dispose()


if __name__ == "__main__":
    sys.exit(main())
