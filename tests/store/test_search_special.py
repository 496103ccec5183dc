"""Common parameters, chaining, reverse chaining, lists, compartments and system search."""

from __future__ import annotations

import time
from typing import Any

import pytest

from nara.fhir.outcome import FhirError
from nara.store.store import Store
from tests.store.search_fixtures import idset, load, search
from tests.store.test_search_types import LOINC, coded, obs, patient


def org(oid: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Organization", "id": oid, "name": name, **extra}


# ---- _id, _lastUpdated and meta -----------------------------------------------------------------
def test_id_single_or_and_not(store: Store) -> None:
    load(store, patient("a", "A", "A"), patient("b", "B", "B"), patient("c", "C", "C"))
    assert idset(store, "Patient", "_id=a") == {"a"}
    assert idset(store, "Patient", "_id=a,c") == {"a", "c"}
    assert idset(store, "Patient", "_id:not=a") == {"b", "c"}
    assert idset(store, "Patient", "_id=zz") == set()


def test_last_updated_ranges(store: Store) -> None:
    load(store, patient("old", "A", "A"))
    time.sleep(0.02)
    with store.transaction() as tx:
        middle = tx.read("Patient", "old").last_updated
    time.sleep(0.02)
    load(store, patient("new", "B", "B"))
    stamp = middle.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    assert idset(store, "Patient", f"_lastUpdated=gt{stamp}") == {"new"}
    assert idset(store, "Patient", f"_lastUpdated=le{stamp}") == {"old"}
    assert idset(store, "Patient", "_lastUpdated=ge2000-01-01&_lastUpdated=lt3000-01-01") == {"old", "new"}


def test_tag_security_profile_source(store: Store) -> None:
    load(
        store,
        patient(
            "tagged",
            "A",
            "A",
            meta={
                "tag": [{"system": "http://nara.se/tags", "code": "demo"}],
                "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
                "profile": ["http://nara.se/fhir/StructureDefinition/NaraPatient"],
                "source": "http://region.se/system#x",
            },
        ),
        patient("plain", "B", "B"),
    )
    assert idset(store, "Patient", "_tag=http://nara.se/tags|demo") == {"tagged"}
    assert idset(store, "Patient", "_tag=demo") == {"tagged"}
    assert idset(store, "Patient", "_tag:not=demo") == {"plain"}
    assert idset(store, "Patient", "_security=R") == {"tagged"}
    assert idset(store, "Patient", "_profile=http://nara.se/fhir/StructureDefinition/NaraPatient") == {"tagged"}
    assert idset(store, "Patient", "_source=http://region.se/system#x") == {"tagged"}
    assert idset(store, "Patient", "_tag:missing=true") == {"plain"}


def test_list_membership(store: Store) -> None:
    load(
        store,
        patient("a", "A", "A"),
        patient("b", "B", "B"),
        patient("c", "C", "C"),
        {
            "resourceType": "List",
            "id": "watch",
            "status": "current",
            "mode": "working",
            "entry": [{"item": {"reference": "Patient/a"}}, {"item": {"reference": "Patient/c"}}],
        },
    )
    assert idset(store, "Patient", "_list=watch") == {"a", "c"}
    assert idset(store, "Patient", "_list=watch&name=c") == {"c"}
    assert idset(store, "Patient", "_list=nothing") == set()


# ---- chaining -----------------------------------------------------------------------------------
@pytest.fixture
def chained(store: Store) -> Store:
    load(
        store,
        org("o-north", "Norrtälje kommun"),
        org("o-south", "Södertälje kommun"),
        patient("p1", "Berg", "Ann", managingOrganization={"reference": "Organization/o-north"}),
        patient("p2", "Lind", "Per", managingOrganization={"reference": "Organization/o-south"}),
        patient("p3", "Berg", "Eva", identifier=[{"system": "urn:pnr", "value": "3"}]),
        obs("x1", subject={"reference": "Patient/p1"}),
        obs("x2", subject={"reference": "Patient/p2"}),
        obs("x3", subject={"reference": "Patient/p3"}),
        obs("x4", subject={"reference": "Group/g1"}),
    )
    return store


def test_chain_one_hop(chained: Store) -> None:
    assert idset(chained, "Observation", "subject:Patient.name=berg") == {"x1", "x3"}
    assert idset(chained, "Observation", "patient.identifier=urn:pnr|3") == {"x3"}
    assert idset(chained, "Observation", "subject.name=lind") == {"x2"}


def test_chain_two_hops(chained: Store) -> None:
    assert idset(chained, "Observation", "subject:Patient.organization.name=norrtalje") == {"x1"}
    assert idset(chained, "Observation", "patient.organization._id=o-south") == {"x2"}


def test_chain_and_other_criteria_combine(chained: Store) -> None:
    assert idset(chained, "Observation", "subject:Patient.name=berg&subject:Patient.given=eva") == {"x3"}
    assert idset(chained, "Observation", "subject:Patient.name=berg,lind&_id=x2") == {"x2"}


def test_chain_deeper_than_the_limit_is_rejected(chained: Store) -> None:
    chained.settings.max_chain_depth = 1
    with pytest.raises(FhirError) as e:
        search(chained, "Observation", "subject:Patient.organization.name=norrtalje")
    assert e.value.status == 400 and e.value.code == "too-costly"
    assert "chain" in e.value.issues[0].diagnostics.lower()


def test_chain_on_non_reference_is_an_error(chained: Store) -> None:
    with pytest.raises(FhirError) as e:
        search(chained, "Observation", "code.name=x", strict=True)
    assert e.value.status == 400


# ---- _has -------------------------------------------------------------------------------------
def test_has_reverse_chain(chained: Store) -> None:
    load(chained, obs("x5", subject={"reference": "Patient/p2"}, code=coded(LOINC, "8867-4")))
    assert idset(chained, "Patient", f"_has:Observation:patient:code={LOINC}|8867-4") == {"p2"}
    assert idset(chained, "Patient", "_has:Observation:subject:_id=x1,x3") == {"p1", "p3"}
    assert idset(chained, "Patient", "_has:Observation:patient:code=nothing") == set()


def test_has_nested(chained: Store) -> None:
    load(
        chained,
        {
            "resourceType": "Provenance",
            "id": "prov",
            "target": [{"reference": "Observation/x2"}],
            "recorded": "2026-01-01T00:00:00Z",
            "agent": [{"who": {"reference": "Organization/o-south"}}],
        },
    )
    assert idset(chained, "Patient", "_has:Observation:patient:_has:Provenance:target:agent=Organization/o-south") == {
        "p2"
    }
    assert idset(chained, "Organization", "_has:Patient:organization:_has:Observation:subject:_id=x1") == {"o-north"}


def test_has_malformed_is_an_error(chained: Store) -> None:
    with pytest.raises(FhirError):
        search(chained, "Patient", "_has:Observation:code=x", strict=True)
    with pytest.raises(FhirError):
        search(chained, "Patient", "_has:Observation:code:status=final", strict=True)


# ---- compartments and system search ----------------------------------------------------------
def test_compartment_search(chained: Store) -> None:
    load(
        chained,
        obs("perf", subject={"reference": "Group/g1"}, performer=[{"reference": "Patient/p1"}]),
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/p1"},
        },
    )
    assert idset(chained, "Observation", compartment=("Patient", "p1")) == {"x1", "perf"}
    assert idset(chained, "Observation", "_id=perf", compartment=("Patient", "p1")) == {"perf"}
    assert idset(chained, "Encounter", compartment=("Patient", "p1")) == {"e1"}
    assert idset(chained, "Encounter", compartment=("Patient", "p2")) == set()
    assert idset(chained, None, compartment=("Patient", "p1")) == {"p1", "x1", "perf", "e1"}


def test_system_search_with_type_and_common_params(chained: Store) -> None:
    assert idset(chained, None, "_type=Patient,Organization&_id=p1,o-north") == {"p1", "o-north"}
    assert idset(chained, None, "_id=p1,x1") == {"p1", "x1"}
    assert idset(chained, None, "name=berg&_type=Patient") == {"p1", "p3"}
    # a parameter that every listed type defines, with the same type
    assert idset(chained, None, "_type=Patient,Organization&name=s") == {"o-south"}


def test_system_search_type_must_be_known(chained: Store) -> None:
    with pytest.raises(FhirError) as e:
        search(chained, None, "_type=Nonsense", strict=True)
    assert e.value.status == 400


# ---- unknown parameters and limits -----------------------------------------------------------------
def test_unknown_parameter_is_ignored_with_a_warning(chained: Store) -> None:
    result = search(chained, "Patient", "name=berg&shoe-size=42")
    assert {m.res_id for m in result.matches} == {"p1", "p3"}
    assert len(result.issues) == 1
    issue = result.issues[0]
    assert issue.severity == "warning" and "shoe-size" in issue.diagnostics


def test_unknown_parameter_is_an_error_when_strict(chained: Store) -> None:
    with pytest.raises(FhirError) as e:
        search(chained, "Patient", "name=berg&shoe-size=42", strict=True)
    assert e.value.status == 400 and "shoe-size" in e.value.issues[0].diagnostics


def test_unsupported_modifier_is_reported(chained: Store) -> None:
    result = search(chained, "Patient", "name:below=berg")
    assert result.issues and "below" in result.issues[0].diagnostics
    with pytest.raises(FhirError):
        search(chained, "Patient", "name:below=berg", strict=True)


def test_too_many_or_values_is_too_costly(chained: Store) -> None:
    chained.settings.max_or_values = 10
    values = ",".join(f"v{i}" for i in range(11))
    with pytest.raises(FhirError) as e:
        search(chained, "Patient", f"name={values}")
    assert e.value.status == 400 and e.value.code == "too-costly"
    assert "10" in e.value.issues[0].diagnostics


def test_too_many_values_across_parameters_is_too_costly(chained: Store) -> None:
    chained.settings.max_or_values = 10
    query = "&".join(f"name=v{i}" for i in range(11))
    with pytest.raises(FhirError) as e:
        search(chained, "Patient", query)
    assert e.value.code == "too-costly"


def test_huge_count_is_capped_with_a_warning(chained: Store) -> None:
    chained.settings.max_count = 2
    result = search(chained, "Patient", "_count=100000")
    assert len(result.matches) == 2 and result.next_cursor
    assert any(i.code == "too-costly" and "2" in i.diagnostics for i in result.issues)


def test_empty_value_is_an_error(chained: Store) -> None:
    with pytest.raises(FhirError):
        search(chained, "Patient", "name=", strict=True)


def test_missing_takes_only_true_or_false(chained: Store) -> None:
    with pytest.raises(FhirError):
        search(chained, "Patient", "name:missing=maybe", strict=True)


def test_slow_search_is_stopped_with_too_costly(store: Store) -> None:
    load(store, *[patient(f"p{i}", f"Family{i}", "Given") for i in range(300)])
    store.settings.statement_timeout_ms = 1
    query = "&".join(f"name:contains=amily{i}" for i in range(40)) + "&_sort=-family,given,-name"
    with pytest.raises(FhirError) as e:
        for _ in range(20):  # a loaded machine may be fast enough once; not twenty times
            search(store, "Patient", query)
    assert e.value.status == 503 and e.value.code == "too-costly"
    assert "1 ms" in e.value.issues[0].diagnostics
    store.settings.statement_timeout_ms = 20_000
    assert search(store, "Patient", "name:contains=amily29").matches
