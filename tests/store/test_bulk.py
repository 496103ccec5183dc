"""The bulk loader writes exactly the rows the normal write path writes (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from nara.fhir.outcome import FhirError
from nara.store.bulk import BulkLoader
from nara.store.indexing import INDEX_TABLES
from nara.store.schema import resource
from nara.store.store import Store
from tests.conftest import truncate

PNR = "http://electronichealth.se/identifier/personnummer"


def sample() -> list[dict[str, Any]]:
    """Resources that exercise every index table: tokens, strings, dates, quantities, references, composites."""
    return [
        {
            "resourceType": "Organization",
            "id": "SE2321000180-E001",
            "identifier": [{"system": "urn:oid:1.2.752.29.4.19", "value": "SE2321000180-E001"}],
            "name": "Vårdcentralen Tybble",
            "active": True,
        },
        {
            "resourceType": "Patient",
            "id": "p1",
            "meta": {
                "security": [
                    {"system": "http://hl7.se/fhir/ig/base/CodeSystem/SecurityLabel", "code": "sekretessmarkering"}
                ]
            },
            "identifier": [{"system": PNR, "value": "191212121212"}],
            "name": [{"family": "Åberg", "given": ["Åsa"]}],
            "gender": "female",
            "birthDate": "1912-12-12",
            "address": [{"line": ["Storgatan 1"], "city": "Örebro", "postalCode": "70210"}],
            "generalPractitioner": [{"reference": "Organization/SE2321000180-E001"}],
        },
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2026-11-01T08:00:00+01:00",
            "component": [
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": {
                        "value": 142,
                        "unit": "mmHg",
                        "system": "http://unitsofmeasure.org",
                        "code": "mm[Hg]",
                    },
                },
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                    "valueQuantity": {
                        "value": 88,
                        "unit": "mmHg",
                        "system": "http://unitsofmeasure.org",
                        "code": "mm[Hg]",
                    },
                },
            ],
        },
        {
            "resourceType": "EpisodeOfCare",
            "id": "e1",
            "status": "active",
            "patient": {"reference": "Patient/p1"},
            "managingOrganization": {"reference": "Organization/SE2321000180-E001"},
            "period": {"start": "2020-01-01"},
        },
        {
            "resourceType": "Consent",
            "id": "c1",
            "status": "active",
            "scope": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
            },
            "category": [
                {"coding": [{"system": "https://nara.se/fhir/CodeSystem/pdl-consent-kind", "code": "svod-consent"}]}
            ],
            "patient": {"reference": "Patient/p1"},
            "dateTime": "2026-01-01T10:00:00+01:00",
            "provision": {
                "type": "permit",
                "period": {"start": "2026-01-01"},
                "actor": [
                    {
                        "role": {
                            "coding": [
                                {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
                            ]
                        },
                        "reference": {"reference": "Organization/SE2321000180-E001"},
                    }
                ],
            },
        },
        {
            "resourceType": "MedicationRequest",
            "id": "m1",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [{"system": "http://www.whocc.no/atc", "code": "C09AA05"}],
                "text": "Ramipril",
            },
            "subject": {"reference": "Patient/p1"},
            "authoredOn": "2025-03-01",
            "dosageInstruction": [{"text": "1 tablett dagligen"}],
        },
    ]


def dump(store: Store) -> dict[str, Any]:
    """Every stored row, with rids replaced by the resource's type/id and lastUpdated left out."""
    with store.engine.connect() as conn:
        by_rid: dict[int, str] = {}
        resources = []
        for row in conn.execute(select(resource)).mappings():
            by_rid[row["rid"]] = f"{row['res_type']}/{row['res_id']}"
            content = row["content"]
            body = orjson.loads(content) if isinstance(content, str) else dict(content)
            body["meta"].pop("lastUpdated")
            values = {k: v for k, v in row.items() if k not in ("rid", "last_updated", "content")}
            resources.append(
                (by_rid[row["rid"]], sorted(values.items()), orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
            )
        tables: dict[str, list[Any]] = {}
        extra = _hook_tables()
        for name, table in [*INDEX_TABLES.items(), *extra.items()]:
            out = []
            for row in conn.execute(select(table)).mappings():
                ref = by_rid[row["rid" if "rid" in row else "source_rid"]]
                out.append((ref, sorted((k, repr(v)) for k, v in row.items() if k not in ("rid", "source_rid", "id"))))
            tables[name] = sorted(out)
    return {"resources": sorted(resources), "tables": tables}


def _hook_tables() -> dict[str, Any]:
    try:
        from nara.security.schema import care_relation, pdl_rule
    except ImportError:
        return {}
    return {"care_relation": care_relation, "pdl_rule": pdl_rule}


@pytest.fixture
def with_rule_hooks(store: Store) -> Iterator[Store]:
    """The store with the access-rule write hook registered when the security package provides one."""
    hooks = getattr(store, "write_hooks", None)
    try:
        from nara.security.rules import on_write
    except ImportError:
        on_write = None
    added = hooks is not None and on_write is not None and on_write not in hooks
    if added:
        hooks.append(on_write)
    try:
        yield store
    finally:
        if added:
            hooks.remove(on_write)


def test_bulk_loader_writes_the_same_rows_as_the_normal_write_path(with_rule_hooks: Store) -> None:
    store = with_rule_hooks
    with store.transaction() as tx:
        for res in sample():
            tx.update(res["resourceType"], res["id"], res)
    normal = dump(store)
    truncate(store)
    with BulkLoader(store, batch_size=4) as loader:
        loader.add_all(sample())
    bulk = dump(store)
    assert loader.stats.resources == len(sample())
    assert loader.stats.batches == 2
    assert bulk["resources"] == normal["resources"]
    assert bulk["tables"] == normal["tables"]
    assert sum(len(v) for k, v in normal["tables"].items() if k in INDEX_TABLES) == loader.stats.index_rows
    assert normal["tables"]["composite"], "the sample must exercise composite index rows"
    if "care_relation" in normal["tables"] and getattr(store, "write_hooks", None):
        assert normal["tables"]["care_relation"] and normal["tables"]["pdl_rule"]
        assert loader.stats.hook_rows == len(normal["tables"]["care_relation"]) + len(normal["tables"]["pdl_rule"])


def test_bulk_loaded_resources_are_readable_and_searchable(store: Store) -> None:
    with BulkLoader(store) as loader:
        loader.add_all(sample())
    with store.transaction(write=False) as tx:
        assert tx.read("Patient", "p1").resource()["name"][0]["family"] == "Åberg"
        assert [m.res_id for m in tx.match("Observation", "subject=Patient/p1&code=85354-9")] == ["o1"]
        assert [m.res_id for m in tx.match("Patient", "name=asa")] == ["p1"]


def test_bulk_loader_stamps_the_owner_columns(store: Store) -> None:
    with BulkLoader(store) as loader:
        loader.add(sample()[1], owner=("SE2321000180-R001", "SE2321000180-E001"))
    with store.engine.connect() as conn:
        row = conn.execute(select(resource.c.owner_org, resource.c.owner_unit)).one()
    assert tuple(row) == ("SE2321000180-R001", "SE2321000180-E001")


def test_bulk_loader_rejects_an_invalid_resource_and_writes_nothing_of_its_batch(store: Store) -> None:
    bad = {"resourceType": "Patient", "id": "bad", "gender": "sometimes"}
    loader = BulkLoader(store, batch_size=100)
    loader.add(sample()[1])
    loader.add(bad)
    with pytest.raises(FhirError) as info:
        loader.flush()
    assert info.value.issues[0].diagnostics.startswith("Patient/bad:")
    with store.engine.connect() as conn:
        assert conn.execute(select(resource.c.rid)).first() is None


def test_bulk_loading_an_existing_id_is_a_conflict(store: Store) -> None:
    with BulkLoader(store) as loader:
        loader.add(sample()[1])
    with pytest.raises(FhirError) as info, BulkLoader(store) as again:
        again.add(sample()[1])
    assert info.value.status == 409
