"""FHIR REST interactions over real HTTP, on SQLite and PostgreSQL (R4 http.html)."""

from __future__ import annotations

import base64
import time

import httpx
import orjson

JSON = {"Content-Type": "application/fhir+json"}


def patient(family: str = "Andersson", given: str = "Anna", **extra: object) -> dict:
    res = {
        "resourceType": "Patient",
        "identifier": [{"system": "http://electronichealth.se/identifier/personnummer", "value": "191212121212"}],
        "name": [{"family": family, "given": [given]}],
        "gender": "female",
        "birthDate": "1912-12-12",
    }
    res.update(extra)
    return res


def bp(patient_id: str, systolic: float = 135, diastolic: float = 85, when: str = "2026-11-01T08:00:00+01:00") -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {
                    "value": systolic,
                    "unit": "mmHg",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": {
                    "value": diastolic,
                    "unit": "mmHg",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
        ],
    }


def post(fhir: httpx.Client, res: dict, **headers: str) -> httpx.Response:
    return fhir.post(res["resourceType"], content=orjson.dumps(res), headers={**JSON, **headers})


def put(fhir: httpx.Client, path: str, res: dict, **headers: str) -> httpx.Response:
    return fhir.put(path, content=orjson.dumps(res), headers={**JSON, **headers})


def test_create_assigns_id_meta_and_location(fhir: httpx.Client) -> None:
    r = post(fhir, patient())
    assert r.status_code == 201
    body = r.json()
    assert body["id"] and body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Location"].endswith(f"/Patient/{body['id']}/_history/1")
    assert "Last-Modified" in r.headers
    assert r.headers["content-type"].startswith("application/fhir+json")


def test_create_ignores_client_id_and_accepts_plain_json(fhir: httpx.Client) -> None:
    r = fhir.post(
        "Patient",
        content=orjson.dumps({**patient(), "id": "client-chosen"}),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 201
    assert r.json()["id"] != "client-chosen"


def test_read_returns_current_version_with_etag(fhir: httpx.Client) -> None:
    pid = post(fhir, patient()).json()["id"]
    r = fhir.get(f"Patient/{pid}")
    assert r.status_code == 200
    assert r.json()["name"][0]["family"] == "Andersson"
    assert r.headers["ETag"] == 'W/"1"'


def test_read_unknown_is_404_with_operation_outcome(fhir: httpx.Client) -> None:
    r = fhir.get("Patient/does-not-exist")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["code"] == "not-found"


def test_update_creates_new_version_and_vread_reads_old(fhir: httpx.Client) -> None:
    created = post(fhir, patient()).json()
    created["gender"] = "other"
    r = put(fhir, f"Patient/{created['id']}", created)
    assert r.status_code == 200
    assert r.json()["meta"]["versionId"] == "2"
    assert fhir.get(f"Patient/{created['id']}/_history/1").json()["gender"] == "female"
    assert fhir.get(f"Patient/{created['id']}/_history/2").json()["gender"] == "other"
    assert fhir.get(f"Patient/{created['id']}/_history/3").status_code == 404


def test_update_as_create_with_client_id(fhir: httpx.Client) -> None:
    r = put(fhir, "Patient/pat-1", {**patient(), "id": "pat-1"})
    assert r.status_code == 201
    assert r.json()["id"] == "pat-1"
    assert fhir.get("Patient/pat-1").status_code == 200


def test_update_with_mismatched_id_is_400(fhir: httpx.Client) -> None:
    r = put(fhir, "Patient/a", {**patient(), "id": "b"})
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["id"]


def test_if_match_stale_version_is_412_and_changes_nothing(fhir: httpx.Client) -> None:
    created = post(fhir, patient()).json()
    ok = put(fhir, f"Patient/{created['id']}", {**created, "gender": "male"}, **{"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = put(fhir, f"Patient/{created['id']}", {**created, "gender": "unknown"}, **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert fhir.get(f"Patient/{created['id']}").json()["gender"] == "male"


def test_delete_then_read_is_410_and_history_records_it(fhir: httpx.Client) -> None:
    pid = post(fhir, patient()).json()["id"]
    assert fhir.delete(f"Patient/{pid}").status_code == 204
    r = fhir.get(f"Patient/{pid}")
    assert r.status_code == 410
    hist = fhir.get(f"Patient/{pid}/_history").json()
    assert [e["request"]["method"] for e in hist["entry"]] == ["DELETE", "POST"]
    assert hist["total"] == 2
    assert fhir.delete(f"Patient/{pid}").status_code == 204  # deleting again changes nothing
    assert fhir.get(f"Patient/{pid}/_history").json()["total"] == 2


def test_update_after_delete_recreates_with_next_version(fhir: httpx.Client) -> None:
    created = post(fhir, patient()).json()
    fhir.delete(f"Patient/{created['id']}")
    r = put(fhir, f"Patient/{created['id']}", created)
    assert r.status_code == 201
    assert r.json()["meta"]["versionId"] == "3"


def test_json_patch_applies_and_versions(fhir: httpx.Client) -> None:
    created = post(fhir, patient()).json()
    ops = [{"op": "replace", "path": "/gender", "value": "male"}, {"op": "add", "path": "/active", "value": True}]
    r = fhir.patch(
        f"Patient/{created['id']}", content=orjson.dumps(ops), headers={"Content-Type": "application/json-patch+json"}
    )
    assert r.status_code == 200
    assert r.json()["gender"] == "male" and r.json()["active"] is True
    assert r.json()["meta"]["versionId"] == "2"


def test_json_patch_producing_invalid_resource_is_rejected(fhir: httpx.Client) -> None:
    created = post(fhir, patient()).json()
    ops = [{"op": "replace", "path": "/gender", "value": "not-a-gender"}]
    r = fhir.patch(
        f"Patient/{created['id']}", content=orjson.dumps(ops), headers={"Content-Type": "application/json-patch+json"}
    )
    assert r.status_code == 400
    assert fhir.get(f"Patient/{created['id']}").json()["gender"] == "female"


def test_json_patch_failing_test_op_is_422(fhir: httpx.Client) -> None:
    created = post(fhir, patient()).json()
    ops = [{"op": "test", "path": "/gender", "value": "male"}]
    r = fhir.patch(
        f"Patient/{created['id']}", content=orjson.dumps(ops), headers={"Content-Type": "application/json-patch+json"}
    )
    assert r.status_code == 422


def test_conditional_create_if_none_exist(fhir: httpx.Client) -> None:
    cond = {"If-None-Exist": "identifier=http://electronichealth.se/identifier/personnummer|191212121212"}
    first = post(fhir, patient(), **cond)
    assert first.status_code == 201
    second = post(fhir, patient(), **cond)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    post(fhir, patient())  # a second match now exists
    assert post(fhir, patient(), **cond).status_code == 412


def test_conditional_update_zero_one_many(fhir: httpx.Client) -> None:
    url = "Patient?identifier=http://electronichealth.se/identifier/personnummer|191212121212"
    r0 = put(fhir, url, patient())
    assert r0.status_code == 201
    pid = r0.json()["id"]
    r1 = put(fhir, url, patient(gender="male"))
    assert r1.status_code == 200 and r1.json()["id"] == pid and r1.json()["meta"]["versionId"] == "2"
    bad = put(fhir, url, {**patient(), "id": "other"})
    assert bad.status_code == 400
    post(fhir, patient())
    assert put(fhir, url, patient()).status_code == 412


def test_conditional_delete(fhir: httpx.Client) -> None:
    post(fhir, patient(family="Berg"))
    post(fhir, patient(family="Berg"))
    keep = post(fhir, patient(family="Lind")).json()["id"]
    r = fhir.delete("Patient", params={"family": "Berg"})
    assert r.status_code == 204
    remaining = fhir.get("Patient").json()
    assert [e["resource"]["id"] for e in remaining["entry"]] == [keep]
    assert fhir.delete("Patient", params={"family": "Nobody"}).status_code == 204


def test_prefer_return_minimal_and_operation_outcome(fhir: httpx.Client) -> None:
    r = post(fhir, patient(), Prefer="return=minimal")
    assert r.status_code == 201 and r.content == b"" and "Location" in r.headers
    r2 = post(fhir, patient(), Prefer="return=OperationOutcome")
    assert r2.json()["resourceType"] == "OperationOutcome"


def test_pretty_summary_and_elements_on_read(fhir: httpx.Client) -> None:
    pid = post(
        fhir, patient(text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">A</div>'})
    ).json()["id"]
    pretty = fhir.get(f"Patient/{pid}", params={"_pretty": "true"})
    assert b"\n  " in pretty.content
    summary = fhir.get(f"Patient/{pid}", params={"_summary": "true"}).json()
    assert "text" not in summary and summary["name"]
    assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])
    data = fhir.get(f"Patient/{pid}", params={"_summary": "data"}).json()
    assert "text" not in data and "gender" in data
    text_only = fhir.get(f"Patient/{pid}", params={"_summary": "text"}).json()
    assert "text" in text_only and "gender" not in text_only
    elements = fhir.get(f"Patient/{pid}", params={"_elements": "gender"}).json()
    assert set(elements) == {"resourceType", "id", "meta", "gender"}


def test_search_summary_count(fhir: httpx.Client) -> None:
    post(fhir, patient())
    post(fhir, patient())
    r = fhir.get("Patient", params={"_summary": "count"}).json()
    assert r["total"] == 2 and "entry" not in r


def test_conditional_read_not_modified(fhir: httpx.Client) -> None:
    pid = post(fhir, patient()).json()["id"]
    r = fhir.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 304
    r2 = fhir.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"9"'})
    assert r2.status_code == 200


def test_history_type_and_system_with_since_count_and_paging(fhir: httpx.Client) -> None:
    p = post(fhir, patient()).json()
    post(fhir, bp(p["id"]))
    middle = time.time()
    time.sleep(0.01)
    put(fhir, f"Patient/{p['id']}", {**p, "gender": "male"})
    post(fhir, bp(p["id"], 150, 95))
    type_hist = fhir.get("Patient/_history").json()
    assert type_hist["total"] == 2
    system = fhir.get("_history", params={"_count": "3"}).json()
    assert system["total"] == 4 and len(system["entry"]) == 3
    nxt = next(link["url"] for link in system["link"] if link["relation"] == "next")
    page2 = fhir.get(nxt).json()
    assert len(page2["entry"]) == 1
    seen = [e["fullUrl"] + e["response"]["etag"] for e in system["entry"] + page2["entry"]]
    assert len(set(seen)) == 4
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle)) + f".{int(middle % 1 * 1e6):06d}Z"
    recent = fhir.get("_history", params={"_since": since}).json()
    assert recent["total"] == 2


def test_metadata_lists_interactions_and_search_params(fhir: httpx.Client) -> None:
    cs = fhir.get("metadata").json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    obs = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Observation")
    names = {p["name"] for p in obs["searchParam"]}
    assert {"code", "subject", "patient", "date", "component-code-value-quantity", "_id", "_lastUpdated"} <= names
    assert {i["code"] for i in obs["interaction"]} >= {"read", "vread", "update", "patch", "delete", "create"}
    assert {i["code"] for i in cs["rest"][0]["interaction"]} >= {"transaction", "batch"}


def test_patch_via_binary_in_transaction_and_http(fhir: httpx.Client) -> None:
    created = post(fhir, patient()).json()
    data = base64.b64encode(orjson.dumps([{"op": "replace", "path": "/gender", "value": "male"}])).decode()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data},
                "request": {"method": "PATCH", "url": f"Patient/{created['id']}"},
            }
        ],
    }
    r = fhir.post("", content=orjson.dumps(bundle), headers=JSON)
    assert r.status_code == 200, r.text
    assert fhir.get(f"Patient/{created['id']}").json()["gender"] == "male"
