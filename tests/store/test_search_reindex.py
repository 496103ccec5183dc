"""Rebuilding index rows: nara.store.reindex and the ``nara reindex`` command, on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import false, select, update
from typer.testing import CliRunner

from nara.cli import app
from nara.store.reindex import count_resources, reindex
from nara.store.schema import INDEX_TABLES, resource
from nara.store.store import Store
from tests.conftest import Backend
from tests.store.search_fixtures import idset, load
from tests.store.test_search_types import bp, obs, patient


def populate(store: Store) -> None:
    load(
        store,
        patient("p1", "Öberg", "Åsa"),
        patient("p2", "Berg", "Bo"),
        bp("o1", 150, 80) | {"subject": {"reference": "Patient/p1"}},
        obs("o2", subject={"reference": "Patient/p2"}, effectiveDateTime="2026-01-01"),
    )
    with store.transaction() as tx:
        tx.delete("Patient", "p2")


def wipe_index(store: Store) -> None:
    """Lose every index row and the derived columns, as if extraction had never run."""
    with store.transaction() as tx:
        for table in INDEX_TABLES.values():
            tx.conn.execute(table.delete())
        tx.conn.execute(update(resource).where(resource.c.deleted == false()).values(index_mask=0, patient_id=None))


def state(store: Store) -> dict[str, tuple[int, str | None]]:
    with store.transaction(write=False) as tx:
        rows = tx.conn.execute(select(resource.c.res_id, resource.c.index_mask, resource.c.patient_id))
        return {r.res_id: (r.index_mask, r.patient_id) for r in rows}


def test_reindex_rebuilds_rows_masks_and_compartments(store: Store) -> None:
    populate(store)
    before = state(store)
    wipe_index(store)
    assert idset(store, "Observation", "component-code-value-quantity=8480-6$gt140") == set()
    assert count_resources(store) == 3  # the deleted patient is not visited
    batches: list[int] = []
    summary = reindex(store, batch_size=2, progress=batches.append)
    assert summary.resources == 3 and batches == [2, 1]
    assert summary.moved == 3 and summary.rows > 10
    assert state(store) == before
    assert idset(store, "Observation", "component-code-value-quantity=8480-6$gt140") == {"o1"}
    assert idset(store, "Patient", "name=asa") == {"p1"}
    assert idset(store, "Observation", "patient=p2&date=2026-01-01") == {"o2"}


def test_reindex_of_some_types_and_twice_is_idempotent(store: Store) -> None:
    populate(store)
    wipe_index(store)
    assert reindex(store, ["Patient"]).resources == 1
    assert idset(store, "Patient", "name=asa") == {"p1"}
    assert idset(store, "Observation", "code=85354-9") == set()
    first = reindex(store)
    second = reindex(store)
    assert first.rows == second.rows and second.moved == 0
    assert idset(store, "Observation", "code=85354-9") == {"o1"}


def test_reindex_command_shows_progress_and_summary(
    store: Store, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(store)
    wipe_index(store)
    monkeypatch.setenv("NARA_DATABASE_URL", backend.url)
    result = CliRunner().invoke(app, ["reindex", "--database-url", backend.url, "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    assert "Reindexing" in result.output and "Reindexed 3 resources" in result.output
    assert idset(store, "Patient", "name=asa") == {"p1"}
    bad = CliRunner().invoke(app, ["reindex", "--database-url", backend.url, "--type", "Nonsense"])
    assert bad.exit_code == 1 and "Nonsense" in bad.output
