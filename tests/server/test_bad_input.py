"""Bad input never hurts stored data: each bad request gets a precise OperationOutcome, no stack trace,
and the store is compared row by row with a snapshot taken before it (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from nara.config import Settings
from nara.server.app import create_app
from nara.store.store import Store
from tests.conftest import Backend, LiveServer, ServerThread, _free_port, system_token
from tests.db_faults import STALL_MARKER, TRACE_SIGNS, snapshot, stalling_writes, terminate_stalled_backend
from tests.server.test_rest_interactions import JSON, bp, patient, post

PATCH_JSON = {"Content-Type": "application/json-patch+json"}
PNR = "http://electronichealth.se/identifier/personnummer"


@pytest.fixture
def seeded(fhir: httpx.Client) -> dict[str, Any]:
    """A patient (at version 2) and an observation, so that damage to existing data would show."""
    p = post(fhir, patient()).json()
    p = fhir.put(f"Patient/{p['id']}", content=orjson.dumps({**p, "gender": "male"}), headers=JSON).json()
    o = post(fhir, bp(p["id"])).json()
    return {"patient": p, "observation": o}


def assert_outcome(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] in ("error", "fatal") and issue["diagnostics"]
    if code is not None:
        assert issue["code"] == code, issue
    for sign in TRACE_SIGNS:
        assert sign not in r.text, f"{sign!r} leaked to the client: {r.text}"
    return issue


def nested_extension(depth: int) -> bytes:
    """A Patient whose extension holds ``depth`` nested extensions (2 JSON levels each), as JSON text."""
    head = b'{"url": "http://example.org/x", "extension": [' * depth
    leaf = b'{"url": "http://example.org/x", "valueString": "leaf"}'
    return b'{"resourceType": "Patient", "extension": [' + head + leaf + b"]}" * depth + b"]}"


# (description, method, path, body bytes, headers, status, issue code)
BAD_REQUESTS: list[tuple[str, str, str, bytes, dict[str, str], int, str | None]] = [
    ("malformed JSON", "POST", "Patient", b'{"resourceType": "Patient",', JSON, 400, "structure"),
    ("trailing garbage", "POST", "Patient", b'{"resourceType": "Patient"} x', JSON, 400, "structure"),
    ("not UTF-8", "POST", "Patient", b'{"resourceType": "Patient", "gender": "\xff"}', JSON, 400, "structure"),
    ("JSON array instead of a resource", "POST", "Patient", b"[1, 2]", JSON, 400, "invalid"),
    ("JSON string instead of a resource", "POST", "Patient", b'"Patient"', JSON, 400, "invalid"),
    ("empty body", "POST", "Patient", b"", JSON, 400, "invalid"),
    (
        "NaN literal",
        "POST",
        "Observation",
        b'{"resourceType": "Observation", "valueQuantity": {"value": NaN}}',
        JSON,
        400,
        "structure",
    ),
    (
        "number beyond double range",
        "POST",
        "Patient",
        b'{"resourceType": "Patient", "x": 1e400}',
        JSON,
        400,
        "structure",
    ),
    ("JSON nested beyond the parser's limit", "POST", "Patient", b"[" * 2000 + b"]" * 2000, JSON, 400, "structure"),
    (
        "resource nested deeper than can be stored",
        "POST",
        "Patient",
        nested_extension(200),
        JSON,
        400,
        "invalid",
    ),
    (
        "resource nested to the parser's limit (deeper than Python recursion)",
        "POST",
        "Patient",
        nested_extension(510),
        JSON,
        400,
        None,
    ),
    (
        "wrong content type",
        "POST",
        "Patient",
        orjson.dumps(patient()),
        {"Content-Type": "text/plain"},
        415,
        "not-supported",
    ),
    (
        "form content type",
        "POST",
        "Patient",
        b"family=x",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "not-supported",
    ),
    (
        "XML body",
        "POST",
        "Patient",
        b'<Patient xmlns="http://hl7.org/fhir"/>',
        {"Content-Type": "application/fhir+xml"},
        415,
        "not-supported",
    ),
    (
        "XML body to update",
        "PUT",
        "Patient/p1",
        b"<Patient/>",
        {"Content-Type": "application/xml"},
        415,
        "not-supported",
    ),
    ("XML transaction", "POST", "", b"<Bundle/>", {"Content-Type": "application/fhir+xml"}, 415, "not-supported"),
    ("only XML accepted", "GET", "Patient", b"", {"Accept": "application/fhir+xml"}, 406, "not-supported"),
    ("_format=xml", "GET", "Patient?_format=xml", b"", {}, 406, "not-supported"),
    ("JSON Patch with a resource content type", "PATCH", "Patient/{pid}", b"{}", JSON, 400, "invalid"),
    ("JSON Patch that is not an array", "PATCH", "Patient/{pid}", b'{"op": "remove"}', PATCH_JSON, 400, "invalid"),
    (
        "JSON Patch removing a required element",
        "PATCH",
        "Observation/{oid}",
        b'[{"op": "remove", "path": "/status"}]',
        PATCH_JSON,
        400,
        "required",
    ),
    (
        "JSON Patch changing the id",
        "PATCH",
        "Patient/{pid}",
        b'[{"op": "replace", "path": "/id", "value": "other"}]',
        PATCH_JSON,
        422,
        "processing",
    ),
    (
        "JSON Patch path that does not exist",
        "PATCH",
        "Patient/{pid}",
        b'[{"op": "replace", "path": "/nope/0", "value": 1}]',
        PATCH_JSON,
        422,
        "processing",
    ),
    (
        "id of 65 characters in the URL",
        "PUT",
        "Patient/" + "a" * 65,
        orjson.dumps({**patient(), "id": "a" * 65}),
        JSON,
        400,
        "invalid",
    ),
    (
        "id with an underscore",
        "PUT",
        "Patient/bad_id",
        orjson.dumps({**patient(), "id": "bad_id"}),
        JSON,
        400,
        "invalid",
    ),
    ("id with a space", "PUT", "Patient/bad%20id", orjson.dumps({**patient(), "id": "bad id"}), JSON, 400, "invalid"),
    ("read of an illegal id", "GET", "Patient/a$b", b"", {}, 400, "invalid"),
    (
        "body id differs from the URL",
        "PUT",
        "Patient/{pid}",
        orjson.dumps({**patient(), "id": "someone-else"}),
        JSON,
        400,
        "invalid",
    ),
    ("body without id on update", "PUT", "Patient/{pid}", orjson.dumps(patient()), JSON, 400, "invalid"),
    (
        "resourceType differs from the URL",
        "PUT",
        "Patient/{pid}",
        orjson.dumps({**bp("x"), "id": "{pid}"}),
        JSON,
        400,
        "invalid",
    ),
    ("unknown resource type", "POST", "Patientt", orjson.dumps(patient()), JSON, 404, "not-supported"),
    (
        "stale If-Match on update",
        "PUT",
        "Patient/{pid}",
        orjson.dumps({**patient(), "id": "{pid}"}),
        {**JSON, "If-Match": 'W/"1"'},
        412,
        "conflict",
    ),
    (
        "malformed If-Match",
        "PUT",
        "Patient/{pid}",
        orjson.dumps({**patient(), "id": "{pid}"}),
        {**JSON, "If-Match": "yesterday"},
        400,
        "invalid",
    ),
    (
        "stale If-Match on patch",
        "PATCH",
        "Patient/{pid}",
        b'[{"op": "replace", "path": "/gender", "value": "other"}]',
        {**PATCH_JSON, "If-Match": 'W/"1"'},
        412,
        "conflict",
    ),
    (
        "If-Match on a resource that does not exist",
        "PUT",
        "Patient/new-one",
        orjson.dumps({**patient(), "id": "new-one"}),
        {**JSON, "If-Match": 'W/"1"'},
        412,
        "conflict",
    ),
    ("method not allowed on an instance", "POST", "Patient/{pid}", orjson.dumps(patient()), JSON, 405, "not-supported"),
    (
        "R-ID-1 new patient whose personnummer fails the Luhn check",
        "POST",
        "Patient",
        orjson.dumps(patient(identifier=[{"system": PNR, "value": "19121212-1213"}])),
        JSON,
        400,
        "value",
    ),
    (
        "R-ID-1 update giving a samordningsnummer as a personnummer",
        "PUT",
        "Patient/{pid}",
        orjson.dumps({**patient(identifier=[{"system": PNR, "value": "197010632391"}]), "id": "{pid}"}),
        JSON,
        400,
        "value",
    ),
    (
        "R-ID-1 patch adding a personnummer under the RIV OID that fails the Luhn check",
        "PATCH",
        "Patient/{pid}",
        orjson.dumps(
            [
                {
                    "op": "add",
                    "path": "/identifier/-",
                    "value": {"system": "1.2.752.129.2.1.3.1", "value": "191212121219"},
                }
            ]
        ),
        PATCH_JSON,
        400,
        "value",
    ),
    (
        "R-ID-1 transaction whose second entry names its subject by a wrong personnummer",
        "POST",
        "",
        orjson.dumps(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {"resource": patient("Ny", "Nils"), "request": {"method": "POST", "url": "Patient"}},
                    {
                        "resource": {**bp("x"), "subject": {"identifier": {"system": PNR, "value": "191212121210"}}},
                        "request": {"method": "POST", "url": "Observation"},
                    },
                ],
            }
        ),
        JSON,
        400,
        "value",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "content", "headers", "status", "code"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_bad_request_answers_precisely_and_leaves_store_unchanged(
    fhir: httpx.Client,
    store: Store,
    seeded: dict[str, Any],
    method: str,
    path: str,
    content: bytes,
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    pid, oid = seeded["patient"]["id"], seeded["observation"]["id"]
    path = path.replace("{pid}", pid).replace("{oid}", oid)
    content = content.replace(b"{pid}", pid.encode())
    before = snapshot(store)
    r = fhir.request(method, path, content=content or None, headers=headers)
    assert_outcome(r, status, code)
    assert snapshot(store) == before


def test_body_over_the_configured_limit_is_413(fhir: httpx.Client, store: Store, live_server: LiveServer) -> None:
    assert Settings().max_body_bytes == 16 * 1024 * 1024
    body = orjson.dumps(patient(family="x" * 5000))
    before = snapshot(store)
    old = live_server.settings.max_body_bytes
    live_server.settings.max_body_bytes = 4096
    try:
        declared = fhir.post("Patient", content=body, headers=JSON)
        issue = assert_outcome(declared, 413, "too-long")
        assert "4096" in issue["diagnostics"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
            for i in range(0, len(body), 1000):
                yield body[i : i + 1000]

        streamed = fhir.post("Patient", content=chunks(), headers=JSON)
        assert_outcome(streamed, 413, "too-long")
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": patient(family="x" * 5000), "request": {"method": "POST", "url": "Patient"}}],
        }
        assert_outcome(fhir.post("", content=orjson.dumps(bundle), headers=JSON), 413, "too-long")
        assert fhir.post("Patient", content=orjson.dumps(patient()), headers=JSON).status_code == 201
    finally:
        live_server.settings.max_body_bytes = old
    assert fhir.post("Patient", content=body, headers=JSON).status_code == 201
    after = snapshot(store)
    assert len(after["resource"]) == len(before["resource"]) + 2


def test_body_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NARA_MAX_BODY_BYTES", "1234")
    assert Settings().max_body_bytes == 1234


def test_database_that_goes_away_mid_request_is_503_and_changes_nothing(
    fhir: httpx.Client, store: Store, seeded: dict[str, Any]
) -> None:
    if not store.postgres:
        pytest.skip("SQLite runs in-process: there is no server backend to lose")
    p = seeded["patient"]
    before = snapshot(store)
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        changed = {**p, "name": [{"family": STALL_MARKER}]}
        result["r"] = fhir.put(f"Patient/{p['id']}", content=orjson.dumps(changed), headers=JSON)

    with stalling_writes(store):
        worker = threading.Thread(target=call)
        worker.start()
        terminate_stalled_backend(store)
        worker.join(timeout=30)
    assert_outcome(result["r"], 503, "transient")
    assert snapshot(store) == before
    assert fhir.get(f"Patient/{p['id']}").json()["meta"]["versionId"] == p["meta"]["versionId"]


def _unreachable_url(backend: Backend, tmp_path: Path) -> str:
    if backend.name == "sqlite":
        (tmp_path / "a-directory.db").mkdir()
        return f"sqlite:///{tmp_path}/a-directory.db"  # a directory cannot be opened as a database
    host = backend.url.split("@", 1)[1].split("/", 1)[0].split(":", 1)[0]
    return f"postgresql://postgres@{host}:1/nara"  # nothing listens on port 1


def test_unreachable_database_is_503_with_operation_outcome(backend: Backend, tmp_path: Path) -> None:
    settings = Settings(database_url=_unreachable_url(backend, tmp_path))
    settings.security.dev_idp = True
    port = _free_port()
    server = ServerThread(create_app(settings), port)
    server.start()
    try:
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {system_token()}"}
        with httpx.Client(base_url=base + "/fhir/", timeout=10, headers=auth) as c:
            for _ in range(100):
                try:
                    c.get(base + "/healthz")
                    break
                except httpx.TransportError:
                    threading.Event().wait(0.05)
            assert c.get(base + "/healthz").status_code == 503
            assert_outcome(c.post("Patient", content=orjson.dumps(patient()), headers=JSON), 503, "transient")
            assert_outcome(c.get("Patient/x"), 503, "transient")
            bundle = {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"resource": patient(), "request": {"method": "POST", "url": "Patient"}}],
            }
            assert_outcome(c.post("", content=orjson.dumps(bundle), headers=JSON), 503, "transient")
    finally:
        server.stop()


def test_invalid_resource_answers_400_with_every_issue_and_its_path(fhir: httpx.Client, store: Store) -> None:
    before = snapshot(store)
    bad = {
        **bp("p1"),
        "status": "done",
        "colour": "blue",
        "effectivePeriod": {"start": "2026-11-01"},
        "issued": "2026-11-01",
        "contained": [{"resourceType": "Patient", "gender": ["female"]}],
    }
    del bad["code"]
    r = fhir.post("Observation", content=orjson.dumps(bad), headers=JSON)
    assert_outcome(r, 400)
    issues = {(i["code"], i["expression"][0]) for i in r.json()["issue"]}
    assert issues == {
        ("code-invalid", "Observation.status"),
        ("structure", "Observation.colour"),
        ("structure", "Observation.effectivePeriod"),
        ("value", "Observation.issued"),
        ("structure", "Observation.contained[0].gender"),
        ("required", "Observation.code"),
    }
    assert snapshot(store) == before
