"""The scale probe's loader: synthetic histories land in the store, searchable, with what was loaded reported."""

from __future__ import annotations

import pytest
from bench.scale_probe import load_histories

from bench import synth
from nara.store.store import Store
from tests.conftest import Backend
from tests.store.search_fixtures import idset


def test_loaded_histories_are_searchable_per_patient(backend: Backend, store: Store) -> None:
    if backend.name != "postgres":
        pytest.skip("the probe measures PostgreSQL databases")
    report = load_histories(backend.url, 3, 4)
    expected = sum(len(synth.patient_history(i, 4)) for i in range(3)) + len(synth.directory_bundle()["entry"])
    assert f"{expected:,} resources" in report
    pid = synth.patient_id(1)
    assert idset(backend.store, "Observation", f"patient={pid}") == {f"{pid}-obs-{o}" for o in range(4)}
