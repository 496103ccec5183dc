"""Reads run on the server's event loop (PostgreSQL): Store.run_on_loop and its engines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import text

from nara.fhir.outcome import FhirError
from nara.fhir.query import QueryParser, parse_pairs
from nara.store.search import Searcher
from nara.store.store import Store, StoreSettings
from tests.store.search_fixtures import load
from tests.store.test_search_types import patient

T = TypeVar("T")


def on_loop(store: Store, fn: Callable[[], T]) -> T:
    """``fn`` run by ``store.run_on_loop`` on a loop of its own, whose connections are closed after it."""

    async def main() -> T:
        try:
            return await store.run_on_loop(fn)
        finally:
            await store.close_loop()

    return asyncio.run(main())


def needs_loop(store: Store) -> None:
    if not store.serves_on_loop:
        pytest.skip("reads run on the event loop on PostgreSQL only")


def test_postgres_stores_serve_reads_on_the_loop_and_sqlite_stores_do_not(store: Store) -> None:
    assert store.serves_on_loop is store.postgres
    if not store.postgres:
        with pytest.raises(RuntimeError, match="no event-loop engines"):
            on_loop(store, lambda: None)


def test_switching_loop_reads_off_leaves_every_request_to_threads(store: Store) -> None:
    off = Store.from_url(str(store.engine.url.render_as_string(hide_password=False)), StoreSettings(loop_reads=False))
    try:
        assert not off.serves_on_loop
    finally:
        off.dispose()


def test_a_read_on_the_loop_uses_the_loops_asyncio_engines_and_finds_the_same_data(store: Store) -> None:
    needs_loop(store)
    load(store, patient("p1", "Lind", "Eva"))
    outside = store.read_engine
    assert outside is not None and not outside.dialect.is_async
    assert not store.on_loop()

    def read() -> tuple[bool, bool, bool, str]:
        engine = store.read_engine
        assert engine is not None
        with store.transaction(write=False) as tx:
            family = tx.read("Patient", "p1").resource()["name"][0]["family"]
        return store.on_loop(), engine.dialect.is_async, store.engine.dialect.is_async, family

    assert on_loop(store, read) == (True, True, True, "Lind")
    # Back outside, the thread's engines again.
    assert store.read_engine is outside and not store.on_loop()


def test_a_request_waiting_for_the_database_lets_the_loop_serve_another(store: Store) -> None:
    """Two requests on one loop: while the first waits half a second for PostgreSQL, the second runs through."""
    needs_loop(store)
    finished: list[str] = []

    def slow() -> None:
        with store.transaction(write=False) as tx:
            tx.conn.execute(text("SELECT pg_sleep(0.5)"))
        finished.append("slow")

    def quick() -> None:
        with store.transaction(write=False) as tx:
            assert tx.conn.execute(text("SELECT 1")).scalar_one() == 1
        finished.append("quick")

    async def both() -> float:
        start = time.monotonic()
        try:
            slow_task = asyncio.ensure_future(store.run_on_loop(slow))
            await asyncio.sleep(0.1)  # the slow one is waiting for the database by now
            await store.run_on_loop(quick)
            assert finished == ["quick"]
            await slow_task
        finally:
            await store.close_loop()
        return time.monotonic() - start

    elapsed = asyncio.run(both())
    assert finished == ["quick", "slow"]
    assert elapsed < 1.5


def test_an_error_on_the_loop_rolls_back_and_reaches_the_caller(store: Store) -> None:
    needs_loop(store)

    def broken() -> Any:
        with store.transaction(write=False) as tx:
            return tx.conn.execute(text("SELECT * FROM no_such_table")).all()

    with pytest.raises(FhirError, match="nothing was changed") as caught:
        on_loop(store, broken)
    assert caught.value.status == 500 and "no_such_table" not in str(caught.value.outcome())
    # The pool's connections are usable afterwards.
    assert on_loop(store, lambda: _count_patients(store)) == 0


def _count_patients(store: Store) -> int:
    with store.transaction(write=False) as tx:
        return int(tx.conn.execute(text("SELECT count(*) FROM resource WHERE res_type = 'Patient'")).scalar_one())


def test_searches_on_the_loop_are_planned_with_their_values_and_reads_keep_prepared_plans(store: Store) -> None:
    """The driver's prepare threshold is switched off around a search on the asyncio connection as well."""
    needs_loop(store)
    load(store, *[patient(f"p{i:02d}", f"Family{i:02d}", "Given") for i in range(3)])
    prepared = text(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement ILIKE :like AND statement NOT ILIKE :unlike"
    )
    q = QueryParser().parse("Patient", parse_pairs("family=Family01"))

    def run() -> tuple[int, int, bool]:
        with store.transaction(write=False) as tx:
            raw = tx.conn.connection.driver_connection
            threshold = raw.prepare_threshold  # type: ignore[union-attr]
            for _ in range(12):
                assert [m.res_id for m in Searcher(tx).search(q).matches] == ["p01"]
            searches = tx.conn.execute(prepared, {"like": "SELECT%sp_string%", "unlike": ""}).scalar_one()
            restored = raw.prepare_threshold == threshold  # type: ignore[union-attr]
            for _ in range(12):
                tx.read("Patient", "p01")
            reads = tx.conn.execute(prepared, {"like": "SELECT%FROM resource %", "unlike": "%sp\\_%"}).scalar_one()
        return int(searches), int(reads), restored

    searches, reads, restored = on_loop(store, run)
    assert searches == 0 and reads >= 1 and restored
