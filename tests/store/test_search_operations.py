"""$everything and $lastn in the store: the row filter applies inside their SQL."""

from __future__ import annotations

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
