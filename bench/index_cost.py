"""What search-index extraction adds to the cost of a write (issue 3's target: at most 40%).

    python -m bench.index_cost                      # PostgreSQL (scratch database nara_bench_index) and SQLite
    python -m bench.index_cost --resources 3000 --reps 5

Writes the same resources (synthetic patient histories: Patient, Encounter, Condition, MedicationRequest,
CarePlan and vital-sign Observations) through Nära's store twice on a fresh database: once as Nära stores them
(validation, stamping, index extraction, index rows, resource and history rows), once with index extraction and
index rows left out (the patient's compartment taken straight from the reference instead). Everything else is
the same code. Two write shapes: one resource per transaction (a single create; the commit is part of the
cost) and 100 per transaction (a Bundle-sized write, where the commit is shared). In process, no HTTP, so the
figure is the store's own. The cost is time with indexes / time without − 1, median of the repetitions.
Writes bench/records/<date>-index-cost.json (shown in docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

from bench import synth
from bench.results import claim_record_name, command_line, loadavg, machine_facts, write_record
from nara.fhir.searchparams import IndexRows
from nara.store.crud import Tx
from nara.store.database import create_engine, drop_database, ensure_database
from nara.store.migrate import upgrade
from nara.store.store import Store

PG_URL = "postgresql://postgres@127.0.0.1:5432/nara_bench_index"


def resources(n: int) -> list[dict[str, Any]]:
    """``n`` resources of realistic shape: whole synthetic histories, cut at ``n``."""
    out: list[dict[str, Any]] = []
    i = 0
    while len(out) < n:
        out.extend(synth.patient_history(10_000 + i, 20))
        i += 1
    return [{k: v for k, v in r.items() if k != "id"} for r in out[:n]]


def _patient_of(res: dict[str, Any]) -> str | None:
    if res.get("resourceType") == "Patient":
        return str(res.get("id"))
    for key in ("subject", "patient"):
        ref = res.get(key, {}).get("reference", "") if isinstance(res.get(key), dict) else ""
        if ref.startswith("Patient/"):
            return str(ref[8:])
    return None


def without_index(tx: Tx) -> None:
    """This transaction stores resources without extracting or writing search-index rows."""
    tx._index = lambda res: (IndexRows(), _patient_of(res), 0)  # type: ignore[method-assign]
    tx._queue_index = lambda batches: None  # type: ignore[method-assign]


@contextmanager
def fresh_store(url: str) -> Iterator[Store]:
    ensure_database(url, drop_first=True)
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    store = Store.from_url(url, pool_size=2)
    store.write_hooks = []  # no access rules or audit: the store's own write cost only
    try:
        yield store
    finally:
        store.dispose()


def timed_writes(store: Store, items: list[dict[str, Any]], per_tx: int, indexed: bool) -> float:
    """Seconds to create ``items`` in transactions of ``per_tx``."""
    t0 = time.perf_counter()
    for start in range(0, len(items), per_tx):
        with store.transaction() as tx:
            if not indexed:
                without_index(tx)
            for res in items[start : start + per_tx]:
                tx.create(res)
    return time.perf_counter() - t0


def measure(
    url: str, items: list[dict[str, Any]], reps: int, progress: Callable[[str], None]
) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for per_tx in (1, 100):
        runs: dict[bool, list[float]] = {True: [], False: []}
        for rep in range(reps):
            for indexed in (False, True) if rep % 2 == 0 else (True, False):  # alternate the order
                with fresh_store(url) as store:
                    timed_writes(store, items[:50], per_tx, indexed)  # warm caches and plans
                    runs[indexed].append(timed_writes(store, items, per_tx, indexed))
        with_ix, without = statistics.median(runs[True]), statistics.median(runs[False])
        out[per_tx] = {
            "with indexes µs/write": with_ix / len(items) * 1e6,
            "without µs/write": without / len(items) * 1e6,
            "cost": with_ix / without - 1,
            "runs": runs,
        }
        progress(
            f"{per_tx} per transaction: {out[per_tx]['with indexes µs/write']:.0f} µs with indexes, "
            f"{out[per_tx]['without µs/write']:.0f} µs without: {out[per_tx]['cost']:+.0%}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resources", type=int, default=2000, help="resources written per measurement")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each measurement")
    ap.add_argument("--postgres-url", default=PG_URL, help="scratch PostgreSQL database (emptied)")
    ap.add_argument("--no-sqlite", action="store_true")
    args = ap.parse_args(argv)
    claim_record_name(ap, "index-cost")
    items = resources(args.resources)
    kinds = sorted({r["resourceType"] for r in items})
    work = Path(tempfile.mkdtemp(prefix="nara-index-cost-"))
    targets = {"PostgreSQL": args.postgres_url}
    if not args.no_sqlite:
        targets["SQLite"] = f"sqlite:///{work / 'index-cost.db'}"
    figures: dict[str, str] = {"data": f"{len(items):,} resources ({', '.join(kinds)}), same for every run"}
    load_before = loadavg()
    for name, url in targets.items():
        print(f"== {name}", flush=True)
        res = measure(url, items, args.reps, lambda line: print("  " + line, flush=True))
        for per_tx, label in ((1, "one resource per transaction"), (100, "100 resources per transaction")):
            r = res[per_tx]
            spread = max(r["runs"][True]) / min(r["runs"][True]) - 1
            figures[f"{name}, {label}"] = (
                f"{r['with indexes µs/write']:,.0f} µs per write with index extraction and rows, "
                f"{r['without µs/write']:,.0f} µs without: index cost {r['cost']:+.0%} "
                f"(target <= 40%: {'met' if r['cost'] <= 0.40 else 'missed'}; spread {spread:.0%})"
            )
        if name == "PostgreSQL":
            drop_database(url)
    load_after = loadavg()
    m = machine_facts()
    record = {
        "title": "Index extraction's share of a write (issue 3)",
        "command": command_line("bench.index_cost", argv),
        "date": date.today().isoformat(),
        "machine": f"{m.get('cores')} cores, {m.get('memory_gib')} GiB, in process (no HTTP)",
        "conditions": f"fresh database per measurement, {args.reps} repetitions (median), write hooks (access "
        f"rules, audit) off in both; machine load {load_before} at start, {load_after} at end",
        "figures": figures,
        "note": "without indexes = the same store code with extraction and index rows left out; the resource and "
        "history rows, validation and stamping stay",
    }
    write_record("index-cost", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
