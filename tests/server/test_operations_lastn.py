"""Observation/$lastn over HTTP, on SQLite and PostgreSQL (R4 observation-operation-lastn)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.server.test_rest_interactions import bp, patient, put
from tests.server.test_search_rest import entry_ids

LOINC = "http://loinc.org"


def weight(oid: str, pid: str, when: str, kg: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}
                ]
            }
        ],
        "code": {
            "coding": [{"system": LOINC, "code": "29463-7"}, {"system": "http://snomed.info/sct", "code": "27113001"}]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": kg, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    }


def lab(oid: str, pid: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": LOINC, "code": "2339-0"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
    }


@pytest.fixture
def monitoring(fhir: httpx.Client) -> None:
    for pid in ("p1", "p2"):
        put(fhir, f"Patient/{pid}", {**patient(), "id": pid})
    for day in (1, 2, 3):
        put(fhir, f"Observation/bp{day}", {**bp("p1", when=f"2026-11-0{day}T08:00:00+01:00"), "id": f"bp{day}"})
        put(fhir, f"Observation/w{day}", weight(f"w{day}", "p1", f"2026-11-0{day}T09:00:00+01:00", 70 + day))
    put(fhir, "Observation/lab1", lab("lab1", "p1", "2026-10-01"))
    put(fhir, "Observation/other-bp", {**bp("p2", when="2026-11-05T08:00:00+01:00"), "id": "other-bp"})


def test_lastn_returns_the_latest_per_code(fhir: httpx.Client, monitoring: None) -> None:
    bundle = fhir.get("Observation/$lastn", params={"patient": "p1"}).json()
    assert set(entry_ids(bundle)) == {"Observation/bp3", "Observation/w3", "Observation/lab1"}
    assert bundle["total"] == 3


def test_lastn_max(fhir: httpx.Client, monitoring: None) -> None:
    bundle = fhir.get("Observation/$lastn", params={"patient": "p1", "max": "2"}).json()
    assert set(entry_ids(bundle)) == {
        "Observation/bp3",
        "Observation/bp2",
        "Observation/w3",
        "Observation/w2",
        "Observation/lab1",
    }
    # an observation with two codings is returned once
    assert len(entry_ids(bundle)) == 5


def test_lastn_category_and_code_filters(fhir: httpx.Client, monitoring: None) -> None:
    vital = fhir.get("Observation/$lastn", params={"patient": "p1", "category": "vital-signs", "max": "1"}).json()
    assert set(entry_ids(vital)) == {"Observation/bp3", "Observation/w3"}
    code = fhir.get("Observation/$lastn", params={"patient": "p1", "code": f"{LOINC}|29463-7", "max": "5"}).json()
    assert entry_ids(code) == ["Observation/w3", "Observation/w2", "Observation/w1"]


def test_lastn_groups_by_patient(fhir: httpx.Client, monitoring: None) -> None:
    bundle = fhir.get("Observation/$lastn", params={"code": f"{LOINC}|85354-9"}).json()
    assert set(entry_ids(bundle)) == {"Observation/bp3", "Observation/other-bp"}


def test_lastn_errors(fhir: httpx.Client, monitoring: None) -> None:
    assert fhir.get("Observation/$lastn", params={"max": "0"}).status_code == 400
    assert fhir.get("Observation/$lastn", params={"max": "many"}).status_code == 400
    strict = fhir.get("Observation/$lastn", params={"colour": "red"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    assert fhir.get("Patient/$lastn").status_code == 400


def test_lastn_is_declared_in_the_capability_statement(fhir: httpx.Client) -> None:
    cs = fhir.get("metadata").json()
    obs = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Observation")
    assert any(o["name"] == "lastn" for o in obs["operation"])
