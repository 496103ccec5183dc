"""$everything and $lastn in the store: the row filter applies inside their SQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event

from nara.fhir.query import QueryParser, parse_pairs
from nara.store.search import Searcher
from nara.store.store import Store
from tests.store.search_fixtures import load
from tests.store.test_search_results import hide
from tests.store.test_search_types import LOINC, coded, obs, patient


def setup(store: Store) -> None:
    load(
        store,
        {"resourceType": "Practitioner", "id": "dr", "name": [{"family": "D"}]},
        patient("p1", "A", "B"),
        obs(
            "o1",
            subject={"reference": "Patient/p1"},
            effectiveDateTime="2026-01-01",
            performer=[{"reference": "Practitioner/dr"}],
        ),
        obs("o2", subject={"reference": "Patient/p1"}, effectiveDateTime="2026-02-01"),
        obs("o3", subject={"reference": "Patient/p1"}, effectiveDateTime="2026-03-01", code=coded(LOINC, "8867-4")),
    )


def test_everything_honours_the_row_filter(store: Store) -> None:
    setup(store)
    with store.transaction(write=False) as tx:
        everything = Searcher(tx, None, hide("Observation/o1", "Practitioner/dr")).everything("p1")
    assert {m.res_id for m in everything.matches} == {"p1", "o2", "o3"}
    assert everything.included == []
    with store.transaction(write=False) as tx:
        unfiltered = Searcher(tx).everything("p1")
    assert {f"{m.res_type}/{m.res_id}" for m in unfiltered.included} == {"Practitioner/dr"}


def test_lastn_honours_the_row_filter(store: Store) -> None:
    setup(store)
    q = QueryParser().parse("Observation", parse_pairs("patient=p1"))
    with store.transaction(write=False) as tx:
        latest = Searcher(tx, None, hide("Observation/o2")).lastn(q, 1)
    assert {m.res_id for m in latest.matches} == {"o1", "o3"}
    with store.transaction(write=False) as tx:
        assert {m.res_id for m in Searcher(tx).lastn(q, 1).matches} == {"o2", "o3"}


def test_everything_pages_in_rid_order_without_gaps(store: Store) -> None:
    setup(store)
    seen: list[str] = []
    cursor = None
    with store.transaction(write=False) as tx:
        while True:
            page = Searcher(tx).everything("p1", count=1, cursor=cursor)
            seen += [m.res_id for m in page.matches]
            cursor = page.next_cursor
            if cursor is None:
                break
    assert sorted(seen) == ["o1", "o2", "o3", "p1"] and len(seen) == 4


def test_everything_includes_members_owned_by_another_patient_or_by_none(store: Store) -> None:
    """A resource in p1's compartment through another reference (p1 performed an observation of p2; a Group
    lists p1) belongs to p2's or to no patient's partition, and is still part of p1's record."""
    setup(store)
    load(
        store,
        patient("p2", "C", "D"),
        obs("o-by-p1", subject={"reference": "Patient/p2"}, performer=[{"reference": "Patient/p1"}]),
        {
            "resourceType": "Group",
            "id": "g",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": "Patient/p1"}}],
        },
    )
    with store.transaction(write=False) as tx:
        p1 = {m.res_id for m in Searcher(tx).everything("p1").matches}
        p2 = {m.res_id for m in Searcher(tx).everything("p2").matches}
    assert p1 == {"p1", "o1", "o2", "o3", "o-by-p1", "g"}
    assert p2 == {"p2", "o-by-p1"}


def test_everything_finds_foreign_members_before_paging_on_postgresql(store: Store) -> None:
    """The members owned by others are looked up first (a materialized set from the patient's reference rows):
    left to itself, the planner walked every resource in rid order for a patient that has none (2.7 s at 10
    million resources)."""
    if not store.postgres:
        pytest.skip("a PostgreSQL plan")
    setup(store)
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        if "foreign_members" in statement:
            statements.append((statement, params))

    event.listen(store.read_engine or store.engine, "before_cursor_execute", capture)
    try:
        with store.transaction(write=False) as tx:
            assert {m.res_id for m in Searcher(tx).everything("p1").matches} == {"p1", "o1", "o2", "o3"}
    finally:
        event.remove(store.read_engine or store.engine, "before_cursor_execute", capture)
    (statement, params), *_ = statements
    with store.engine.connect() as conn:
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, params))
        conn.rollback()
    assert "CTE foreign_members" in plan and "CTE Scan on foreign_members" in plan, plan
