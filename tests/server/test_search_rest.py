"""FHIR search over real HTTP: GET and POST _search, Bundles, paging links, handling, compartments, _explain."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.conftest import LiveServer
from tests.server.test_rest_interactions import JSON, bp, patient, post, put

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def entry_ids(bundle: dict, mode: str = "match") -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    ]


def link(bundle: dict, relation: str) -> str | None:
    return next((x["url"] for x in bundle["link"] if x["relation"] == relation), None)


@pytest.fixture
def two_patients(fhir: httpx.Client) -> tuple[str, str]:
    a = put(fhir, "Patient/a", {**patient("Öberg", "Åsa"), "id": "a"}).json()["id"]
    b = put(fhir, "Patient/b", {**patient("Berg", "Bo"), "id": "b"}).json()["id"]
    post(fhir, bp(a, 150, 90))
    post(fhir, bp(a, 120, 80, when="2026-10-01T08:00:00+01:00"))
    post(fhir, bp(b, 130, 85))
    return a, b


def test_get_search_returns_a_searchset_bundle(fhir: httpx.Client, two_patients: tuple[str, str]) -> None:
    r = fhir.get("Patient", params={"name": "asa"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert bundle["total"] == 1 and entry_ids(bundle) == ["Patient/a"]
    assert bundle["entry"][0]["fullUrl"].endswith("/Patient/a")
    assert "name=asa" in link(bundle, "self")


def test_post_search_with_form_body_equals_get(fhir: httpx.Client, two_patients: tuple[str, str]) -> None:
    got = fhir.get("Observation", params={"patient": "Patient/a", "_sort": "date"}).json()
    posted = fhir.post("Observation/_search", content="patient=Patient/a&_sort=date", headers=FORM).json()
    assert entry_ids(posted) == entry_ids(got) and len(entry_ids(got)) == 2
    both = fhir.post("Observation/_search?_sort=date", content="patient=Patient/a", headers=FORM).json()
    assert entry_ids(both) == entry_ids(got)


def test_post_search_rejects_json_body(fhir: httpx.Client) -> None:
    r = fhir.post("Patient/_search", content=b"{}", headers=JSON)
    assert r.status_code == 415 and r.json()["resourceType"] == "OperationOutcome"


def test_paging_links_walk_every_page(fhir: httpx.Client) -> None:
    for i in range(5):
        put(fhir, f"Patient/p{i}", {**patient(f"Fam{i}", "X"), "id": f"p{i}"})
    bundle = fhir.get("Patient", params={"_count": "2", "_sort": "family"}).json()
    seen = entry_ids(bundle)
    pages = 1
    while link(bundle, "next"):
        bundle = fhir.get(link(bundle, "next")).json()
        seen += entry_ids(bundle)
        pages += 1
        assert link(bundle, "previous")
    assert pages == 3 and seen == [f"Patient/p{i}" for i in range(5)]
    back = fhir.get(link(bundle, "previous")).json()
    assert entry_ids(back) == ["Patient/p2", "Patient/p3"]


def test_include_entries_are_marked_include(fhir: httpx.Client, two_patients: tuple[str, str]) -> None:
    bundle = fhir.get("Observation", params={"patient": "b", "_include": "Observation:patient"}).json()
    assert len(entry_ids(bundle)) == 1 and entry_ids(bundle, "include") == ["Patient/b"]
    assert bundle["total"] == 1


def test_unknown_parameter_warns_in_the_bundle(fhir: httpx.Client, two_patients: tuple[str, str]) -> None:
    bundle = fhir.get("Patient", params={"name": "berg", "shoe": "42"}).json()
    assert entry_ids(bundle) == ["Patient/b"]
    outcome = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["issue"][0]["severity"] == "warning"
    assert "shoe" in outcome[0]["issue"][0]["diagnostics"]


def test_unknown_parameter_is_400_with_prefer_strict(fhir: httpx.Client) -> None:
    r = fhir.get("Patient", params={"shoe": "42"}, headers={"Prefer": "handling=strict"})
    assert r.status_code == 400
    issue = r.json()["issue"][0]
    assert issue["severity"] == "error" and "shoe" in issue["diagnostics"]


def test_too_many_or_values_answers_too_costly(fhir: httpx.Client) -> None:
    values = ",".join(f"x{i}" for i in range(600))
    r = fhir.get("Patient", params={"_id": values})
    assert r.status_code == 400 and r.json()["issue"][0]["code"] == "too-costly"


def test_summary_and_elements_in_search(fhir: httpx.Client, two_patients: tuple[str, str]) -> None:
    summary = fhir.get("Patient", params={"_id": "a", "_summary": "true"}).json()["entry"][0]["resource"]
    assert "name" in summary and any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])
    elements = fhir.get("Patient", params={"_id": "a", "_elements": "gender"}).json()["entry"][0]["resource"]
    assert "gender" in elements and "name" not in elements
    count = fhir.get("Patient", params={"_summary": "count"}).json()
    assert count["total"] == 2 and "entry" not in count


def test_total_modes_over_http(fhir: httpx.Client, two_patients: tuple[str, str]) -> None:
    assert "total" not in fhir.get("Patient", params={"_total": "none"}).json()
    assert fhir.get("Patient", params={"_total": "accurate"}).json()["total"] == 2
    assert fhir.get("Observation", params={"_total": "estimate"}).json()["total"] >= 1


def test_system_search_by_type(fhir: httpx.Client, two_patients: tuple[str, str]) -> None:
    bundle = fhir.get("", params={"_type": "Patient", "name": "berg"}).json()
    assert entry_ids(bundle) == ["Patient/b"]
    assert fhir.get("", params={"name": "berg"}).status_code == 400
    many = fhir.get("", params={"_type": "Patient,Observation", "_count": "100"}).json()
    assert many["total"] == 5


def test_compartment_search_over_http(fhir: httpx.Client, two_patients: tuple[str, str]) -> None:
    a, _ = two_patients
    bundle = fhir.get(f"Patient/{a}/Observation", params={"_sort": "-date"}).json()
    assert len(entry_ids(bundle)) == 2
    dates = [e["resource"]["effectiveDateTime"] for e in bundle["entry"]]
    assert dates == sorted(dates, reverse=True)
    everything = fhir.get(f"Patient/{a}/*").json()
    assert f"Patient/{a}" in entry_ids(everything) and len(entry_ids(everything)) == 3
    assert (
        fhir.get(f"Patient/{a}/Observation", params={"component-code-value-quantity": "8480-6$gt140"}).json()["total"]
        == 1
    )


def test_composite_blood_pressure_search(fhir: httpx.Client, two_patients: tuple[str, str]) -> None:
    bundle = fhir.get("Observation", params={"component-code-value-quantity": "http://loinc.org|8480-6$gt140"}).json()
    assert bundle["total"] == 1


@pytest.fixture
def explain_off(live_server: LiveServer) -> Iterator[None]:
    live_server.settings.explain_enabled = False
    try:
        yield
    finally:
        live_server.settings.explain_enabled = True


def test_explain_shows_sql_plan_and_timing_for_operators(fhir: httpx.Client, two_patients: tuple[str, str]) -> None:
    bundle = fhir.get("Observation", params={"patient": "a", "_explain": "true"}).json()
    ext = next(e for e in bundle["meta"]["extension"] if e["url"].endswith("search-explain"))
    explain = orjson.loads(ext["valueString"])
    assert "SELECT" in explain["sql"] and explain["plan"] and explain["milliseconds"] >= 0
    assert "a" in explain["parameters"].values()
    assert len(entry_ids(bundle)) == 2


def test_explain_is_refused_when_not_enabled(fhir: httpx.Client, explain_off: None) -> None:
    r = fhir.get("Patient", params={"_explain": "true"})
    assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
