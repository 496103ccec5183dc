"""The store's write path (``Tx``) on SQLite and PostgreSQL: versions, history, delete markers, index
rows, the Patient compartment key, and one database transaction per ``Store.transaction`` block."""

from __future__ import annotations

import random
import threading
import time
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from nara.fhir.identifiers import make_personal_identity
from nara.fhir.outcome import FhirError
from nara.store.schema import resource, resource_history, sp_string, sp_token
from nara.store.search import search_ids
from nara.store.store import Store
from tests.db_faults import snapshot
from tests.server.test_rest_interactions import bp, patient


def rows(store: Store, table: Any, **where: Any) -> list[Any]:
    with store.engine.connect() as conn:
        q = select(table).where(*(table.c[k] == v for k, v in where.items()))
        return list(conn.execute(q).mappings().all())


def test_create_stores_version_1_with_server_meta(store: Store) -> None:
    with store.transaction() as tx:
        res = tx.create({**patient(), "id": "ignored", "meta": {"versionId": "9", "tag": [{"code": "t"}]}})
    st = res.stored
    assert st is not None and res.created and res.status == 201
    body = st.resource()
    assert body["id"] == st.res_id != "ignored"
    assert body["meta"]["versionId"] == "1" and body["meta"]["tag"] == [{"code": "t"}]
    assert body["meta"]["lastUpdated"].endswith("Z")
    [row] = rows(store, resource, res_id=st.res_id)
    assert row["version"] == 1 and row["method"] == "POST" and not row["deleted"]
    assert rows(store, resource_history) == []


def test_patient_compartment_key_is_stored_on_every_row(store: Store) -> None:
    with store.transaction() as tx:
        p = tx.update("Patient", "pat-1", {**patient(), "id": "pat-1"}).stored
        o = tx.create(bp("pat-1")).stored
        org = tx.create({"resourceType": "Organization", "name": "Region"}).stored
    assert p and o and org
    assert rows(store, resource, res_id="pat-1")[0]["patient_id"] == "pat-1"
    assert rows(store, resource, res_id=o.res_id)[0]["patient_id"] == "pat-1"
    assert rows(store, resource, res_id=org.res_id)[0]["patient_id"] is None
    assert {r["patient_id"] for r in rows(store, sp_token, rid=o.rid)} == {"pat-1"}


def test_update_archives_the_previous_version_and_replaces_index_rows(store: Store) -> None:
    with store.transaction() as tx:
        st = tx.update("Patient", "p", {**patient(family="Före"), "id": "p"}).stored
    assert st is not None
    with store.transaction() as tx:
        res = tx.update("Patient", "p", {**patient(family="Efter"), "id": "p"})
    assert res.status == 200 and not res.created and res.stored and res.stored.version == 2
    [hist] = rows(store, resource_history, res_id="p")
    assert hist["version"] == 1 and hist["method"] == "PUT"
    with store.transaction(write=False) as tx:
        assert tx.vread("Patient", "p", "1").resource()["name"][0]["family"] == "Före"
        assert tx.read("Patient", "p").resource()["name"][0]["family"] == "Efter"
        assert search_ids(tx, "Patient", "family=Före") == []
        assert [m.res_id for m in search_ids(tx, "Patient", "family=Efter")] == ["p"]
    assert {r["value"] for r in rows(store, sp_string, param="family")} == {"efter"}
    assert res.stored.last_updated > st.last_updated


def test_delete_keeps_history_and_reads_as_gone(store: Store) -> None:
    with store.transaction() as tx:
        tx.update("Patient", "p", {**patient(), "id": "p"})
    with store.transaction() as tx:
        res = tx.delete("Patient", "p")
    assert res.status == 204 and res.stored and res.stored.version == 2 and res.stored.deleted
    [row] = rows(store, resource, res_id="p")
    assert row["deleted"] and row["content"] is None and row["index_mask"] == 0
    assert rows(store, sp_token, rid=row["rid"]) == []
    with store.transaction(write=False) as tx:
        with pytest.raises(FhirError) as gone:
            tx.read("Patient", "p")
        assert gone.value.status == 410
        with pytest.raises(FhirError) as marker:
            tx.vread("Patient", "p", "2")
        assert marker.value.status == 410
        assert tx.vread("Patient", "p", "1").resource()["id"] == "p"
    with store.transaction() as tx:
        again = tx.delete("Patient", "p")
        assert again.unchanged and again.stored is None
        back = tx.update("Patient", "p", {**patient(), "id": "p"})
    assert back.status == 201 and back.created and back.stored and back.stored.version == 3


def test_a_failed_block_rolls_back_every_write_in_it(store: Store) -> None:
    with store.transaction() as tx:
        tx.update("Patient", "keep", {**patient(), "id": "keep"})
    before = snapshot(store)
    with pytest.raises(FhirError), store.transaction() as tx:
        tx.create(patient(family="Ny"))
        tx.update("Patient", "keep", {**patient(gender="male"), "id": "keep"})
        tx.delete("Patient", "keep")
        tx.create(patient(gender="wrong"))  # invalid: raises, the block rolls back
    assert snapshot(store) == before


def test_unknown_type_bad_id_and_missing_resource(store: Store) -> None:
    with store.transaction() as tx:
        for call, status in (
            (lambda: tx.read("Nope", "1"), 404),
            (lambda: tx.read("Patient", "x" * 65), 400),
            (lambda: tx.read("Patient", "missing"), 404),
            (lambda: tx.vread("Patient", "missing", "abc"), 404),
            (lambda: tx.delete("Patient", "missing"), 404),
            (lambda: tx.patch("Patient", "missing", []), 404),
            (lambda: tx.update("Patient", "a", {**patient(), "id": "b"}), 400),
            (lambda: tx.update("Patient", "a", patient()), 400),
            (lambda: tx.create([patient()]), 400),
            (lambda: tx.create(bp("x"), "Patient"), 400),
        ):
            with pytest.raises(FhirError) as e:
                call()
            assert e.value.status == status


def test_if_match_and_patch_versions(store: Store) -> None:
    with store.transaction() as tx:
        tx.update("Patient", "p", {**patient(), "id": "p"})
    with store.transaction() as tx:
        patched = tx.patch("Patient", "p", [{"op": "replace", "path": "/gender", "value": "male"}], if_match='W/"1"')
    assert patched.stored and patched.stored.version == 2 and patched.stored.method == "PATCH"
    with store.transaction() as tx, pytest.raises(FhirError) as stale:
        tx.update("Patient", "p", {**patient(), "id": "p"}, if_match='W/"1"')
    assert stale.value.status == 412
    with store.transaction() as tx, pytest.raises(FhirError) as bad:
        tx.update("Patient", "p", {**patient(), "id": "p"}, if_match="nonsense")
    assert bad.value.status == 400


def test_r_id_1_an_identifier_the_version_before_had_is_kept_as_it_was_written(store: Store) -> None:
    """R-ID-1 applies to the numbers a write brings. A number the stored version already has, exactly as written
    (a record stored before writes were normalised: a 10-digit form, one that fails the Luhn check), is kept as it
    is by an edit that leaves it alone: it is not read again on the day of the edit, where a hyphenated
    ``YYMMDD-NNNC`` of a woman who has turned 100 since it was written would become a baby's 12 digits; and the
    edit is not refused for a number its writer did not send. A number the edit brings is checked and normalised."""
    uri = "http://electronichealth.se/identifier/personnummer"
    today = date.today()
    born = (today - timedelta(days=30)).replace(year=today.year - 100)  # turned 100 a month ago
    number = make_personal_identity(born, 482)
    ten = f"{number[2:8]}-{number[8:]}"  # as written when she was 99
    wrong = "191212121213"  # fails the Luhn check
    with store.transaction() as tx:
        tx.validate = False  # stored before writes were normalised
        tx.update("Patient", "elder", {**patient(), "id": "elder", "identifier": [{"system": uri, "value": ten}]})
        tx.update("Patient", "wrong", {**patient(), "id": "wrong", "identifier": [{"system": uri, "value": wrong}]})
        subject = {"identifier": {"system": uri, "value": ten}}
        tx.update("Observation", "o", {**bp("elder"), "id": "o", "subject": subject})
    with store.transaction() as tx:
        tx.patch("Observation", "o", [{"op": "add", "path": "/note", "value": [{"text": "Kontrollerad"}]}])
        tx.patch("Patient", "elder", [{"op": "replace", "path": "/gender", "value": "female"}])
        tx.update(
            "Patient", "wrong", {**patient(family="Ny"), "id": "wrong", "identifier": [{"system": uri, "value": wrong}]}
        )
    with store.transaction() as tx:
        assert tx.read("Observation", "o").resource()["subject"] == subject
        assert tx.read("Patient", "elder").resource()["identifier"] == [{"system": uri, "value": ten}]
        assert tx.read("Patient", "wrong").resource()["identifier"] == [{"system": uri, "value": wrong}]
    # What an edit brings is checked as on any write: a second number, written with its century, is normalised,
    # and a wrong one is refused with nothing changed, also the stored wrong number written in another place.
    added = [
        {
            "op": "add",
            "path": "/identifier/-",
            "value": {"system": "urn:oid:1.2.752.129.2.1.3.1", "value": "19121212-1212"},
        }
    ]
    with store.transaction() as tx:
        tx.patch("Patient", "elder", added)
    with store.transaction() as tx:
        assert tx.read("Patient", "elder").resource()["identifier"] == [
            {"system": uri, "value": ten},
            {"system": uri, "value": "191212121212"},
        ]
    for path, value in (
        ("/identifier/-", {"system": uri, "value": "191212121214"}),
        ("/generalPractitioner", [{"identifier": {"system": uri, "value": wrong}}]),
    ):
        with store.transaction() as tx, pytest.raises(FhirError) as refused:
            tx.patch("Patient", "wrong", [{"op": "add", "path": path, "value": value}])
        assert refused.value.status == 400 and "Luhn" in str(refused.value), path
    with store.transaction() as tx:
        assert tx.read("Patient", "wrong").version == 2  # the refused patches wrote nothing


def test_conditional_delete_of_many_is_bounded(store: Store) -> None:
    with store.transaction() as tx:
        for _ in range(4):
            tx.create(patient(family="Många"))
    store.settings.max_conditional_delete = 3
    before = snapshot(store)
    with store.transaction() as tx, pytest.raises(FhirError) as e:
        tx.conditional_delete("Patient", "family=Många", multiple=True)
    assert e.value.status == 412 and e.value.code == "too-costly"
    assert snapshot(store) == before
    store.settings.max_conditional_delete = 10
    with store.transaction() as tx:
        tx.conditional_delete("Patient", "family=Många", multiple=True)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).where(resource.c.deleted.is_(True))).scalar_one() == 4


def test_concurrent_updates_of_one_resource_lose_nothing(store: Store) -> None:
    """Six threads each read-modify-write the same resource eight times with If-Match: 48 new versions,
    no update lost (a stale version answers 412 and the writer retries) and none duplicated."""
    threads_n, updates = 6, 8
    with store.transaction() as tx:
        tx.update("Patient", "busy", {**patient(), "id": "busy"})
    errors: list[BaseException] = []
    deadline = time.monotonic() + 120

    def worker(n: int) -> None:
        rng = random.Random(n)
        for i in range(updates):
            while True:
                try:
                    with store.transaction() as tx:
                        st = tx.read("Patient", "busy")
                        current = st.resource()
                        tags = [*current.get("meta", {}).get("tag", []), {"code": f"{n}-{i}"}]
                        tx.update("Patient", "busy", {**current, "meta": {"tag": tags}}, if_match=st.etag)
                    break
                except FhirError as e:  # a stale version (412) or lock contention (409/503): retry
                    if e.status not in (409, 412, 503):
                        errors.append(e)
                        return
                    if time.monotonic() > deadline:
                        errors.append(AssertionError(f"worker {n} ran out of time"))
                        return
                    time.sleep(rng.random() * 0.01)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    assert errors == []
    total = threads_n * updates
    with store.transaction(write=False) as tx:
        final = tx.read("Patient", "busy")
    assert final.version == total + 1
    assert sorted(t["code"] for t in final.resource()["meta"]["tag"]) == sorted(
        f"{n}-{i}" for n in range(threads_n) for i in range(updates)
    )
    versions = sorted(r["version"] for r in rows(store, resource_history, res_id="busy"))
    assert versions == list(range(1, total + 1))


def test_a_read_that_writes_its_audit_row_survives_a_commit_by_another_writer_meanwhile(store: Store) -> None:
    """A read transaction that writes at its end (its audit record) while another connection (the audit sealer,
    another request) wants to commit: on SQLite the upgrade of a stale read snapshot would fail at once with
    "database is locked"; the read must take the write lock first, so the other writer waits instead."""
    with store.transaction() as tx:
        first = tx.create(patient(family="Läst")).stored
    other: list[object] = []

    def writer() -> None:
        try:
            with store.transaction() as wtx:
                made = wtx.create(patient(family="Annan")).stored
            other.append(made.res_id if made else None)
        except BaseException as e:  # reported below
            other.append(e)

    with store.transaction(write=False, records_audit=True) as tx:
        assert first is not None
        assert tx.read("Patient", first.res_id).resource()["name"][0]["family"] == "Läst"
        t = threading.Thread(target=writer)
        t.start()
        t.join(timeout=0.5)  # PostgreSQL: the writer has committed; SQLite: it waits for this transaction
        written = tx.create(patient(family="Skriven")).stored  # stands for the read's audit record
    t.join(timeout=60)
    assert written is not None
    assert len(other) == 1 and isinstance(other[0], str), other
    with store.transaction(write=False) as tx:
        assert tx.read("Patient", written.res_id).version == 1
        assert tx.read("Patient", str(other[0])).version == 1
