"""REST details not covered elsewhere, over real HTTP on SQLite and PostgreSQL: HEAD, vread and
update headers, If-Modified-Since, conditional patch, Prefer on every write, history paging per
instance, and the CapabilityStatement telling the truth about what works."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

import httpx
import orjson

from nara.fhir.spec import spec
from tests.server.test_rest_interactions import JSON, bp, patient, post, put

PATCH_JSON = {"Content-Type": "application/json-patch+json"}
PNR = "http://electronichealth.se/identifier/personnummer"


def test_head_returns_headers_without_body(fhir: httpx.Client) -> None:
    pid = post(fhir, patient()).json()["id"]
    r = fhir.head(f"Patient/{pid}")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["ETag"] == 'W/"1"' and "Last-Modified" in r.headers
    assert fhir.head("Patient/missing").status_code == 404


def test_vread_and_update_carry_version_headers(fhir: httpx.Client) -> None:
    created = post(fhir, patient()).json()
    updated = put(fhir, f"Patient/{created['id']}", {**created, "gender": "male"})
    assert updated.headers["ETag"] == 'W/"2"'
    assert updated.headers["Location"].endswith(f"/Patient/{created['id']}/_history/2")
    old = fhir.get(f"Patient/{created['id']}/_history/1")
    assert old.headers["ETag"] == 'W/"1"'
    modified = parsedate_to_datetime(old.headers["Last-Modified"])
    assert abs(modified - datetime.fromisoformat(created["meta"]["lastUpdated"].replace("Z", "+00:00"))) < timedelta(
        seconds=1
    )


def test_if_modified_since(fhir: httpx.Client) -> None:
    pid = post(fhir, patient()).json()["id"]
    later = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    earlier = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert fhir.get(f"Patient/{pid}", headers={"If-Modified-Since": later}).status_code == 304
    assert fhir.get(f"Patient/{pid}", headers={"If-Modified-Since": earlier}).status_code == 200


def test_conditional_patch_zero_one_many(fhir: httpx.Client) -> None:
    ops = orjson.dumps([{"op": "replace", "path": "/gender", "value": "male"}])
    url = f"Patient?identifier={PNR}|191212121212"
    assert fhir.patch(url, content=ops, headers=PATCH_JSON).status_code == 404
    pid = post(fhir, patient()).json()["id"]
    one = fhir.patch(url, content=ops, headers=PATCH_JSON)
    assert one.status_code == 200 and one.json()["id"] == pid and one.json()["gender"] == "male"
    post(fhir, patient())
    many = fhir.patch(url, content=ops, headers=PATCH_JSON)
    assert many.status_code == 412
    assert fhir.get(f"Patient/{pid}").json()["meta"]["versionId"] == "2"


def test_prefer_applies_to_update_patch_and_delete(fhir: httpx.Client) -> None:
    created = post(fhir, patient()).json()
    path = f"Patient/{created['id']}"
    minimal = put(fhir, path, {**created, "gender": "male"}, Prefer="return=minimal")
    assert minimal.status_code == 200 and minimal.content == b"" and minimal.headers["ETag"] == 'W/"2"'
    outcome = fhir.patch(
        path,
        content=orjson.dumps([{"op": "replace", "path": "/gender", "value": "other"}]),
        headers={**PATCH_JSON, "Prefer": "return=OperationOutcome"},
    )
    assert outcome.json()["resourceType"] == "OperationOutcome"
    assert "version 3" in outcome.json()["issue"][0]["diagnostics"]
    deleted = fhir.delete(path, headers={"Prefer": "return=OperationOutcome"})
    assert deleted.status_code == 200 and deleted.json()["issue"][0]["severity"] == "information"
    assert deleted.headers["ETag"] == 'W/"4"'


def test_errors_are_pretty_printed_on_request(fhir: httpx.Client) -> None:
    r = fhir.get("Patient/missing", params={"_pretty": "true"})
    assert r.status_code == 404 and b'\n  "issue"' in r.content


def test_instance_history_pages_with_count(fhir: httpx.Client) -> None:
    created = post(fhir, patient()).json()
    for gender in ("male", "other", "unknown", "female"):
        put(fhir, f"Patient/{created['id']}", {**created, "gender": gender})
    first = fhir.get(f"Patient/{created['id']}/_history", params={"_count": "2"}).json()
    assert first["total"] == 5 and [e["response"]["etag"] for e in first["entry"]] == ['W/"5"', 'W/"4"']
    versions = []
    page = first
    while True:
        versions += [e["resource"]["meta"]["versionId"] for e in page["entry"]]
        nxt = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        if nxt is None:
            break
        page = fhir.get(nxt).json()
    assert versions == ["5", "4", "3", "2", "1"]
    assert fhir.get(f"Patient/{created['id']}/_history", params={"_count": "x"}).status_code == 400
    assert fhir.get("_history", params={"_since": "yesterday"}).status_code == 400


def test_capability_statement_lists_every_type_and_its_interactions_work(fhir: httpx.Client) -> None:
    cs = fhir.get("metadata").json()
    rest = cs["rest"][0]
    listed = {r["type"]: r for r in rest["resource"]}
    assert set(listed) == set(spec().resource_types)
    assert {i["code"] for i in rest["interaction"]} >= {"transaction", "batch", "history-system"}
    pid = post(fhir, patient()).json()["id"]
    obs = post(fhir, bp(pid)).json()
    expected = {
        "read": fhir.get(f"Observation/{obs['id']}"),
        "vread": fhir.get(f"Observation/{obs['id']}/_history/1"),
        "update": put(fhir, f"Observation/{obs['id']}", obs),
        "patch": fhir.patch(f"Observation/{obs['id']}", content=b"[]", headers=PATCH_JSON),
        "history-instance": fhir.get(f"Observation/{obs['id']}/_history"),
        "history-type": fhir.get("Observation/_history"),
        "search-type": fhir.get("Observation", params={"patient": pid}),
        "create": post(fhir, bp(pid)),
        "delete": fhir.delete(f"Observation/{obs['id']}"),
    }
    declared = {i["code"] for i in listed["Observation"]["interaction"]}
    assert declared == set(expected)  # exactly the interactions exercised here
    for code, response in expected.items():
        assert response.status_code in (200, 201, 204), (code, response.text)
    obs_cs = listed["Observation"]
    assert obs_cs["conditionalCreate"] is obs_cs["conditionalUpdate"] is obs_cs["updateCreate"] is True
    assert obs_cs["conditionalDelete"] == "multiple" and obs_cs["versioning"] == "versioned-update"
    assert obs_cs["conditionalRead"] == "full-support"
    # One live Observation with the code (the first was deleted above): the conditional update updates it.
    r = fhir.put("Observation?code=http://loinc.org|85354-9", content=orjson.dumps(bp(pid, 99)), headers=JSON)
    assert r.status_code == 200 and r.json()["id"] == expected["create"].json()["id"]
    assert fhir.delete("Observation", params={"code": "http://loinc.org|85354-9"}).status_code == 204
    assert fhir.get(f"Observation/{r.json()['id']}").status_code == 410
