"""Patient/$everything over HTTP, on SQLite and PostgreSQL (R4 patient-operation-everything)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.server.test_rest_interactions import JSON, bp, patient, put
from tests.server.test_search_rest import entry_ids, link


def med_request(rid: str, pid: str, authored: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "medicationReference": {"reference": "Medication/alvedon"},
        "requester": {"reference": "Practitioner/dr"},
        "authoredOn": authored,
    }


@pytest.fixture
def record(fhir: httpx.Client) -> str:
    put(fhir, "Practitioner/dr", {"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Läkare"}]})
    put(fhir, "Medication/alvedon", {"resourceType": "Medication", "id": "alvedon", "code": {"text": "Alvedon"}})
    put(fhir, "Patient/p1", {**patient(), "id": "p1"})
    put(fhir, "Patient/p2", {**patient("Other"), "id": "p2"})
    put(fhir, "Observation/old", {**bp("p1", when="2019-05-01T08:00:00+02:00"), "id": "old"})
    put(fhir, "Observation/new", {**bp("p1", when="2026-05-01T08:00:00+02:00"), "id": "new"})
    put(fhir, "Observation/theirs", {**bp("p2"), "id": "theirs"})
    put(fhir, "MedicationRequest/mr", med_request("mr", "p1", "2026-02-01"))
    put(
        fhir,
        "Condition/undated",
        {"resourceType": "Condition", "id": "undated", "subject": {"reference": "Patient/p1"}, "code": {"text": "x"}},
    )
    return "p1"


def test_everything_returns_the_patient_its_compartment_and_referenced_resources(
    fhir: httpx.Client, record: str
) -> None:
    bundle = fhir.get(f"Patient/{record}/$everything").json()
    assert bundle["type"] == "searchset"
    assert set(entry_ids(bundle)) == {
        "Patient/p1",
        "Observation/old",
        "Observation/new",
        "MedicationRequest/mr",
        "Condition/undated",
    }
    assert set(entry_ids(bundle, "include")) == {"Medication/alvedon", "Practitioner/dr"}


def test_everything_start_and_end_filter_on_care_dates(fhir: httpx.Client, record: str) -> None:
    recent = fhir.get(f"Patient/{record}/$everything", params={"start": "2026-01-01"}).json()
    assert set(entry_ids(recent)) == {"Patient/p1", "Observation/new", "MedicationRequest/mr", "Condition/undated"}
    early = fhir.get(f"Patient/{record}/$everything", params={"end": "2020"}).json()
    assert set(entry_ids(early)) == {"Patient/p1", "Observation/old", "Condition/undated"}
    window = fhir.get(f"Patient/{record}/$everything", params={"start": "2026-01", "end": "2026-03"}).json()
    assert "MedicationRequest/mr" in entry_ids(window) and "Observation/new" not in entry_ids(window)


def test_everything_type_and_since(fhir: httpx.Client, record: str) -> None:
    only_obs = fhir.get(f"Patient/{record}/$everything", params={"_type": "Observation"}).json()
    assert set(entry_ids(only_obs)) == {"Observation/old", "Observation/new"}
    assert entry_ids(only_obs, "include") == []
    stamp = fhir.get("Condition/undated").json()["meta"]["lastUpdated"]
    since = fhir.get(f"Patient/{record}/$everything", params={"_since": stamp}).json()
    assert entry_ids(since) == ["Condition/undated"]


def test_everything_pages_with_next_links(fhir: httpx.Client, record: str) -> None:
    bundle = fhir.get(f"Patient/{record}/$everything", params={"_count": "2"}).json()
    seen = entry_ids(bundle)
    while link(bundle, "next"):
        bundle = fhir.get(link(bundle, "next")).json()
        seen += entry_ids(bundle)
    assert len(seen) == len(set(seen)) == 5


def test_everything_by_post_with_parameters(fhir: httpx.Client, record: str) -> None:
    params = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "MedicationRequest"}]}
    r = fhir.post(f"Patient/{record}/$everything", content=orjson.dumps(params), headers=JSON)
    assert r.status_code == 200 and entry_ids(r.json()) == ["MedicationRequest/mr"]


def test_everything_errors(fhir: httpx.Client, record: str) -> None:
    assert fhir.get("Patient/nobody/$everything").status_code == 404
    assert fhir.get("Patient/$everything").status_code == 400
    bad = fhir.get(f"Patient/{record}/$everything", params={"start": "soon"})
    assert bad.status_code == 400 and "start" in bad.json()["issue"][0]["diagnostics"]
    assert fhir.get(f"Patient/{record}/$everything", params={"_type": "Nope"}).status_code == 400
    strict = fhir.get(f"Patient/{record}/$everything", params={"colour": "red"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    lenient = fhir.get(f"Patient/{record}/$everything", params={"colour": "red"}).json()
    outcomes = [e["resource"] for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "colour" in outcomes[0]["issue"][0]["diagnostics"]


def test_everything_is_declared_in_the_capability_statement(fhir: httpx.Client) -> None:
    cs = fhir.get("metadata").json()
    patient_res = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"} in (
        patient_res["operation"]
    )
