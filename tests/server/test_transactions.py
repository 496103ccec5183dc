"""``transaction`` and ``batch`` Bundles over real HTTP, on SQLite and PostgreSQL (R4 http.html#transaction).

A transaction is all-or-nothing: after every failure, including failures raised inside the database
half-way through and a PostgreSQL backend terminated mid-transaction, the store is compared row by
row with a snapshot taken before the request.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import insert, select

from nara.store.schema import resource, resource_history
from nara.store.store import Store
from tests.db_faults import (
    FAIL_MARKER,
    STALL_MARKER,
    TRACE_SIGNS,
    failing_index_rows,
    failing_writes,
    row_count,
    snapshot,
    stalling_writes,
    terminate_stalled_backend,
)
from tests.server.test_rest_interactions import JSON, bp, patient, post

PNR = "http://electronichealth.se/identifier/personnummer"


def entry(method: str, url: str, res: dict[str, Any] | None = None, full_url: str | None = None, **req: str) -> dict:
    e: dict[str, Any] = {"request": {"method": method, "url": url, **req}}
    if res is not None:
        e["resource"] = res
    if full_url is not None:
        e["fullUrl"] = full_url
    return e


def bundle(*entries: dict, kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def send(fhir: httpx.Client, b: dict, **headers: str) -> httpx.Response:
    return fhir.post("", content=orjson.dumps(b), headers={**JSON, **headers})


def with_pnr(value: str, **extra: Any) -> dict:
    return patient(identifier=[{"system": PNR, "value": value}], **extra)


def assert_clean_outcome(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["diagnostics"]
    for sign in TRACE_SIGNS:
        assert sign not in r.text, f"{sign!r} leaked to the client: {r.text}"
    return body


def ref_id(location: str) -> str:
    return location.split("/")[1]


# ---- resolution of identities and references ----------------------------------------------------
def test_transaction_resolves_urn_uuid_full_urls_everywhere_in_the_resources(fhir: httpx.Client) -> None:
    p, o1, o2 = "urn:uuid:0f3c1a54-0000-4000-8000-000000000001", "urn:uuid:2", "urn:uuid:3"
    first = bp("x")
    first["subject"] = {"reference": p}
    first["performer"] = [{"reference": p}]
    second = bp("x", 150, 95)
    second["subject"] = {"reference": p}
    second["derivedFrom"] = [{"reference": o1}]
    second["contained"] = [
        {
            "resourceType": "Provenance",
            "target": [{"reference": o1}],
            "recorded": "2026-11-01T08:00:00Z",
            "agent": [{"who": {"reference": p}}],
        }
    ]
    r = send(
        fhir,
        bundle(
            entry("POST", "Observation", second, o2),
            entry("POST", "Patient", patient(), p),
            entry("POST", "Observation", first, o1),
        ),
    )
    assert r.status_code == 200, r.text
    resp = r.json()
    assert resp["type"] == "transaction-response"
    pid = ref_id(resp["entry"][1]["response"]["location"])
    o1_id = ref_id(resp["entry"][2]["response"]["location"])
    stored = fhir.get(f"Observation/{ref_id(resp['entry'][0]['response']['location'])}").json()
    assert stored["subject"]["reference"] == f"Patient/{pid}"
    assert stored["derivedFrom"][0]["reference"] == f"Observation/{o1_id}"
    assert stored["contained"][0]["target"][0]["reference"] == f"Observation/{o1_id}"
    assert stored["contained"][0]["agent"][0]["who"]["reference"] == f"Patient/{pid}"
    assert fhir.get(f"Observation/{o1_id}").json()["performer"][0]["reference"] == f"Patient/{pid}"


def test_transaction_response_lists_entries_in_request_order_with_status_location_etag(fhir: httpx.Client) -> None:
    existing = post(fhir, patient(family="Berg")).json()
    r = send(
        fhir,
        bundle(
            entry("GET", f"Patient/{existing['id']}"),
            entry("PUT", f"Patient/{existing['id']}", {**existing, "gender": "male"}),
            entry("POST", "Patient", patient(family="Ny")),
            entry("PUT", "Patient/client-id", {**patient(), "id": "client-id"}),
        ),
    )
    assert r.status_code == 200, r.text
    got = r.json()["entry"]
    assert [e["response"]["status"] for e in got] == ["200 OK", "200 OK", "201 Created", "201 Created"]
    assert got[0]["resource"]["id"] == existing["id"]
    # The GET runs last, so it already sees the update of entry 1.
    assert got[0]["resource"]["gender"] == "male" and got[0]["resource"]["meta"]["versionId"] == "2"
    assert got[1]["response"]["location"] == f"Patient/{existing['id']}/_history/2"
    assert got[1]["response"]["etag"] == 'W/"2"'
    assert got[2]["response"]["location"].endswith("/_history/1") and got[2]["response"]["etag"] == 'W/"1"'
    assert got[3]["response"]["location"] == "Patient/client-id/_history/1"
    assert all(e["response"]["lastModified"].endswith("Z") for e in got)


def test_transaction_processes_delete_then_post_then_put_then_get(fhir: httpx.Client) -> None:
    old = post(fhir, with_pnr("191101111118", family="Ordning")).json()
    r = send(
        fhir,
        bundle(
            entry("GET", "Patient?family=Ordning"),
            entry("PUT", "Patient/put-1", {**patient(family="Ordning"), "id": "put-1"}),
            # Evaluated after the DELETE below: the old patient no longer matches, so this creates.
            entry(
                "POST",
                "Patient",
                with_pnr("191101111118", family="Ordning"),
                ifNoneExist=f"identifier={PNR}|191101111118",
            ),
            entry("DELETE", f"Patient/{old['id']}"),
        ),
    )
    assert r.status_code == 200, r.text
    got = r.json()["entry"]
    assert [e["response"]["status"] for e in got] == ["200 OK", "201 Created", "201 Created", "204 No Content"]
    new_id = ref_id(got[2]["response"]["location"])
    assert new_id != old["id"]
    found = {e["resource"]["id"] for e in got[0]["resource"].get("entry", [])}
    assert found == {"put-1", new_id}
    assert fhir.get(f"Patient/{old['id']}").status_code == 410


def test_transaction_if_none_exist_reuses_the_match_and_references_point_at_it(
    fhir: httpx.Client, store: Store
) -> None:
    existing = post(fhir, with_pnr("192202122228")).json()
    obs = bp("x")
    obs["subject"] = {"reference": "urn:uuid:p"}
    r = send(
        fhir,
        bundle(
            entry(
                "POST", "Patient", with_pnr("192202122228"), "urn:uuid:p", ifNoneExist=f"identifier={PNR}|192202122228"
            ),
            entry("POST", "Observation", obs),
        ),
    )
    assert r.status_code == 200, r.text
    got = r.json()["entry"]
    assert got[0]["response"]["status"] == "200 OK"
    assert got[0]["response"]["location"] == f"Patient/{existing['id']}/_history/1"
    oid = ref_id(got[1]["response"]["location"])
    assert fhir.get(f"Observation/{oid}").json()["subject"]["reference"] == f"Patient/{existing['id']}"
    assert fhir.get("Patient", params={"_summary": "count"}).json()["total"] == 1


def test_transaction_if_none_exist_with_several_matches_fails_whole_transaction(
    fhir: httpx.Client, store: Store
) -> None:
    post(fhir, with_pnr("193303133338"))
    post(fhir, with_pnr("193303133338"))
    before = snapshot(store)
    r = send(
        fhir,
        bundle(
            entry("POST", "Patient", patient(family="Ensam")),
            entry("POST", "Patient", with_pnr("193303133338"), ifNoneExist=f"identifier={PNR}|193303133338"),
        ),
    )
    body = assert_clean_outcome(r, 412)
    assert body["issue"][0]["expression"] == ["Bundle.entry[1].request.ifNoneExist"]
    assert snapshot(store) == before


def test_transaction_resolves_conditional_references(fhir: httpx.Client) -> None:
    pid = post(fhir, with_pnr("194404144448")).json()["id"]
    obs = bp("x")
    obs["subject"] = {"reference": f"Patient?identifier={PNR}|194404144448"}
    r = send(fhir, bundle(entry("POST", "Observation", obs)))
    assert r.status_code == 200, r.text
    oid = ref_id(r.json()["entry"][0]["response"]["location"])
    assert fhir.get(f"Observation/{oid}").json()["subject"]["reference"] == f"Patient/{pid}"


@pytest.mark.parametrize("copies", [0, 2])
def test_transaction_conditional_reference_matching_zero_or_many_fails_and_stores_nothing(
    fhir: httpx.Client, store: Store, copies: int
) -> None:
    for _ in range(copies):
        post(fhir, with_pnr("195505155555"))
    before = snapshot(store)
    obs = bp("x")
    obs["subject"] = {"reference": f"Patient?identifier={PNR}|195505155555"}
    r = send(fhir, bundle(entry("POST", "Patient", patient()), entry("POST", "Observation", obs)))
    body = assert_clean_outcome(r, 412)
    assert body["issue"][0]["expression"] == ["Bundle.entry[1].resource.subject.reference"]
    assert "matched" in body["issue"][0]["diagnostics"]
    assert snapshot(store) == before


def test_transaction_conditional_update_gives_its_full_url_an_identity(fhir: httpx.Client) -> None:
    def run() -> list[dict]:
        obs = bp("x")
        obs["subject"] = {"reference": "urn:uuid:pat"}
        r = send(
            fhir,
            bundle(
                entry("PUT", f"Patient?identifier={PNR}|196606166665", with_pnr("196606166665"), "urn:uuid:pat"),
                entry("POST", "Observation", obs),
            ),
        )
        assert r.status_code == 200, r.text
        return r.json()["entry"]

    first = run()
    assert first[0]["response"]["status"] == "201 Created"
    pid = ref_id(first[0]["response"]["location"])
    second = run()
    assert second[0]["response"]["status"] == "200 OK"
    assert second[0]["response"]["location"] == f"Patient/{pid}/_history/2"
    for got in (first, second):
        oid = ref_id(got[1]["response"]["location"])
        assert fhir.get(f"Observation/{oid}").json()["subject"]["reference"] == f"Patient/{pid}"


def test_transaction_returns_representation_when_preferred(fhir: httpx.Client) -> None:
    r = send(fhir, bundle(entry("POST", "Patient", patient(), "urn:uuid:a")), Prefer="return=representation")
    got = r.json()["entry"][0]
    assert got["resource"]["resourceType"] == "Patient" and got["resource"]["meta"]["versionId"] == "1"
    minimal = send(fhir, bundle(entry("POST", "Patient", patient())), Prefer="return=minimal").json()["entry"][0]
    assert "resource" not in minimal and minimal["response"]["status"] == "201 Created"


# ---- all or nothing ----------------------------------------------------------------------------
def test_transaction_with_an_invalid_later_entry_stores_nothing(fhir: httpx.Client, store: Store) -> None:
    existing = post(fhir, patient()).json()
    before = snapshot(store)
    r = send(
        fhir,
        bundle(
            entry("POST", "Patient", patient(family="Först")),
            entry("PUT", f"Patient/{existing['id']}", {**existing, "gender": "male"}),
            entry("POST", "Patient", patient(gender="bogus")),
        ),
    )
    body = assert_clean_outcome(r, 400)
    issue = body["issue"][0]
    assert issue["expression"] == ["Bundle.entry[2].resource.gender"]
    assert issue["diagnostics"].startswith("Bundle.entry[2]:")
    assert snapshot(store) == before


def test_transaction_reference_to_unknown_urn_uuid_is_400_and_stores_nothing(fhir: httpx.Client, store: Store) -> None:
    before = snapshot(store)
    obs = bp("x")
    obs["subject"] = {"reference": "urn:uuid:not-in-this-bundle"}
    r = send(fhir, bundle(entry("POST", "Patient", patient(), "urn:uuid:p"), entry("POST", "Observation", obs)))
    body = assert_clean_outcome(r, 400)
    assert body["issue"][0]["expression"] == ["Bundle.entry[1].resource.subject.reference"]
    assert "urn:uuid:not-in-this-bundle" in body["issue"][0]["diagnostics"]
    assert snapshot(store) == before


def test_transaction_changing_one_resource_twice_is_rejected(fhir: httpx.Client, store: Store) -> None:
    existing = post(fhir, patient()).json()
    before = snapshot(store)
    twice = bundle(
        entry("PUT", f"Patient/{existing['id']}", {**existing, "gender": "male"}),
        entry("DELETE", f"Patient/{existing['id']}"),
    )
    body = assert_clean_outcome(send(fhir, twice), 400)
    assert "both change" in body["issue"][0]["diagnostics"]
    same_put = bundle(
        entry("PUT", "Patient/dup", {**patient(), "id": "dup"}), entry("PUT", "Patient/dup", {**patient(), "id": "dup"})
    )
    assert_clean_outcome(send(fhir, same_put), 400)
    assert snapshot(store) == before


def test_transaction_rolls_back_when_the_database_fails_half_way(fhir: httpx.Client, store: Store) -> None:
    existing = post(fhir, patient()).json()
    doomed = post(fhir, patient(family="Borta")).json()
    before = snapshot(store)
    with failing_writes(store):
        r = send(
            fhir,
            bundle(
                entry("DELETE", f"Patient/{doomed['id']}"),
                entry("POST", "Patient", patient(family="Ett")),
                entry("POST", "Patient", patient(family="Två")),
                entry("PUT", f"Patient/{existing['id']}", {**existing, "gender": "male"}),
                entry("PUT", "Patient/fails", {**patient(family=FAIL_MARKER), "id": "fails"}),
                entry("POST", "Observation", bp(existing["id"])),
            ),
        )
    assert_clean_outcome(r, 500)
    assert snapshot(store) == before
    assert fhir.get(f"Patient/{doomed['id']}").status_code == 200


@pytest.mark.parametrize("kind", ["unique", "error"])
def test_transaction_rolls_back_on_database_error_of_each_kind(fhir: httpx.Client, store: Store, kind: str) -> None:
    before = snapshot(store)
    with failing_writes(store, kind):
        r = send(
            fhir,
            bundle(
                entry("POST", "Patient", patient(family="Ett")),
                entry("POST", "Patient", patient(family=FAIL_MARKER)),
            ),
        )
    body = assert_clean_outcome(r, 409 if kind == "unique" else 500)
    assert body["issue"][0]["code"] == ("conflict" if kind == "unique" else "exception")
    assert "nothing was changed" in body["issue"][0]["diagnostics"]
    assert snapshot(store) == before


def test_transaction_rolls_back_on_a_real_unique_violation(fhir: httpx.Client, store: Store) -> None:
    existing = post(fhir, patient()).json()
    # A stray history row with the version the update is about to archive: a genuine unique-index clash.
    with store.engine.begin() as conn:
        row = conn.execute(select(resource).where(resource.c.res_id == existing["id"])).mappings().one()
        values = {k: v for k, v in row.items() if k in resource_history.c and k != "content"}
        conn.execute(insert(resource_history).values(**values, content=None))
    before = snapshot(store)
    r = send(
        fhir,
        bundle(
            entry("POST", "Patient", patient(family="Ett")),
            entry("PUT", f"Patient/{existing['id']}", {**existing, "gender": "male"}),
            entry("POST", "Patient", patient(family="Tre")),
        ),
    )
    assert_clean_outcome(r, 409)
    assert snapshot(store) == before


def test_transaction_rolls_back_when_index_rows_fail_at_commit(fhir: httpx.Client, store: Store) -> None:
    before = snapshot(store)
    with failing_index_rows(store):
        r = send(
            fhir,
            bundle(
                *(entry("POST", "Patient", patient(family=f"Namn{i}")) for i in range(5)),
                entry("POST", "Patient", patient(family=FAIL_MARKER)),
            ),
        )
    assert_clean_outcome(r, 500)
    assert snapshot(store) == before


def test_transaction_survives_its_postgres_backend_being_terminated(fhir: httpx.Client, store: Store) -> None:
    if not store.postgres:
        pytest.skip("SQLite runs in-process: there is no server backend to terminate")
    post(fhir, patient())
    before = snapshot(store)
    result: dict[str, httpx.Response] = {}
    b = bundle(
        entry("POST", "Patient", patient(family="Ett")),
        entry("POST", "Observation", bp("x")),
        entry("POST", "Patient", patient(family=STALL_MARKER)),
    )

    def call() -> None:
        result["r"] = send(fhir, b)

    with stalling_writes(store):
        worker = threading.Thread(target=call)
        worker.start()
        terminate_stalled_backend(store)
        worker.join(timeout=30)
    body = assert_clean_outcome(result["r"], 503)
    assert body["issue"][0]["code"] == "transient"
    assert snapshot(store) == before
    # The pool drops the dead connection: the next requests work.
    for _ in range(3):
        assert post(fhir, patient()).status_code == 201


# ---- batch ------------------------------------------------------------------------------------
def test_batch_reports_each_entry_outcome_and_one_failure_does_not_stop_others(
    fhir: httpx.Client, store: Store
) -> None:
    existing = post(fhir, patient()).json()
    with failing_writes(store):
        r = send(
            fhir,
            bundle(
                entry("POST", "Patient", patient(family="Ett")),
                entry("POST", "Patient", patient(gender="bogus")),
                entry("GET", "Patient/missing"),
                entry("POST", "Patient", patient(family=FAIL_MARKER)),
                entry("PUT", f"Patient/{existing['id']}", {**existing, "gender": "male"}),
                entry("POST", "Observation", {**bp(existing["id"]), "subject": {"reference": "urn:uuid:x"}}),
                entry("DELETE", "Patient/never-existed"),
                entry("GET", f"Patient/{existing['id']}"),
                kind="batch",
            ),
        )
    assert r.status_code == 200, r.text
    resp = r.json()
    assert resp["type"] == "batch-response"
    got = resp["entry"]
    statuses = [e["response"]["status"].split()[0] for e in got]
    assert statuses == ["201", "400", "404", "500", "200", "400", "404", "200"]
    assert got[1]["response"]["outcome"]["issue"][0]["expression"] == ["Patient.gender"]
    assert got[5]["response"]["outcome"]["issue"][0]["expression"] == ["Observation.subject.reference"]
    assert got[7]["resource"]["gender"] == "male"
    for sign in TRACE_SIGNS:
        assert sign not in r.text
    assert fhir.get(f"Patient/{ref_id(got[0]['response']['location'])}").status_code == 200
    assert row_count(store) == 2


def test_bundle_of_wrong_type_or_shape_is_rejected(fhir: httpx.Client, store: Store) -> None:
    before = snapshot(store)
    assert_clean_outcome(send(fhir, {"resourceType": "Bundle", "type": "collection", "entry": []}), 400)
    assert_clean_outcome(send(fhir, {"resourceType": "Patient"}), 400)
    assert_clean_outcome(send(fhir, {"resourceType": "Bundle", "type": "transaction", "entry": {}}), 400)
    assert_clean_outcome(send(fhir, bundle({"request": {"method": "POST"}})), 400)
    assert_clean_outcome(send(fhir, bundle(entry("POST", "http://elsewhere.example/fhir/Patient", patient()))), 400)
    assert_clean_outcome(
        send(
            fhir,
            bundle(
                entry("POST", "Patient", patient(), "urn:uuid:a"), entry("POST", "Patient", patient(), "urn:uuid:a")
            ),
        ),
        400,
    )
    assert snapshot(store) == before


def test_transaction_error_in_a_read_entry_points_at_its_url(fhir: httpx.Client, store: Store) -> None:
    before = snapshot(store)
    b = bundle(entry("POST", "Patient", patient()), entry("GET", "Patient?gender:fuzzy=female"))
    r = send(fhir, b, Prefer="handling=strict")
    body = assert_clean_outcome(r, 400)
    assert body["issue"][0]["expression"] == ["Bundle.entry[1].request.url"]
    assert body["issue"][0]["diagnostics"].startswith("Bundle.entry[1]: Modifier ':fuzzy'")
    assert snapshot(store) == before


def test_transaction_rewrites_full_urls_in_search_urls_exactly(fhir: httpx.Client) -> None:
    """``urn:uuid:1`` is a prefix of ``urn:uuid:10``: only whole values are rewritten."""
    obs = {**bp("x"), "subject": {"reference": "urn:uuid:10"}}
    r = send(
        fhir,
        bundle(
            entry("POST", "Patient", patient(family="Ett"), "urn:uuid:1"),
            entry("POST", "Patient", patient(family="Tio"), "urn:uuid:10"),
            entry("POST", "Observation", obs),
            entry("GET", "Observation?subject=urn:uuid:10"),
            entry("GET", "Observation?subject=urn:uuid:1,urn:uuid:10"),
        ),
    )
    assert r.status_code == 200, r.text
    got = r.json()["entry"]
    oid = ref_id(got[2]["response"]["location"])
    for e in got[3:]:
        assert [x["resource"]["id"] for x in e["resource"]["entry"] if x["search"]["mode"] == "match"] == [oid]
