"""PostgreSQL facts the benchmark takes beside its load (bench/pgbaseline.py)."""

from __future__ import annotations

import psycopg
import pytest
from bench.pgbaseline import backend_cpu_seconds

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
