"""The index-cost benchmark compares like with like: the same store writes, with and without index rows."""

from __future__ import annotations

from bench.index_cost import resources, without_index
from sqlalchemy import func, select

from nara.store.crud import Stored
from nara.store.schema import INDEX_TABLES, resource
from nara.store.store import Store


def index_rows(store: Store) -> int:
    with store.engine.connect() as conn:
        return sum(conn.execute(select(func.count()).select_from(t)).scalar_one() for t in INDEX_TABLES.values())


def test_without_index_stores_the_same_resources_with_their_patient_and_no_index_rows(store: Store) -> None:
    items = resources(60)
    assert len({r["resourceType"] for r in items}) >= 5
    with store.transaction() as tx:
        without_index(tx)
        plain = [tx.create(r).stored for r in items]
    assert index_rows(store) == 0
    with store.transaction() as tx:
        indexed = [tx.create(r).stored for r in items]
    assert index_rows(store) > 5 * len(items)  # about eight per resource

    # Both ways put each resource in the same patient compartment (the distribution key); a Patient (new id on
    # create) is its own.
    def compartments(stored: list[Stored | None]) -> list[str | None]:
        return [s.res_id if s.res_type == "Patient" else s.patient_id for s in stored if s]

    for stored in (plain, indexed):
        assert [s.patient_id for s in stored if s] == compartments(stored)
    assert [s.patient_id for s in plain if s and s.res_type != "Patient"] == [
        s.patient_id for s in indexed if s and s.res_type != "Patient"
    ]
    assert all(compartments(plain)), "every resource of a patient history belongs to a patient"
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(resource)).scalar_one() == 2 * len(items)
