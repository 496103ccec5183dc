"""Result parameters: _sort, _count and keyset paging, _total, _include/_revinclude, and the row filter."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import ColumnElement, text
from sqlalchemy.sql.selectable import Alias

from nara.fhir.outcome import FhirError
from nara.fhir.query import QueryParser, parse_pairs
from nara.store.search import Searcher, SearchResult
from nara.store.store import Store
from tests.store.search_fixtures import ids, idset, load, search
from tests.store.test_search_types import obs, patient


def people(n: int) -> list[dict[str, Any]]:
    return [patient(f"p{i:02d}", f"Family{i:02d}", "Given", birthDate=f"19{50 + i % 3}-01-01") for i in range(n)]


def flat(pages: list[list[str]]) -> list[str]:
    return [i for page in pages for i in page]


def pages(store: Store, rtype: str, query: str) -> list[list[str]]:
    """All pages of a search, following the next cursor."""
    out = []
    result = search(store, rtype, query)
    out.append([m.res_id for m in result.matches])
    while result.next_cursor:
        result = search(store, rtype, f"{query}&_cursor={result.next_cursor}")
        out.append([m.res_id for m in result.matches])
    return out


# ---- sorting ----------------------------------------------------------------------------------
def test_sort_ascending_and_descending(store: Store) -> None:
    load(store, patient("b", "Berg", "X"), patient("a", "Åberg", "X"), patient("c", "Carlsson", "X"))
    assert ids(store, "Patient", "_sort=family") == ["a", "b", "c"]
    assert ids(store, "Patient", "_sort=-family") == ["c", "b", "a"]
    assert ids(store, "Patient", "_sort=_id") == ["a", "b", "c"]
    assert ids(store, "Patient", "_sort=-_id") == ["c", "b", "a"]


def test_sort_on_several_keys(store: Store) -> None:
    load(
        store,
        patient("p1", "Berg", "X", birthDate="1950-01-01"),
        patient("p2", "Berg", "X", birthDate="1960-01-01"),
        patient("p3", "Andersson", "X", birthDate="1955-01-01"),
        patient("p4", "Andersson", "X", birthDate="1945-01-01"),
    )
    assert ids(store, "Patient", "_sort=family,-birthdate") == ["p3", "p4", "p2", "p1"]
    assert ids(store, "Patient", "_sort=-birthdate,family") == ["p2", "p3", "p1", "p4"]


def test_sort_by_date_puts_missing_values_last_when_descending(store: Store) -> None:
    load(
        store,
        obs("o1", effectiveDateTime="2026-01-01"),
        obs("o2", effectiveDateTime="2026-03-01"),
        obs("o3"),
        obs("o4", effectivePeriod={"start": "2025-12-01", "end": "2026-02-01"}),
    )
    assert ids(store, "Observation", "_sort=-date") == ["o2", "o4", "o1", "o3"]
    assert ids(store, "Observation", "_sort=date") == ["o3", "o4", "o1", "o2"]


def test_sort_by_last_updated(store: Store) -> None:
    for i in range(3):
        load(store, patient(f"p{i}", "X", "Y"))
    assert ids(store, "Patient", "_sort=-_lastUpdated") == ["p2", "p1", "p0"]


def test_sort_on_unknown_or_composite_parameter_is_reported(store: Store) -> None:
    with pytest.raises(FhirError):
        search(store, "Patient", "_sort=shoe-size", strict=True)
    with pytest.raises(FhirError):
        search(store, "Observation", "_sort=component-code-value-quantity", strict=True)


# ---- count and paging -----------------------------------------------------------------------------
def test_count_and_next_pages_cover_every_match_once(store: Store) -> None:
    load(store, *people(7))
    got = pages(store, "Patient", "_count=3&_sort=family")
    assert [len(p) for p in got] == [3, 3, 1]
    assert flat(got) == [f"p{i:02d}" for i in range(7)]


def test_default_count_and_count_zero(store: Store) -> None:
    load(store, *people(25))
    first = search(store, "Patient")
    assert len(first.matches) == 20 and first.total == 25 and first.next_cursor
    zero = search(store, "Patient", "_count=0")
    assert zero.matches == [] and zero.total == 25


def test_paging_stays_correct_while_data_changes(store: Store) -> None:
    load(store, *people(6))
    query = "_count=2&_sort=family"
    page1 = search(store, "Patient", query)
    assert [m.res_id for m in page1.matches] == ["p00", "p01"]
    # a new resource sorting before the cursor and a deletion on the next page
    load(store, patient("early", "Family00a", "X"))
    with store.transaction() as tx:
        tx.delete("Patient", "p02")
    page2 = search(store, "Patient", f"{query}&_cursor={page1.next_cursor}")
    assert [m.res_id for m in page2.matches] == ["p03", "p04"]
    page3 = search(store, "Patient", f"{query}&_cursor={page2.next_cursor}")
    assert [m.res_id for m in page3.matches] == ["p05"]
    assert page3.next_cursor is None


def test_previous_link_goes_back(store: Store) -> None:
    load(store, *people(5))
    query = "_count=2&_sort=-family"
    page1 = search(store, "Patient", query)
    assert page1.prev_cursor is None
    page2 = search(store, "Patient", f"{query}&_cursor={page1.next_cursor}")
    assert [m.res_id for m in page2.matches] == ["p02", "p01"]
    assert page2.prev_cursor
    back = search(store, "Patient", f"{query}&_cursor={page2.prev_cursor}")
    assert [m.res_id for m in back.matches] == ["p04", "p03"]
    assert back.prev_cursor is None and back.next_cursor


def test_paging_with_ties_in_the_sort_key(store: Store) -> None:
    load(store, *[patient(f"t{i}", "Same", "X") for i in range(5)])
    got = pages(store, "Patient", "_count=2&_sort=family")
    assert sorted(flat(got)) == [f"t{i}" for i in range(5)]
    assert len(flat(got)) == 5


def test_bad_cursor_is_a_clear_error(store: Store) -> None:
    with pytest.raises(FhirError) as e:
        search(store, "Patient", "_cursor=garbage!")
    assert e.value.status == 400 and "cursor" in e.value.issues[0].diagnostics


def test_cursor_from_another_sort_is_rejected(store: Store) -> None:
    load(store, *people(3))
    page1 = search(store, "Patient", "_count=1&_sort=family,birthdate")
    with pytest.raises(FhirError):
        search(store, "Patient", f"_count=1&_sort=family&_cursor={page1.next_cursor}")


# ---- totals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["accurate", "estimate"])
def test_total_accurate_and_estimate(store: Store, mode: str) -> None:
    load(store, *people(5))
    result = search(store, "Patient", f"_total={mode}&_id=p01,p02,p03")
    assert result.total is not None
    if mode == "accurate":
        assert result.total == 3
    else:
        assert result.total >= 1


def test_total_none_omits_the_count(store: Store) -> None:
    load(store, *people(2))
    assert search(store, "Patient", "_total=none").total is None


def test_without_total_in_the_query_counting_stops_at_the_limit(store: Store) -> None:
    """A population query must not count every match on every page: without ``_total`` the count stops after
    ``total_limit`` matches and a larger result carries no total; asking for it still counts them all."""
    load(store, *people(8))
    store.settings.total_limit = 5
    first = search(store, "Patient", "_count=2")
    assert first.total is None and len(first.matches) == 2 and first.next_cursor
    assert search(store, "Patient", "_count=2&_total=accurate").total == 8
    assert search(store, "Patient", "_summary=count").total == 8
    assert search(store, "Patient", "_count=0").total == 8
    assert search(store, "Patient", "_id=p01,p02,p03,p04,p05&_count=2").total == 5  # at the limit: exact
    store.settings.total_limit = 0  # off: every search counts
    assert search(store, "Patient", "_count=2").total == 8


def test_the_total_travels_with_the_page_in_one_statement(store: Store) -> None:
    """The count (bounded or exact) is a column of the page statement: one statement per page, the same
    totals, and a page past the end (by cursor) still knows the total."""
    from sqlalchemy import event

    load(store, *people(6))
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM resource" in statement:
            statements.append(statement)

    engines = {store.engine, store.read_engine or store.engine}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", seen)
    try:
        first = search(store, "Patient", "_count=3&_sort=_id")
        assert first.total == 6 and [m.res_id for m in first.matches] == ["p00", "p01", "p02"]
        assert len(statements) == 1
        statements.clear()
        assert search(store, "Patient", "_count=3&_total=accurate&family=Family01").total == 1
        assert len(statements) == 1
        second = search(store, "Patient", f"_count=3&_sort=_id&_cursor={first.next_cursor}")
        assert second.total == 6 and [m.res_id for m in second.matches] == ["p03", "p04", "p05"]
        assert second.next_cursor is None
        empty = search(store, "Patient", "_count=3&family=Nobody")
        assert empty.total == 0 and empty.matches == []
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", seen)


def test_a_cursor_page_past_the_end_still_has_the_total(store: Store) -> None:
    load(store, *people(4))
    first = search(store, "Patient", "_count=2&_sort=_id")
    second = search(store, "Patient", f"_count=2&_sort=_id&_cursor={first.next_cursor}")
    assert second.next_cursor is None and second.prev_cursor
    # The two remaining matches are deleted: the last page's cursor now points past the end.
    with store.transaction() as tx:
        tx.delete("Patient", "p02")
        tx.delete("Patient", "p03")
    past = search(store, "Patient", f"_count=2&_sort=_id&_cursor={first.next_cursor}")
    assert past.matches == [] and past.total == 2


def test_total_rejects_unknown_mode(store: Store) -> None:
    with pytest.raises(FhirError):
        search(store, "Patient", "_total=maybe", strict=True)


def test_summary_count_returns_only_the_total(store: Store) -> None:
    load(store, *people(4))
    result = search(store, "Patient", "_summary=count&family=family0")
    assert result.total == 4 and result.matches == []


# ---- includes -----------------------------------------------------------------------------------
@pytest.fixture
def clinic(store: Store) -> Store:
    load(
        store,
        {"resourceType": "Organization", "id": "region", "name": "Region"},
        {
            "resourceType": "Organization",
            "id": "vc",
            "name": "Vårdcentral",
            "partOf": {"reference": "Organization/region"},
        },
        {"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Doktor"}]},
        patient(
            "p1",
            "A",
            "B",
            managingOrganization={"reference": "Organization/vc"},
            generalPractitioner=[{"reference": "Practitioner/dr"}],
        ),
        patient("p2", "C", "D"),
        obs("o1", subject={"reference": "Patient/p1"}, performer=[{"reference": "Practitioner/dr"}]),
        obs("o2", subject={"reference": "Patient/p1"}),
        obs("o3", subject={"reference": "Patient/p2"}),
    )
    return store


def included(result: SearchResult) -> set[str]:
    return {f"{st.res_type}/{st.res_id}" for st in result.included}


def test_include_follows_a_reference(clinic: Store) -> None:
    r = search(clinic, "Observation", "_id=o1,o2&_include=Observation:patient")
    assert {m.res_id for m in r.matches} == {"o1", "o2"}
    assert included(r) == {"Patient/p1"}


def test_include_with_target_type_and_wildcard(clinic: Store) -> None:
    assert included(search(clinic, "Observation", "_id=o1&_include=Observation:performer:Practitioner")) == {
        "Practitioner/dr"
    }
    assert included(search(clinic, "Observation", "_id=o1&_include=Observation:performer:Organization")) == set()
    assert included(search(clinic, "Observation", "_id=o1&_include=*")) == {"Patient/p1", "Practitioner/dr"}


def test_revinclude(clinic: Store) -> None:
    r = search(clinic, "Patient", "_id=p1&_revinclude=Observation:subject")
    assert included(r) == {"Observation/o1", "Observation/o2"}
    assert included(search(clinic, "Practitioner", "_revinclude=*")) == {"Patient/p1", "Observation/o1"}


def test_include_iterate_follows_included_resources(clinic: Store) -> None:
    r = search(
        clinic,
        "Observation",
        "_id=o2&_include=Observation:patient&_include:iterate=Patient:organization"
        "&_include:iterate=Organization:partof",
    )
    assert included(r) == {"Patient/p1", "Organization/vc", "Organization/region"}
    without = search(clinic, "Observation", "_id=o2&_include=Observation:patient&_include=Patient:organization")
    assert included(without) == {"Patient/p1"}


def test_revinclude_iterate(clinic: Store) -> None:
    query = "_id=vc&_revinclude=Patient:organization&_revinclude:iterate=Observation:patient"
    r = search(clinic, "Organization", query)
    assert included(r) == {"Patient/p1", "Observation/o1", "Observation/o2"}


def test_included_resources_are_not_repeated_as_matches(clinic: Store) -> None:
    r = search(clinic, "Patient", "_revinclude=Patient:link&_include=Patient:organization")
    match_ids = {f"Patient/{m.res_id}" for m in r.matches}
    assert not match_ids & included(r)


def test_include_of_an_unknown_parameter_is_an_error(clinic: Store) -> None:
    with pytest.raises(FhirError):
        search(clinic, "Observation", "_include=Observation:nonsense", strict=True)
    with pytest.raises(FhirError):
        search(clinic, "Observation", "_include=Observation:code", strict=True)


def test_include_limit_is_reported(clinic: Store) -> None:
    clinic.settings.max_include = 1
    r = search(clinic, "Observation", "_include=*")
    assert len(r.included) == 1
    assert any(i.code == "too-costly" for i in r.issues)


# ---- the row filter (access policy inside the SQL) ---------------------------------------------------
def hide(*keys: str) -> Any:
    """A row filter hiding the given Type/id resources."""

    def row_filter(a: Alias, rtype: str | None) -> ColumnElement[bool]:
        from sqlalchemy import and_, not_, or_

        conds = [and_(a.c.res_type == k.split("/")[0], a.c.res_id == k.split("/")[1]) for k in keys]
        return not_(or_(*conds))

    return row_filter


def test_row_filter_applies_to_matches_and_totals(clinic: Store) -> None:
    r = search(clinic, "Observation", "_total=accurate", row_filter=hide("Observation/o2"))
    assert {m.res_id for m in r.matches} == {"o1", "o3"} and r.total == 2


def test_row_filter_applies_to_paging(clinic: Store) -> None:
    f = hide("Observation/o2")
    first = search(clinic, "Observation", "_count=1&_sort=_id", row_filter=f)
    second = search(clinic, "Observation", f"_count=1&_sort=_id&_cursor={first.next_cursor}", row_filter=f)
    assert [m.res_id for m in first.matches + second.matches] == ["o1", "o3"]


def test_row_filter_applies_to_includes_and_revincludes(clinic: Store) -> None:
    f = hide("Patient/p1", "Observation/o1")
    assert included(search(clinic, "Observation", "_id=o2&_include=Observation:patient", row_filter=f)) == set()
    assert included(search(clinic, "Practitioner", "_revinclude=*", row_filter=f)) == set()
    r = search(clinic, "Organization", "_id=vc&_revinclude=Patient:organization", row_filter=hide("Patient/p1"))
    assert included(r) == set()


def test_row_filter_applies_inside_chains_and_has(clinic: Store) -> None:
    f = hide("Patient/p1", "Observation/o3")
    assert idset(clinic, "Observation", "patient.name=a", row_filter=f) == set()
    assert idset(clinic, "Patient", "_has:Observation:patient:_id=o3", row_filter=f) == set()
    assert idset(clinic, "Patient", "_has:Observation:patient:_id=o3") == {"p2"}


def test_row_filter_receives_the_resource_type(clinic: Store) -> None:
    seen: list[str | None] = []

    def spy(a: Alias, rtype: str | None) -> ColumnElement[bool] | None:
        seen.append(rtype)
        return None

    search(clinic, "Observation", "patient.name=a&_include=Observation:patient", row_filter=spy)
    assert "Observation" in seen and "Patient" in seen


# ---- planning -----------------------------------------------------------------------------------
def test_searches_are_planned_with_their_values_while_reads_keep_prepared_plans(store: Store) -> None:
    """A prepared search may get a generic plan that ignores the patient; searches stay unprepared."""
    if not store.postgres:
        pytest.skip("prepared statements are a PostgreSQL matter")
    load(store, *people(3))
    # Count by statement text: the pooled connection may carry statements prepared by earlier work.
    prepared = text(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement ILIKE :like AND statement NOT ILIKE :unlike"
    )
    searches_prepared = {"like": "SELECT%sp_string%", "unlike": ""}
    reads_prepared = {"like": "SELECT%FROM resource %", "unlike": "%sp\\_%"}
    q = QueryParser().parse("Patient", parse_pairs("family=Family01"))
    with store.transaction(write=False) as tx:
        raw = tx.conn.connection.dbapi_connection
        threshold = raw.prepare_threshold  # type: ignore[union-attr]
        for _ in range(12):
            assert [m.res_id for m in Searcher(tx).search(q).matches] == ["p01"]
        searches_after = tx.conn.execute(prepared, searches_prepared).scalar_one()
        assert raw.prepare_threshold == threshold  # type: ignore[union-attr]
        for _ in range(12):
            tx.read("Patient", "p01")
        reads_after = tx.conn.execute(prepared, reads_prepared).scalar_one()
    assert searches_after == 0
    assert reads_after >= 1


def test_planner_estimates_a_common_code_from_the_statistics_across_index_columns(store: Store) -> None:
    """Type, parameter, system and code of a token row depend on each other. With the extended statistics
    the planner's row estimate for a common code is near the truth instead of a small fraction of it (which
    made it build a population query's whole match set instead of walking the page order)."""
    if not store.postgres:
        pytest.skip("extended statistics are a PostgreSQL matter")
    codes = ["85354-9"] * 12 + ["8867-4", "29463-7", "2708-6", "39156-5"]
    resources: list[dict[str, Any]] = []
    for i in range(400):
        code = codes[i % len(codes)]
        resources.append(
            {
                "resourceType": "Observation",
                "id": f"o{i}",
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "vital-signs",
                            }
                        ]
                    }
                ],
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": f"Patient/p{i % 40}"},
                "effectiveDateTime": f"2026-10-{1 + i % 28:02d}T08:00:00+01:00",
                "valueQuantity": {
                    "value": 70 + i % 30,
                    "unit": "/min",
                    "system": "http://unitsofmeasure.org",
                    "code": "/min",
                },
            }
        )
    load(store, *resources)
    where = "res_type = 'Observation' AND param = 'code' AND system = 'http://loinc.org' AND code = '85354-9'"
    with store.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE sp_token")
        actual = conn.exec_driver_sql(f"SELECT count(*) FROM sp_token WHERE {where}").scalar_one()
        plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) SELECT rid FROM sp_token WHERE {where}").scalar_one()
        conn.rollback()
    estimated = plan[0]["Plan"]["Plan Rows"]
    assert actual == 300
    assert actual / 2 <= estimated <= actual * 2, (estimated, actual)
