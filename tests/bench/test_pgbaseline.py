"""CPU and PostgreSQL facts the benchmark takes beside its load (bench/pgbaseline.py, bench/target.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg
import pytest
from bench.pgbaseline import backend_cpu_seconds
from bench.scenarios import cpu_per_request, median_cpu
from bench.target import process_cpu_seconds

from nara.store.store import Store
from tests.conftest import Backend


def test_backend_cpu_counts_the_work_of_the_databases_own_backends(backend: Backend, store: Store) -> None:
    """The security scenario's sealing figure takes PostgreSQL's CPU from its backends' /proc entries: a
    statement that works the CPU shows up in its database's total."""
    if backend.name != "postgres":
        pytest.skip("PostgreSQL backends only")
    db = backend.url.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(backend.url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("SELECT 1")
        before = backend_cpu_seconds(db)
        assert before is not None
        conn.execute("SELECT count(*) FROM generate_series(1, 5000000)")
        after = backend_cpu_seconds(db)
    assert after is not None and after - before >= 0.1
    assert backend_cpu_seconds("no_such_database_here") is None


def test_cpu_per_request_divides_the_server_and_database_cpu_between_two_readings_by_the_requests() -> None:
    """The security scenario's CPU figures: milliseconds a request from two readings, the median over
    repetitions, and no database figure when PostgreSQL's backends could not be read."""
    assert cpu_per_request((10.0, 2.0), (12.0, 2.5), {"requests": 1000}) == {"server_cpu_ms": 2.0, "db_cpu_ms": 0.5}
    assert cpu_per_request((10.0, None), (12.0, 2.5), {"requests": 1000}) == {"server_cpu_ms": 2.0}
    assert cpu_per_request(None, (12.0, 2.5), {"requests": 1000}) == {}
    assert cpu_per_request((10.0, 2.0), (12.0, 2.5), {"requests": 0}) == {}
    reps = [{"server_cpu_ms": 0.9, "db_cpu_ms": 0.3}, {"server_cpu_ms": 0.7}, {"server_cpu_ms": 0.8, "db_cpu_ms": 0.1}]
    assert median_cpu(reps) == {"server_cpu_ms": 0.8, "db_cpu_ms": 0.2}
    assert median_cpu([]) == {"server_cpu_ms": None, "db_cpu_ms": None}


def test_a_repetition_that_wrk_had_to_extend_gets_no_cpu_per_request_figure() -> None:
    """Its CPU covers both wrk runs, its request count only the second: the quotient would be too high."""
    extended = {"requests": 1000, "extended": True}
    assert cpu_per_request((10.0, 2.0), (12.0, 2.5), extended) == {}


def test_process_cpu_counts_a_busy_childs_work_and_is_none_once_it_has_ended() -> None:
    """The child works 0.5 s of CPU by its own precise clock; /proc counts in clock ticks, sampled by the
    kernel, so it may report a little less: 0.3 s must show."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ninput()",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while (process_cpu_seconds(child.pid) or 0.0) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (process_cpu_seconds(child.pid) or 0.0) >= 0.3
    finally:
        child.communicate(b"\n", timeout=20)
    assert process_cpu_seconds(child.pid) is None
