"""History at instance, type and system level on SQLite and PostgreSQL (R4 http.html#history)."""

from __future__ import annotations

import pytest

from nara.fhir.outcome import FhirError
from nara.store.history import history
from nara.store.store import Store
from tests.server.test_rest_interactions import bp, patient


def seed(store: Store) -> None:
    """Patient/a: create, update, delete; Patient/b: create; Observation/o: create, update."""
    with store.transaction() as tx:
        tx.update("Patient", "a", {**patient(), "id": "a"})
    with store.transaction() as tx:
        tx.update("Patient", "b", {**patient(), "id": "b"})
    with store.transaction() as tx:
        tx.update("Observation", "o", {**bp("a"), "id": "o"})
    with store.transaction() as tx:
        tx.update("Patient", "a", {**patient(gender="male"), "id": "a"})
    with store.transaction() as tx:
        tx.update("Observation", "o", {**bp("a", 150), "id": "o"})
    with store.transaction() as tx:
        tx.delete("Patient", "a")


def labels(page: list) -> list[str]:
    return [f"{st.res_type}/{st.res_id}/{st.version}{'-' if st.deleted else ''}" for st in page]


def test_history_levels_newest_first(store: Store) -> None:
    seed(store)
    with store.transaction(write=False) as tx:
        inst = history(tx, "Patient", "a")
        assert labels(inst.entries) == ["Patient/a/3-", "Patient/a/2", "Patient/a/1"]
        assert inst.total == 3
        assert [st.method for st in inst.entries] == ["DELETE", "PUT", "PUT"]
        assert inst.entries[1].resource()["gender"] == "male"
        typ = history(tx, "Patient")
        assert labels(typ.entries) == ["Patient/a/3-", "Patient/a/2", "Patient/b/1", "Patient/a/1"]
        system = history(tx)
        assert system.total == 6
        assert labels(system.entries)[:2] == ["Patient/a/3-", "Observation/o/2"]


def test_history_since_and_at(store: Store) -> None:
    seed(store)
    with store.transaction(write=False) as tx:
        everything = history(tx).entries
        pivot = everything[2].last_updated  # the third newest version
        recent = history(tx, since=pivot)
        assert labels(recent.entries) == labels(everything[:3]) and recent.total == 3
        older = history(tx, at=pivot)
        assert labels(older.entries) == labels(everything[2:])


def test_history_pages_do_not_shift_when_new_versions_arrive(store: Store) -> None:
    seed(store)
    with store.transaction(write=False) as tx:
        first = history(tx, count=4)
    assert len(first.entries) == 4 and first.next_cursor
    with store.transaction() as tx:  # a new version arrives between the pages
        tx.update("Patient", "b", {**patient(family="Ny"), "id": "b"})
    with store.transaction(write=False) as tx:
        second = history(tx, count=4, cursor=first.next_cursor)
    assert second.next_cursor is None
    seen = labels(first.entries) + labels(second.entries)
    assert len(seen) == len(set(seen)) == 6  # the six versions present when paging began, once each


def test_history_errors(store: Store) -> None:
    seed(store)
    with store.transaction(write=False) as tx:
        with pytest.raises(FhirError) as unknown:
            history(tx, "Patient", "never")
        assert unknown.value.status == 404
        with pytest.raises(FhirError) as cursor:
            history(tx, cursor="not-a-cursor")
        assert cursor.value.status == 400
        assert history(tx, "Patient", "a", count=0).entries == []
