"""Index extraction for the R4 search parameters: registry coverage and the rows per parameter type."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pytest

from nara.fhir.searchparams import (
    IndexRows,
    compartment_patient,
    extract,
    index_codes,
    registry,
    search_params,
)
from nara.fhir.spec import spec
from tests.conftest import shared_data_dir

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def rows_of(rows: IndexRows, kind: str, param: str) -> list[tuple[Any, ...]]:
    return [r for p, r in getattr(rows, kind) if p == param]


def bp() -> dict[str, Any]:
    def comp(code: str, v: float) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": v, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        }

    return {
        "resourceType": "Observation",
        "id": "bp",
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood Pressure"}], "text": "Blodtryck"},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-01T08:00:00+01:00",
        "component": [comp("8480-6", 135), comp("8462-4", 85)],
    }


# ---- the registry -------------------------------------------------------------------------------
def test_every_resource_type_has_its_r4_parameters() -> None:
    reg = registry()
    total = sum(len(search_params(t)) for t in spec().resource_types)
    assert total > 2500
    assert {"code", "subject", "patient", "date", "component-code-value-quantity"} <= set(search_params("Observation"))
    assert {"name", "birthdate", "identifier", "given", "family", "address-city", "_tag"} <= set(
        search_params("Patient")
    )
    # what is left out, and why: special parameters and composites of more than two components
    reasons = set(reg.unsupported.values())
    assert reasons <= {
        "no expression or special parameter",
        "composite with more than two components",
        "composite whose first component is not a token",
        "expression yields no indexable value",
    }


def test_parameters_without_indexable_values_are_not_offered() -> None:
    assert "composition" not in search_params("Bundle")
    assert "near" not in search_params("Location")
    assert "_text" not in search_params("Patient") and "_content" not in search_params("Patient")


def test_combo_parameters_are_stored_as_their_parts() -> None:
    assert index_codes("Observation", "combo-code") == ("code", "component-code")
    assert index_codes("Observation", "combo-code-value-quantity") == (
        "code-value-quantity",
        "component-code-value-quantity",
    )
    assert index_codes("Observation", "code") == ("code",)
    rows = extract(bp())
    assert not rows_of(rows, "token", "combo-code")


# ---- rows per type ----------------------------------------------------------------------------
def test_token_rows_from_codeable_concepts_with_normalised_text() -> None:
    rows = extract(bp())
    assert rows_of(rows, "token", "code") == [(LOINC, "85354-9", "blood pressure"), (None, None, "blodtryck")]
    assert rows_of(rows, "token", "status") == [(None, "final", None)]
    assert sorted(r[1] for r in rows_of(rows, "token", "component-code")) == ["8462-4", "8480-6"]


def test_date_rows_are_utc_ranges() -> None:
    assert rows_of(extract(bp()), "date", "date") == [
        (datetime(2026, 11, 1, 7), datetime(2026, 11, 1, 7, 0, 0, 999999))
    ]


def test_quantity_and_composite_rows() -> None:
    rows = extract(bp())
    assert sorted(rows_of(rows, "quantity", "component-value-quantity")) == [
        (UCUM, "mm[Hg]", "mmHg", 85.0, 85.0),
        (UCUM, "mm[Hg]", "mmHg", 135.0, 135.0),
    ]
    assert sorted(rows_of(rows, "composite", "component-code-value-quantity")) == [
        (LOINC, "8462-4", UCUM, "mm[Hg]", 85.0, 85.0, None),
        (LOINC, "8480-6", UCUM, "mm[Hg]", 135.0, 135.0, None),
    ]


def test_reference_rows() -> None:
    res = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/p1/_history/3"},
        "performer": [
            {"reference": "http://other.se/fhir/Practitioner/d1"},
            {"identifier": {"system": "urn:hsa", "value": "SE123"}},
            {"reference": "urn:uuid:0b6c1a6e-0000-0000-0000-000000000000"},
        ],
        "basedOn": [{"reference": "CarePlan?identifier=x"}],
    }
    rows = extract(res)
    assert rows_of(rows, "reference", "subject") == [("Patient", "p1", None, None, None)]
    assert rows_of(rows, "reference", "patient") == [("Patient", "p1", None, None, None)]
    assert rows_of(rows, "reference", "performer") == [
        (None, None, "http://other.se/fhir/Practitioner/d1", None, None),
        (None, None, None, "urn:hsa", "SE123"),
        (None, None, "urn:uuid:0b6c1a6e-0000-0000-0000-000000000000", None, None),
    ]
    assert rows_of(rows, "reference", "based-on") == [(None, None, "CarePlan?identifier=x", None, None)]


def test_canonical_reference_drops_the_version() -> None:
    res = {
        "resourceType": "PlanDefinition",
        "status": "active",
        "library": ["http://nara.se/fhir/Library/l|2.0"],
    }
    assert rows_of(extract(res), "reference", "depends-on") == [
        (None, None, "http://nara.se/fhir/Library/l", None, None)
    ]


def test_string_rows_from_names_and_addresses() -> None:
    pat = {
        "resourceType": "Patient",
        "name": [{"family": "Öberg", "given": ["Åsa", "Maria"], "prefix": ["Dr"]}],
        "address": [{"line": ["Storgatan 1"], "city": "Västerås", "postalCode": "72211"}],
    }
    rows = extract(pat)
    assert rows_of(rows, "string", "name") == [("oberg", "Öberg"), ("asa", "Åsa"), ("maria", "Maria"), ("dr", "Dr")]
    assert rows_of(rows, "string", "family") == [("oberg", "Öberg")]
    assert rows_of(rows, "string", "address-city") == [("vasteras", "Västerås")]
    assert ("storgatan 1", "Storgatan 1") in rows_of(rows, "string", "address")


def test_token_rows_from_identifier_contact_point_and_boolean() -> None:
    pat = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:pnr", "value": "1912", "type": {"text": "Personnummer"}}],
        "telecom": [{"system": "email", "value": "a@b.se"}],
        "active": True,
        "deceasedDateTime": "2020-01-01",
    }
    rows = extract(pat)
    assert rows_of(rows, "token", "identifier") == [("urn:pnr", "1912", "personnummer")]
    assert rows_of(rows, "token", "email") == [(None, "a@b.se", None)]
    assert rows_of(rows, "token", "active") == [(None, "true", None)]
    assert rows_of(rows, "token", "deceased") == [(None, "true", None)]


def test_number_range_money_and_timing_rows() -> None:
    risk = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "prediction": [
            {"probabilityDecimal": 0.25},
            {"probabilityRange": {"low": {"value": 0.1}, "high": {"value": 0.3}}},
        ],
    }
    assert rows_of(extract(risk), "number", "probability") == [(0.25, 0.25), (0.1, 0.3)]
    invoice = {"resourceType": "Invoice", "status": "issued", "totalNet": {"value": 100, "currency": "SEK"}}
    assert rows_of(extract(invoice), "quantity", "totalnet") == [("urn:iso:std:iso:4217", "SEK", None, 100.0, 100.0)]
    req = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "occurrenceTiming": {"event": ["2026-01-01T10:00:00Z"]},
    }
    assert rows_of(extract(req), "date", "occurrence") == [
        (datetime(2026, 1, 1, 10), datetime(2026, 1, 1, 10, 0, 0, 999999))
    ]


def test_compartment_patient_is_the_first_relative_patient_reference() -> None:
    res = bp()
    assert compartment_patient(res, extract(res)) == "p1"
    res["subject"] = {"reference": "http://elsewhere.se/fhir/Patient/p9"}
    assert compartment_patient(res, extract(res)) is None
    assert compartment_patient({"resourceType": "Patient", "id": "me"}, IndexRows()) == "me"
    org = {"resourceType": "Organization", "id": "o"}
    assert compartment_patient(org, extract(org)) is None


# ---- the shortcuts agree with plain evaluation -------------------------------------------------------
def _same(a: IndexRows, b: IndexRows) -> bool:
    kinds = ("token", "string", "date", "number", "quantity", "reference", "uri", "composite")
    return all(sorted(map(repr, getattr(a, k))) == sorted(map(repr, getattr(b, k))) for k in kinds)


def test_extraction_shortcuts_agree_with_plain_evaluation() -> None:
    assert _same(extract(bp()), extract(bp(), plain=True))


def test_extraction_shortcuts_agree_on_synthea_resources() -> None:
    files = sorted((shared_data_dir() / "synthea-r4").glob("*.json"))[:5]
    if not files:
        pytest.skip("no Synthea bundles in the shared data folder")
    checked = 0
    for f in files:
        for entry in orjson.loads(f.read_bytes())["entry"]:
            res = entry["resource"]
            assert _same(extract(res), extract(res, plain=True)), res["resourceType"]
            checked += 1
    assert checked > 100
