"""The access log (R-LOG-1..4): records, tamper evidence, the patient's log extract, log review, and a
server killed mid-load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import event, select, text
from sqlalchemy.engine import Engine

from nara.config import Settings
from nara.security import audit
from nara.security.actors import SYSTEM, Actor
from nara.security.schema import audit_access, audit_event, audit_review, drop_guard_statements, install_guards
from nara.server.app import create_app
from nara.store.store import Store
from tests.conftest import Backend, LiveServer, _free_port, token, wait_healthy
from tests.security.region import AVD, HSV, JSON, PNR, VC, Region, actor, assignment, build_region, consent, observation


@pytest.fixture
def region(fhir: httpx.Client) -> Region:
    reg = build_region(fhir)
    reg.post(observation(reg.patients["anna"], "29463-7", 80.0), reg.staff["vc"].token())
    return reg


def events(store: Store, **where: Any) -> list[Any]:
    with store.engine.connect() as conn:
        stmt = select(audit_event)
        for k, v in where.items():
            stmt = stmt.where(audit_event.c[k] == v)
        return list(conn.execute(stmt.order_by(audit_event.c.seq)).all())


def accesses(store: Store, seq: int) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(audit_access).where(audit_access.c.seq == seq)).all())


def test_r_log_1_every_read_records_who_where_what_whose_and_how(region: Region, store: Store) -> None:
    vc = region.staff["vc"]
    with region.as_(vc.token()) as c:
        assert c.get(f"Observation?patient={region.patients['anna']}").status_code == 200
    ev = events(store, user_id=vc.hsa, action="search")[-1]
    assert ev.outcome == "permit" and ev.actor_kind == "staff"
    assert (ev.assignment_id, ev.unit_id, ev.provider_id) == (vc.assignment, VC, "SE2321000032-REG")
    assert ev.purpose == "Vård och behandling"
    assert ev.recorded_at is not None and "Observation" in ev.request
    acc = accesses(store, ev.seq)
    assert [(a.patient_id, a.owner_org, a.owner_unit, a.access_type) for a in acc] == [
        (region.patients["anna"], "SE2321000032-REG", VC, "own-unit")
    ]


def test_r_log_1_a_read_by_id_writes_exactly_one_record_with_its_access(region: Region, store: Store) -> None:
    vc = region.staff["vc"]
    obs = region.post(observation(region.patients["anna"], "8867-4", 64), vc.token())
    before = len(events(store))
    with region.as_(vc.token()) as c:
        assert c.get(f"Observation/{obs['id']}").status_code == 200
    new = events(store)[before:]
    assert [(e.action, e.outcome, e.resource_type, e.resource_id, e.patient_count) for e in new] == [
        ("read", "permit", "Observation", obs["id"], 1)
    ]
    assert new[0].request == f"GET Observation/{obs['id']}" and new[0].unit_id == VC and new[0].flags is None
    acc = [(a.patient_id, a.owner_org, a.owner_unit, a.access_type, a.protected) for a in accesses(store, new[0].seq)]
    assert acc == [(region.patients["anna"], "SE2321000032-REG", VC, "own-unit", False)]


def test_r_log_1_a_conditional_read_answered_not_modified_is_logged_with_its_access(
    region: Region, store: Store
) -> None:
    vc = region.staff["vc"]
    obs = region.post(observation(region.patients["anna"], "8867-4", 64), vc.token())
    with region.as_(vc.token()) as c:
        etag = c.get(f"Observation/{obs['id']}").headers["ETag"]
        before = len(events(store))
        assert c.get(f"Observation/{obs['id']}", headers={"If-None-Match": etag}).status_code == 304
    new = events(store)[before:]
    assert [(e.action, e.resource_id, e.patient_count) for e in new] == [("read", obs["id"], 1)]
    assert [(a.patient_id, a.access_type) for a in accesses(store, new[0].seq)] == [
        (region.patients["anna"], "own-unit")
    ]


def test_r_log_1_a_read_of_a_missing_or_deleted_resource_writes_no_read_record(region: Region, store: Store) -> None:
    vc = region.staff["vc"]
    obs = region.post(observation(region.patients["anna"], "8867-4", 64), vc.token())
    with region.as_(vc.token()) as c:
        assert c.delete(f"Observation/{obs['id']}").status_code in (200, 204)
        before = len(events(store))
        assert c.get(f"Observation/{obs['id']}").status_code == 410
        assert c.get("Observation/no-such-observation").status_code == 404
    assert events(store)[before:] == []


def test_r_log_1_on_postgresql_a_read_by_id_writes_its_record_in_the_reading_statement(
    region: Region, store: Store
) -> None:
    """One statement reads the resource and writes its record: no round trip of its own, nothing to lose."""
    if not store.postgres or store.read_engine is None:
        pytest.skip("reads run on PostgreSQL's autocommit read pool")
    vc = region.staff["vc"]
    obs = region.post(observation(region.patients["anna"], "8867-4", 64), vc.token())
    seen: list[str] = []

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        # The engine the executing request reads with: the event loop's where the server runs reads there.
        if conn.engine is store.read_engine:
            seen.append(sql)

    with region.as_(vc.token()) as c:
        c.get("metadata")  # the token's actor is resolved and cached before statements are counted
        event.listen(Engine, "before_cursor_execute", statement)
        try:
            assert c.get(f"Observation/{obs['id']}").status_code == 200
        finally:
            event.remove(Engine, "before_cursor_execute", statement)
    writing = [sql for sql in seen if "audit_event" in sql]
    assert len(writing) == 1 and "FROM resource" in writing[0] and "INSERT INTO audit_access" in writing[0]
    assert len([sql for sql in seen if "FROM resource" in sql]) == 1


def test_r_log_1_a_search_logs_the_rows_it_shows_page_by_page_one_record_per_request(
    region: Region, store: Store
) -> None:
    """The page statement fetches one row more than it shows (to know whether a next page exists): that row's
    owner must not appear in the log. Paging, empty pages and protected identity are recorded the same way,
    one record per request."""
    anna, hidden = region.patients["anna"], region.patients["hidden"]
    region.post(observation(anna, "8867-4", 64), region.staff["avdsjf"].token())  # newer, owned by the ward
    qa = region.staff["qa"]  # quality assurance: every row of the care provider, typed "quality"

    def owners(bundle: dict[str, Any]) -> list[tuple[str, str | None, str]]:
        ev = events(store, user_id=qa.hsa, action="search")[-1]
        assert ev.request.startswith("GET Observation?patient=")
        return sorted((a.patient_id, a.owner_unit, a.access_type) for a in accesses(store, ev.seq))

    with region.as_(qa.token()) as c:
        before = len(events(store, user_id=qa.hsa, action="search"))
        page1 = c.get(f"Observation?patient={anna}&_sort=_lastUpdated&_count=1").json()
        assert [e["resource"]["code"]["coding"][0]["code"] for e in page1["entry"]] == ["29463-7"]
        assert owners(page1) == [(anna, VC, "quality")]  # not the ward's row fetched to see a next page

        next_url = next(link["url"] for link in page1["link"] if link["relation"] == "next")
        page2 = c.get(next_url).json()
        assert [e["resource"]["code"]["coding"][0]["code"] for e in page2["entry"]] == ["8867-4"]
        assert owners(page2) == [(anna, AVD, "quality")]

        both = c.get(f"Observation?patient={anna}&_sort=_lastUpdated&_count=2").json()
        assert owners(both) == [(anna, AVD, "quality"), (anna, VC, "quality")]
        assert events(store, user_id=qa.hsa, action="search")[-1].patient_count == 1

        empty = c.get(f"Observation?patient={anna}&code=no-such-code").json()
        assert empty["total"] == 0 and owners(empty) == []
        assert events(store, user_id=qa.hsa, action="search")[-1].patient_count == 0

    assert len(events(store, user_id=qa.hsa, action="search")) == before + 4  # one record per request
    vc = region.staff["vc"]
    with region.as_(vc.token()) as c:
        assert c.get(f"Patient?_id={hidden}").json()["total"] == 1
    ev = events(store, user_id=vc.hsa, action="search")[-1]
    assert ev.flags == "protected-identity" and ev.patient_count == 1
    assert [(a.patient_id, a.protected) for a in accesses(store, ev.seq)] == [(hidden, True)]


def test_r_log_1_writes_are_logged_in_the_same_transaction(region: Region, store: Store) -> None:
    created = region.post(observation(region.patients["anna"], "8867-4", 72), region.staff["vc"].token())
    ev = events(store, action="create", resource_id=created["id"])
    assert len(ev) == 1 and ev[0].user_id == region.staff["vc"].hsa
    # A write refused by the database leaves neither the data nor its log record.
    before = len(events(store))
    bad = observation(region.patients["anna"], "8867-4", 72)
    bad["status"] = "not-a-status"
    r = region.as_(region.staff["vc"].token()).post("Observation", content=orjson.dumps(bad), headers=JSON)
    assert r.status_code == 400
    assert len(events(store)) == before


def test_r_log_1_a_second_app_on_the_same_store_logs_each_write_once(
    region: Region, store: Store, live_server: LiveServer
) -> None:
    create_app(Settings(database_url=live_server.settings.database_url), store)  # e.g. a second worker app
    created = region.post(observation(region.patients["anna"], "8867-4", 72), region.staff["vc"].token())
    ev = events(store, action="create", resource_id=created["id"])
    assert len(ev) == 1 and ev[0].user_id == region.staff["vc"].hsa


def test_r_log_2_records_cannot_be_changed_or_deleted(region: Region, store: Store) -> None:
    seq = events(store)[-1].seq
    for stmt in (
        f"UPDATE audit_event SET user_id = 'x' WHERE seq = {seq}",
        f"DELETE FROM audit_event WHERE seq = {seq}",
        f"DELETE FROM audit_access WHERE seq = {seq}",
    ):
        with (
            pytest.raises(Exception, match="audit records cannot"),
            store.engine.connect().execution_options(nara_write=True) as conn,
            conn.begin(),
        ):
            conn.exec_driver_sql(stmt)
    assert region.fhir.post("AuditEvent", content=b'{"resourceType":"AuditEvent"}', headers=JSON).status_code == 405
    assert region.fhir.delete(f"AuditEvent/{seq}").status_code == 405


def test_r_log_2_the_log_cannot_be_truncated(region: Region, store: Store, backend: Backend) -> None:
    """TRUNCATE fires no row trigger; on PostgreSQL a statement trigger refuses it (SQLite has no TRUNCATE: its
    DELETE without WHERE meets the row triggers above)."""
    if backend.name != "postgres":
        pytest.skip("TRUNCATE is a PostgreSQL statement")
    before = len(events(store))
    for table in ("audit_event, audit_access", "audit_access", "audit_review"):
        with (
            pytest.raises(Exception, match="audit records cannot be truncated"),
            store.engine.connect().execution_options(nara_write=True) as conn,
            conn.begin(),
        ):
            conn.exec_driver_sql(f"TRUNCATE {table}")
    assert len(events(store)) == before > 0


def test_r_log_2_only_sealing_may_set_a_records_chain_columns_once(region: Region, store: Store) -> None:
    """The one change the guard lets through is the sealer's: the chain columns of an unsealed record, set once,
    nothing else with them. Resealing, or sealing while changing a field, is refused, as is changing an access."""
    audit.seal_all(store.engine)
    sealed = events(store)[-1]
    refused = [
        f"UPDATE audit_event SET chain_seq = chain_seq + 1000000 WHERE seq = {sealed.seq}",
        f"UPDATE audit_event SET hash = 'x' WHERE seq = {sealed.seq}",
        f"UPDATE audit_access SET patient_id = 'someone-else' WHERE seq = {sealed.seq}",
    ]
    for stmt in refused:
        with (
            pytest.raises(Exception, match="audit records cannot be changed"),
            store.engine.connect().execution_options(nara_write=True) as conn,
            conn.begin(),
        ):
            conn.exec_driver_sql(stmt)
    rec = audit.AuditRecord("read", "permit", SYSTEM, "Observation", "o1", "GET /fhir/Observation/o1")
    with store.engine.connect().execution_options(nara_write=True) as conn:
        trans = conn.begin()  # rolled back at the end: the hand-made chain values must not stay
        # A record not yet sealed (uncommitted, so no sealer sees it): sealing it while changing a field is refused.
        seq = audit.record(conn, rec)
        with pytest.raises(Exception, match="audit records cannot be changed"), conn.begin_nested():
            conn.exec_driver_sql(
                f"UPDATE audit_event SET chain_seq = 999999999, prev_hash = 'p', hash = 'h', user_id = 'x' "
                f"WHERE seq = {seq}"
            )
        # Sealing it alone goes through, once.
        conn.exec_driver_sql(
            f"UPDATE audit_event SET chain_seq = 999999999, prev_hash = 'p', hash = 'h' WHERE seq = {seq}"
        )
        with pytest.raises(Exception, match="audit records cannot be changed"), conn.begin_nested():
            conn.exec_driver_sql(f"UPDATE audit_event SET chain_seq = 999999998 WHERE seq = {seq}")
        trans.rollback()


def _unguarded(store: Store, sql: str) -> None:
    with store.engine.connect().execution_options(nara_write=True) as conn, conn.begin():
        for stmt in drop_guard_statements(conn.dialect.name):
            conn.exec_driver_sql(stmt)
        conn.exec_driver_sql(sql)
        install_guards(conn, 1827)


def test_r_log_2_hash_chain_detects_altered_deleted_and_inserted_records(region: Region, store: Store) -> None:
    audit.seal_all(store.engine)
    report = audit.verify(store.engine)
    assert report.ok and report.checked == len(events(store)) and report.unsealed == 0
    victim = events(store)[3]
    _unguarded(store, f"UPDATE audit_event SET user_name = 'someone else' WHERE seq = {victim.seq}")
    bad = audit.verify(store.engine)
    assert not bad.ok and bad.first_bad_seq == victim.seq and "altered" in (bad.problem or "")
    _unguarded(store, f"UPDATE audit_event SET user_name = {_sql(victim.user_name)} WHERE seq = {victim.seq}")
    assert audit.verify(store.engine).ok
    _unguarded(store, f"DELETE FROM audit_event WHERE seq = {victim.seq}")
    gone = audit.verify(store.engine)
    assert not gone.ok and "deleted" in (gone.problem or "")


def test_r_log_2_inserted_record_breaks_the_chain(region: Region, store: Store) -> None:
    audit.seal_all(store.engine)
    last = events(store)[-1]
    _unguarded(
        store,
        "INSERT INTO audit_event (recorded_at, action, outcome, actor_kind, patient_count, chain_seq, "
        f"prev_hash, hash) VALUES ('2026-01-01 00:00:00', 'read', 'permit', 'staff', 0, {last.chain_seq + 1}, "
        f"'{last.hash}', '{'f' * 64}')",
    )
    report = audit.verify(store.engine)
    assert not report.ok and "altered" in (report.problem or "")


def test_r_log_2_the_chain_covers_the_accesses_of_records_far_apart_in_number(region: Region, store: Store) -> None:
    """The sealer and the verifier read access rows by runs of nearby record numbers; a record far from the
    others (numbers are not dense: a record can commit late, sequences skip) must be hashed with its own."""
    audit.seal_all(store.engine)
    last = events(store)[-1]
    far = last.seq + 500
    with store.engine.connect().execution_options(nara_write=True) as conn, conn.begin():
        conn.execute(
            audit_event.insert().values(
                seq=far, recorded_at=last.recorded_at, action="read", outcome="permit", actor_kind="staff",
                user_id="SE-far", patient_count=1,
            )
        )  # fmt: skip
        conn.execute(
            audit_access.insert().values(
                seq=far, recorded_at=last.recorded_at, patient_id=region.patients["anna"], access_type="own-unit",
                protected=False,
            )
        )  # fmt: skip
    with region.as_(region.staff["vc"].token()) as c:
        assert c.get(f"Observation?patient={region.patients['anna']}").status_code == 200  # one more, after the gap
    audit.seal_all(store.engine)  # (the server's own sealer may have sealed some of them already)
    report = audit.verify(store.engine)
    assert report.ok and report.unsealed == 0 and events(store, seq=far)[0].chain_seq is not None
    _unguarded(store, f"UPDATE audit_access SET access_type = 'emergency' WHERE seq = {far}")
    report = audit.verify(store.engine)
    assert not report.ok and report.first_bad_seq == far and "altered" in (report.problem or "")


def test_r_log_2_the_chain_covers_the_consent_an_access_names(region: Region, store: Store) -> None:
    """The Consent an access was reached through is part of the sealed record: naming another one, or none, after
    sealing is an alteration."""
    anna = region.patients["anna"]
    given = region.post(
        consent(anna, "svod-consent", {"type": "permit", "actor": [actor("IRCP", f"Organization/{HSV}")]})
    )
    nurse = region.staff["hsv"]  # the observation is the health centre's: another provider's data for her
    obs = region.post(observation(anna, "8867-4", 66), region.staff["vc"].token())["id"]
    with region.as_(nurse.token()) as c:
        assert c.get(f"Observation/{obs}").status_code == 200
    read = events(store, user_id=nurse.hsa, action="read")[-1]
    assert [(a.access_type, a.assertion_id) for a in accesses(store, read.seq)] == [("svod", given["id"])]
    audit.seal_all(store.engine)
    assert audit.verify(store.engine).ok
    for forged in ("'some-other-consent'", "NULL"):
        _unguarded(store, f"UPDATE audit_access SET assertion_id = {forged} WHERE seq = {read.seq}")
        report = audit.verify(store.engine)
        assert not report.ok and report.first_bad_seq == read.seq and "altered" in (report.problem or "")
    _unguarded(store, f"UPDATE audit_access SET assertion_id = '{given['id']}' WHERE seq = {read.seq}")
    assert audit.verify(store.engine).ok


def test_r_log_2_the_chain_covers_the_time_the_log_extract_shows_for_an_access(region: Region, store: Store) -> None:
    """The patient's log extract lists an access at its access row's time; moving that time (out of the period
    the patient asks about, say) is an alteration ``nara audit verify`` reports, like any other."""
    anna = region.patients["anna"]
    with region.as_(region.staff["vc"].token()) as c:
        assert c.get(f"Observation?patient={anna}").status_code == 200
    audit.seal_all(store.engine)
    assert audit.verify(store.engine).ok
    victim = events(store, user_id=region.staff["vc"].hsa, action="search")[-1]
    assert [a.recorded_at for a in accesses(store, victim.seq)] == [victim.recorded_at]
    _unguarded(store, f"UPDATE audit_access SET recorded_at = '2019-01-01 00:00:00' WHERE seq = {victim.seq}")
    with store.engine.connect() as conn:
        shown = [r.time_utc for r in audit.extract(conn, anna)]
    assert victim.recorded_at not in shown  # the patient would no longer see the access at its time
    report = audit.verify(store.engine)
    assert not report.ok and report.first_bad_seq == victim.seq and "altered" in (report.problem or "")


def _chain(store: Store) -> dict[int, str]:
    """The sealed chain as ``nara audit verify`` anchors it: position -> hash."""
    return {r.chain_seq: r.hash for r in events(store) if r.chain_seq is not None}


def test_r_log_2_an_anchored_head_reveals_a_chain_rewritten_or_cut_short(region: Region, store: Store) -> None:
    """A chain rehashed from an altered record, or with its last records deleted, is consistent in itself: only a
    head kept outside the database (an anchor) shows it."""
    audit.seal_all(store.engine)
    report = audit.verify(store.engine)
    chain = _chain(store)
    head = len(chain)
    assert report.ok and report.head_hash == chain[head] and head >= 6
    middle = head // 2
    anchors = {middle: chain[middle], head: chain[head]}
    assert audit.verify(store.engine, anchors=anchors).ok
    # Rewritten: a record in the middle altered and everything from it sealed again, as a database superuser could.
    _unguarded(
        store,
        f"UPDATE audit_event SET user_name = CASE WHEN chain_seq = {middle} THEN 'someone else' ELSE user_name END, "
        f"chain_seq = NULL, prev_hash = NULL, hash = NULL WHERE chain_seq >= {middle}",
    )
    audit.seal_all(store.engine)
    assert audit.verify(store.engine).ok  # nothing to see without an anchor
    rewritten = _chain(store)
    assert len(rewritten) == head and rewritten[middle - 1] == chain[middle - 1] and rewritten[middle] != chain[middle]
    bad = audit.verify(store.engine, anchors=anchors)
    assert not bad.ok and bad.checked == middle - 1 and "rewritten" in (bad.problem or "")
    assert audit.verify(store.engine, anchors={middle - 1: chain[middle - 1]}).ok  # the part before it still holds
    # Cut short: the last two records deleted.
    _unguarded(
        store, f"DELETE FROM audit_access WHERE seq IN (SELECT seq FROM audit_event WHERE chain_seq > {head - 2})"
    )
    _unguarded(store, f"DELETE FROM audit_event WHERE chain_seq > {head - 2}")
    assert audit.verify(store.engine).ok
    cut = audit.verify(store.engine, anchors={head: rewritten[head]})
    assert not cut.ok and cut.checked == head - 2 and "deleted from its end" in (cut.problem or "")


def test_r_log_2_a_chain_archived_past_retention_verifies_from_its_last_archived_record(
    region: Region, store: Store
) -> None:
    """A region may delete records past the retention period (its archiving); the chain left then starts later and
    is verified from the anchor of the last archived record, which a daily head anchor cannot stand in for."""
    audit.seal_all(store.engine)
    chain = _chain(store)
    head, cut = len(chain), 3
    assert head > cut + 2
    first_kept = f"SELECT seq FROM audit_event WHERE chain_seq <= {cut}"
    _unguarded(store, f"DELETE FROM audit_access WHERE seq IN ({first_kept})")
    _unguarded(store, f"DELETE FROM audit_event WHERE chain_seq <= {cut}")
    plain = audit.verify(store.engine)
    assert not plain.ok and "position 1 is missing" in (plain.problem or "") and "archived" in (plain.problem or "")
    assert not audit.verify(store.engine, anchors={cut: chain[cut]}).ok  # a head anchor is no archiving statement
    report = audit.verify(store.engine, archived_to=(cut, chain[cut]))
    assert report.ok and (report.archived, report.checked) == (cut, head - cut)
    assert report.head_anchor == f"{head}:{chain[head]}"
    # Anchors of archived positions are not checked; later ones are.
    assert audit.verify(store.engine, anchors={2: chain[2], head: chain[head]}, archived_to=(cut, chain[cut])).ok
    wrong = audit.verify(store.engine, archived_to=(cut, "0" * 64))
    assert not wrong.ok and "does not follow its predecessor" in (wrong.problem or "")
    short = audit.verify(store.engine, archived_to=(cut - 1, chain[cut - 1]))  # one record more is gone
    assert not short.ok and f"position {cut} is missing" in (short.problem or "")


def test_r_log_2_nara_audit_verify_checks_anchors_and_prints_the_next_one(region: Region, backend: Backend) -> None:
    audit.seal_all(backend.store.engine)
    cli = [sys.executable, "-m", "nara.cli", "audit", "verify", "--database-url", backend.url]
    first = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and "intact" in first.stdout, first.stdout + first.stderr
    printed = first.stdout.split()[-1]
    position, digest = audit.parse_anchor(printed)
    assert _chain(backend.store)[position] == digest
    held = subprocess.run([*cli, "--anchor", printed], capture_output=True, text=True, timeout=120)
    assert held.returncode == 0 and "1 anchors held" in held.stdout, held.stdout + held.stderr
    wrong = f"{position}:{'0' * 64}"
    broken = subprocess.run([*cli, "--anchor", wrong], capture_output=True, text=True, timeout=120)
    assert broken.returncode == 3 and "anchored hash" in broken.stderr, broken.stdout + broken.stderr
    beyond = subprocess.run([*cli, "--anchor", f"{position + 100}:{digest}"], capture_output=True, text=True)
    assert beyond.returncode == 3 and "deleted from its end" in beyond.stderr, beyond.stdout + beyond.stderr
    for option, malformed in (("--anchor", "12"), ("--anchor", "x:" + digest), ("--anchor", "0:" + digest)):
        refused = subprocess.run([*cli, option, malformed], capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "is not an anchor" in refused.stderr, malformed
        assert "Traceback" not in refused.stderr
    refused = subprocess.run([*cli, "--archived-to", "5:abc"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "64 hexadecimal digits" in refused.stderr, refused.stderr
    first = _chain(backend.store)[1]
    not_archived = subprocess.run([*cli, "--archived-to", f"1:{first}"], capture_output=True, text=True, timeout=120)
    assert not_archived.returncode == 3 and "not archived to position 1" in not_archived.stderr, not_archived.stderr


def _sql(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def test_r_log_3_patient_gets_log_extract_with_unit_time_and_name(region: Region, store: Store) -> None:
    anna = region.patients["anna"]
    with region.as_(region.staff["vc"].token()) as c:
        c.get(f"Observation?patient={anna}")
    with region.as_(token(region.pnr["anna"], "citizen")) as c:
        r = c.get(f"Patient/{anna}/$log-extract")
        assert r.status_code == 200, r.text
        entries = [e["resource"] for e in r.json()["entry"]]
        staff_reads = [e for e in entries if any(a.get("who", {}).get("display") == "Vc Svensson" for a in e["agent"])]
        assert staff_reads, entries
        ev = staff_reads[0]
        assert any(a.get("who", {}).get("display") == "Vårdcentralen Kumla" for a in ev["agent"])
        assert ev["recorded"].endswith("Z")
        assert c.get(f"Patient/{region.patients['child']}/$log-extract").status_code == 403
    guardian = token(region.pnr["guardian"], "proxy", patient=region.pnr["child"])
    with region.as_(guardian) as c:
        assert c.get(f"Patient/{region.patients['child']}/$log-extract").status_code == 200
    # Asking for the extract is itself logged, as the patient's or the guardian's own access.
    asked = events(store, action="log-extract")
    assert [[a.access_type for a in accesses(store, e.seq)] for e in asked] == [["citizen"], ["proxy"]]


def test_r_log_1_an_operation_that_logs_itself_leaves_one_record_not_two(region: Region, store: Store) -> None:
    """$log-extract, $emergency-access and $break-block write their own record (their action, access type,
    reason and assertion); the gate's generic "operation" record beside it said the same thing again, without them."""
    anna = region.patients["anna"]
    after = max((e.seq for e in events(store)), default=0)

    def new_actions() -> list[str]:
        nonlocal after
        found = [e for e in events(store) if e.seq > after]
        after = max((e.seq for e in found), default=after)
        return sorted(e.action for e in found)

    with region.as_(token(region.pnr["anna"], "citizen")) as c:
        assert c.get(f"Patient/{anna}/$log-extract").status_code == 200
    assert new_actions() == ["log-extract"]
    with region.as_(region.staff["audit"].token()) as c:
        assert c.get(f"Patient/{anna}/$log-extract").status_code == 200
    assert new_actions() == ["log-extract"]
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "reason", "valueString": "Medvetslös"},
            {"name": "consentUnobtainable", "valueBoolean": True},
        ],
    }
    with region.as_(region.staff["hsv"].token()) as c:
        r = c.post(f"Patient/{anna}/$emergency-access", content=orjson.dumps(params), headers=JSON)
        assert r.status_code == 200, r.text
    assert new_actions() == ["create", "emergency-access"]  # the assertion's Consent, and the access itself
    with region.as_(region.staff["vc"].token()) as c:
        assert c.get(f"Patient/{anna}/$everything").status_code == 200  # no record of its own: the gate's
    assert new_actions() == ["operation"]


def test_r_log_4_review_flags_criteria_and_stores_completed_review(region: Region, store: Store) -> None:
    anna, hidden = region.patients["anna"], region.patients["hidden"]
    # own record: the staff member "self" has Anna's personnummer; same surname and address too.
    with region.as_(region.staff["self"].token()) as c:
        c.get(f"Observation?patient={anna}")
    # a colleague's record: vc reads Anna, whose personnummer belongs to staff member "self".
    with region.as_(region.staff["vc"].token()) as c:
        c.get(f"Patient/{anna}")
        c.get(f"Patient/{hidden}")  # protected identity
    # emergency access at the municipality
    with region.as_(region.staff["hsv"].token()) as c:
        params = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "reason", "valueString": "Akut försämring"},
                {"name": "consentUnobtainable", "valueBoolean": True},
            ],
        }
        assert (
            c.post(f"Patient/{anna}/$emergency-access", content=orjson.dumps(params), headers=JSON).status_code == 200
        )
        c.get(f"Observation?patient={anna}")
    auditor = region.staff["audit"].token()
    with region.as_(auditor) as c:
        r = c.get("$log-review", params={"vip": hidden, "sampleRate": "0", "seed": "1"})
        assert r.status_code == 200, r.text
        flagged: dict[str, set[str]] = {}
        for e in r.json()["entry"]:
            res = e["resource"]
            flags = next(x["valueString"] for x in res["extension"] if x["url"].endswith("review-flags"))
            who = next(a["who"]["identifier"]["value"] for a in res["agent"] if a.get("requestor"))
            flagged.setdefault(who, set()).update(flags.split(","))
        assert {"own-record", "same-surname", "same-address"} <= flagged[region.staff["self"].hsa]
        assert {"colleague-record", "protected-identity", "vip"} <= flagged[region.staff["vc"].hsa]
        assert region.staff["hsv"].hsa not in flagged  # the municipality's nurse: her provider reviews her
        seqs = ",".join(str(e["resource"]["id"]) for e in r.json()["entry"][:3])
        done = completed_review(seqs, "Egen journal öppnad", "Samtal med chef")
        assert c.post("$log-review", content=orjson.dumps(done), headers=JSON).status_code == 201
        # The log is readable as AuditEvent by the auditor, not by others.
        assert c.get(f"AuditEvent?patient={anna}").json()["total"] > 0
    with region.as_(region.staff["auditkom"].token()) as c:  # the municipality's auditor
        r = c.get("$log-review", params={"sampleRate": "0", "seed": "1"})
        flagged_kom = {
            next(a["who"]["identifier"]["value"] for a in e["resource"]["agent"] if a.get("requestor")): next(
                x["valueString"] for x in e["resource"]["extension"] if x["url"].endswith("review-flags")
            )
            for e in r.json()["entry"]
        }
        assert "emergency" in flagged_kom[region.staff["hsv"].hsa]
        assert region.staff["vc"].hsa not in flagged_kom
    with region.as_(region.staff["vc"].token()) as c:
        assert c.get("AuditEvent").status_code == 403
        assert c.get("$log-review").status_code == 403
    with store.engine.connect() as conn:
        reviews = conn.execute(select(audit_review)).all()
    assert len(reviews) == 1 and reviews[0].finding == "Egen journal öppnad"
    assert reviews[0].reviewer == region.staff["audit"].hsa


def completed_review(events: str, finding: str, action: str) -> dict[str, Any]:
    """The Parameters of ``POST $log-review`` that store a completed review of the records ``events``."""
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "events", "valueString": events},
            {"name": "finding", "valueString": finding},
            {"name": "action", "valueString": action},
        ],
    }


def reading_bundle(kind: str, url: str) -> dict[str, Any]:
    """A batch or transaction (``kind``) of one GET of ``url``."""
    return {"resourceType": "Bundle", "type": kind, "entry": [{"request": {"method": "GET", "url": url}}]}


def test_r_log_1_a_denial_names_the_patient_and_a_refused_batch_entry_is_one_too(region: Region, store: Store) -> None:
    anna = region.patients["anna"]
    obs = region.post(observation(anna, "8867-4", 71), region.staff["vc"].token())["id"]
    tom = region.staff["tom"]  # no care relationship with Anna
    batch = reading_bundle("batch", f"Observation/{obs}")
    with region.as_(tom.token()) as c:
        assert c.get(f"Observation/{obs}").status_code == 403
        answered = c.post("", content=orjson.dumps(batch), headers=JSON).json()
        assert answered["entry"][0]["response"]["status"].startswith("403")
        assert c.get(f"Patient/{anna}").status_code == 403
    denials = events(store, user_id=tom.hsa, outcome="deny")
    assert [(d.action, d.resource_id) for d in denials] == [("read", obs), ("read", obs), ("read", anna)]
    for d in denials:
        assert [(a.patient_id, a.access_type) for a in accesses(store, d.seq)] == [(anna, "denied")]
        assert d.patient_count == 1 and "not allowed" in (d.reason or "")


def test_r_log_1_a_refused_search_names_every_patient_it_asked_about(region: Region, store: Store) -> None:
    """A refused search's denial names the patients as a permitted search's record would: each of a list, and
    those of a form-encoded POST _search, so that a log review of each patient finds the attempt."""
    anna, child = region.patients["anna"], region.patients["child"]
    read_only = region.staff["vc"].token(scope="user/Observation.r")  # reads by id, may not search
    with region.as_(read_only) as c:
        assert c.get(f"Observation?patient={anna},Patient/{child}").status_code == 403
        form = c.post(
            "Observation/_search",
            content=f"subject=Patient/{child}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 403
    denials = events(store, user_id=region.staff["vc"].hsa, outcome="deny")
    assert [d.action for d in denials] == ["search", "search"]
    named = [sorted((a.patient_id, a.access_type) for a in accesses(store, d.seq)) for d in denials]
    assert named == [sorted([(anna, "denied"), (child, "denied")]), [(child, "denied")]]
    assert [d.patient_count for d in denials] == [2, 1]


def named(store: Store, seq: int) -> list[tuple[str, str]]:
    return sorted((a.patient_id, a.access_type) for a in accesses(store, seq))


def test_r_log_1_a_count_names_the_patient_of_a_compartment_and_no_one_a_modifier_excludes(
    region: Region, store: Store
) -> None:
    """A count about a patient tells about her data, so its record names her, also when the search names her by
    its path (``Patient/X/Observation``) or by her personnummer (``subject.identifier``). ``_id:not=X`` and
    ``patient:missing=true`` are not about X or "true"."""
    anna = region.patients["anna"]
    vc = region.staff["vc"]
    with region.as_(vc.token()) as c:
        assert c.get(f"Patient/{anna}/Observation", params={"_summary": "count"}).json()["total"] >= 1
        compartment = events(store, user_id=vc.hsa, action="search")[-1]
        assert c.get("Patient", params={"_id:not": anna, "_summary": "count"}).json()["total"] >= 1
        excluded = events(store, user_id=vc.hsa, action="search")[-1]
        assert c.get("Observation", params={"patient:missing": "true", "_summary": "count"}).status_code == 200
        missing = events(store, user_id=vc.hsa, action="search")[-1]
        by_pnr = {"subject.identifier": f"{PNR}|{region.pnr['anna']}", "_summary": "count"}
        assert c.get("Observation", params=by_pnr).json()["total"] >= 1
        identified = events(store, user_id=vc.hsa, action="search")[-1]
    assert named(store, identified.seq) == [(anna, "count")]
    assert named(store, compartment.seq) == [(anna, "count")]
    assert named(store, excluded.seq) == []
    assert named(store, missing.seq) == []


def test_r_log_1_a_refused_create_and_a_refused_transaction_entry_name_their_patient(
    region: Region, store: Store
) -> None:
    """A refused write names the patient its body is about (a create, an update-as-create), and a refused entry of
    a transaction the patient that entry tried to reach, as a refused batch entry does."""
    anna = region.patients["anna"]
    obs = events(store, action="create")[-1].resource_id  # the fixture's Observation about Anna
    tom = region.staff["tom"]  # no care relationship with Anna
    transaction = reading_bundle("transaction", f"Observation/{obs}")
    with region.as_(tom.token()) as c:
        assert (
            c.post("Observation", content=orjson.dumps(observation(anna, "8867-4", 60)), headers=JSON).status_code
            == 403
        )
        new = {**observation(anna, "8867-4", 61), "id": "tom-new-1"}
        assert c.put("Observation/tom-new-1", content=orjson.dumps(new), headers=JSON).status_code == 403
        assert c.post("", content=orjson.dumps(transaction), headers=JSON).status_code == 403
    denials = events(store, user_id=tom.hsa, outcome="deny")
    assert [d.action for d in denials] == ["post", "put", "read"]
    assert [named(store, d.seq) for d in denials] == [[(anna, "denied")]] * 3


def test_r_log_1_a_transactions_conditional_create_that_finds_its_match_is_a_logged_read(
    region: Region, store: Store
) -> None:
    """A conditional create that finds its match writes nothing and answers where the match is stored: a read of
    it, logged as one (with the protected-identity flag of a protected patient, R-ID-3), in a transaction too."""
    hidden = region.patients["hidden"]
    vc = region.staff["vc"]
    pnr = region.pnr["hidden"]
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "identifier": [{"system": PNR, "value": pnr}]},
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={PNR}|{pnr}"},
            }
        ],
    }
    with region.as_(vc.token()) as c:
        answer = c.post("", content=orjson.dumps(transaction), headers=JSON)
        assert answer.status_code == 200, answer.text
        assert answer.json()["entry"][0]["response"]["location"].startswith(f"Patient/{hidden}/")
    read = events(store, user_id=vc.hsa, action="read")[-1]
    assert named(store, read.seq) == [(hidden, "own-unit")]
    assert "protected-identity" in (read.flags or "")


def test_r_log_1_an_auditors_log_extract_is_a_log_review_and_the_log_follows_smart_scopes(
    region: Region, store: Store
) -> None:
    """An auditor shown a patient's log extract reviewed her log (access type log-review, not own-unit); the
    access log is read only with scopes that allow AuditEvent, as any resource is."""
    anna = region.patients["anna"]
    auditor = region.staff["audit"]
    with region.as_(auditor.token()) as c:
        assert c.get(f"Patient/{anna}/$log-extract").status_code == 200
    extract = events(store, user_id=auditor.hsa, action="log-extract")[-1]
    assert named(store, extract.seq) == [(anna, "log-review")]
    with region.as_(auditor.token(scope="user/Observation.rs")) as c:
        assert c.get("AuditEvent", params={"patient": anna}).status_code == 403
        assert c.get(f"Patient/{anna}/$log-extract").status_code == 403
        assert c.get("$log-review").status_code == 403
    with region.as_(auditor.token(scope="user/AuditEvent.s")) as c:
        assert c.get("AuditEvent", params={"patient": anna}).status_code == 200
    with region.as_(token(region.pnr["anna"], "citizen", scope="patient/Observation.rs")) as c:
        assert c.get(f"Patient/{anna}/$log-extract").status_code == 403
    with region.as_(token(region.pnr["anna"], "citizen", scope="patient/AuditEvent.rs")) as c:
        assert c.get(f"Patient/{anna}/$log-extract").status_code == 200


def test_r_log_1_a_conditional_update_of_a_hidden_resource_is_a_logged_denial_not_a_conflict(
    region: Region, store: Store
) -> None:
    """``PUT Observation?_id=X`` with X an existing resource the user may not see answered 409 "exists with other
    content", unlogged: now it is refused as a read or a PUT of X is, and logged as a denial naming the patient."""
    anna = region.patients["anna"]
    obs = region.post(observation(anna, "8867-4", 71), region.staff["vc"].token())["id"]
    tom = region.staff["tom"]  # no care relationship with Anna
    body = {**observation(anna, "8867-4", 99), "id": obs}
    with region.as_(tom.token()) as c:
        refused = c.put(f"Observation?_id={obs}", content=orjson.dumps(body), headers=JSON)
        assert refused.status_code == 403 and "exists" not in refused.text, refused.text
    denial = events(store, user_id=tom.hsa, outcome="deny")[-1]
    assert (denial.action, denial.resource_type, denial.resource_id) == ("put", "Observation", obs)
    assert [(a.patient_id, a.access_type) for a in accesses(store, denial.seq)] == [(anna, "denied")]
    # One who may see it still gets the conflict the specification asks for.
    with region.as_(region.staff["vc"].token()) as c:
        assert c.put(f"Observation?_id={obs}-other", content=orjson.dumps(body), headers=JSON).status_code == 409


def test_r_log_1_a_count_about_a_patient_is_logged_against_that_patient(region: Region, store: Store) -> None:
    """``_summary=count`` returns no resource but answers a question about the patient's data ("has she had this
    test?"): the record names the patient, with access type count, also for a POST _search form."""
    anna = region.patients["anna"]
    vc = region.staff["vc"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    with region.as_(vc.token()) as c:
        assert c.get(f"Observation?patient={anna}&code=29463-7&_summary=count").json()["total"] == 1
        assert c.get(f"Observation?subject=Patient/{anna}&_count=0&_total=accurate").json()["total"] == 1
        r = c.post("Observation/_search", content=f"patient={anna}&_summary=count".encode(), headers=form)
        assert r.json()["total"] == 1
        assert c.get(f"Observation?patient={anna}&code=0000-0&_summary=count").json()["total"] == 0
    searches = events(store, user_id=vc.hsa, action="search")[-4:]
    assert [[(a.patient_id, a.access_type) for a in accesses(store, s.seq)] for s in searches] == [
        [(anna, "count")],
        [(anna, "count")],
        [(anna, "count")],
        [],  # nothing counted, nothing told
    ]
    assert f"patient={anna}" in (searches[2].request or "")  # the form's parameters are in the request text
    with region.as_(token(region.pnr["anna"], "citizen")) as c:
        extract = c.get(f"Patient/{anna}/$log-extract").json()
    assert any(x.get("valueCode") == "count" for e in extract["entry"] for x in e["resource"].get("extension", [])), (
        "the patient sees that her data was counted"
    )


def test_r_log_4_an_audit_event_names_every_patient_its_interaction_touched(region: Region, store: Store) -> None:
    """An auditor reading the log as AuditEvent sees every patient of a search, each with its access type (one
    entity per patient), not only one of them."""
    anna, hidden = region.patients["anna"], region.patients["hidden"]
    vc = region.staff["vc"]
    with region.as_(vc.token()) as c:
        assert c.get(f"Patient?_id={anna},{hidden}").json()["total"] == 2
    ev = events(store, user_id=vc.hsa, action="search")[-1]
    logged = {(a.patient_id, a.access_type) for a in accesses(store, ev.seq)}
    assert {p for p, _ in logged} == {anna, hidden}
    with region.as_(region.staff["audit"].token()) as c:
        got = c.get(f"AuditEvent/{ev.seq}").json()
        listed = c.get(f"AuditEvent?patient={hidden}").json()
    shown = {(e["what"]["reference"], x["valueCode"]) for e in got["entity"] for x in e["extension"]}
    assert shown == {(f"Patient/{p}", t) for p, t in logged}
    assert any(e["resource"]["id"] == str(ev.seq) and len(e["resource"]["entity"]) == 2 for e in listed["entry"])


def test_r_log_4_a_search_about_a_patient_outside_care_is_logged_and_flagged_for_review(
    region: Region, store: Store
) -> None:
    """A search about a patient the user has no care relationship with shows nothing, yet it is an attempt
    the log review must see: the record names the patient (access type denied) and carries the flag."""
    anna = region.patients["anna"]
    tom, vc = region.staff["tom"], region.staff["vc"]
    with region.as_(tom.token()) as c:
        assert c.get(f"Observation?patient={anna}").json()["total"] == 0
    with region.as_(vc.token()) as c:  # in care: no flag
        assert c.get(f"Observation?patient={anna}").json()["total"] > 0
    tried = events(store, user_id=tom.hsa, action="search")[-1]
    assert tried.outcome == "permit" and "outside-care-relationship" in (tried.flags or "")
    assert [(a.patient_id, a.access_type) for a in accesses(store, tried.seq)] == [(anna, "denied")]
    cared = events(store, user_id=vc.hsa, action="search")[-1]
    assert "outside-care-relationship" not in (cared.flags or "")
    with store.transaction() as tx:
        start, end = audit.default_period(1)
        items = audit.review_candidates(tx.conn, start, end, {}, {}, sample_rate=0.0, seed=1)
    flagged = {i.seq for i in items if "outside-care-relationship" in i.criteria}
    assert tried.seq in flagged and cared.seq not in flagged


def test_r_log_4_an_auditor_reads_the_log_of_their_own_care_providers_users(region: Region, store: Store) -> None:
    """Each care provider reviews its own users' accesses (HSLF-FS 2016:40 4 kap.): the region's auditor sees
    what the region's staff did, not what the municipality's nurse did, in AuditEvent, $log-review and a
    $log-extract made for the patient. The patient's own extract shows every provider's accesses."""
    anna = region.patients["anna"]
    region.post(consent(anna, "svod-consent", {"type": "permit", "actor": [actor("IRCP", f"Organization/{HSV}")]}))
    vc, hsv = region.staff["vc"], region.staff["hsv"]
    for who in (vc, hsv):
        with region.as_(who.token()) as c:
            assert c.get(f"Observation?patient={anna}").json()["total"] > 0
    auditor = region.staff["audit"]  # the region's (REGION) auditor
    with region.as_(auditor.token()) as c:
        logged = c.get("AuditEvent", params={"patient": anna, "_count": "1000"}).json()
        agents = orjson.dumps([e["resource"]["agent"] for e in logged["entry"]]).decode()
        assert vc.hsa in agents and hsv.hsa not in agents
        hsv_event = events(store, user_id=hsv.hsa, action="search")[-1].seq
        assert c.get(f"AuditEvent/{hsv_event}").status_code == 404
        review = c.get("$log-review", params={"sampleRate": "1", "seed": "3"}).json()
        reviewed = {e["resource"]["id"] for e in review["entry"]}
        assert str(hsv_event) not in reviewed and reviewed
        extract = c.get(f"Patient/{anna}/$log-extract").json()
        assert c.get("$log-review", params={"sampleRate": "x"}).status_code == 400
        vc_event = events(store, user_id=vc.hsa, action="search")[-1].seq

        def completed(seqs: str) -> int:
            done = completed_review(seqs, "Inget att anmärka", "Ingen")
            return c.post("$log-review", content=orjson.dumps(done), headers=JSON).status_code

        assert completed(f"{vc_event},{hsv_event}") == 400  # the municipality's record is not this reviewer's
        assert completed("999999999") == 400
        assert completed(str(vc_event)) == 201
    with region.as_(token(region.pnr["anna"], "citizen")) as c:
        own = c.get(f"Patient/{anna}/$log-extract").json()
    assert len(own["entry"]) > len(extract["entry"])
    assert HSV not in orjson.dumps(extract).decode() and HSV in orjson.dumps(own).decode()
    # A system client with the policy off reads every provider's log; a client is named by its id, which is no
    # personnummer.
    everything = region.fhir.get("AuditEvent", params={"patient": anna, "_count": "1000"}).json()
    whole = orjson.dumps([e["resource"]["agent"] for e in everything["entry"]]).decode()
    assert vc.hsa in whole and hsv.hsa in whole
    clients = [
        a["who"]["identifier"]
        for e in everything["entry"]
        for a in e["resource"]["agent"]
        if a.get("type", {}).get("text") == "system" and "who" in a
    ]
    assert clients and all("system" not in i for i in clients), clients


def test_r_log_4_an_attempt_outside_care_is_flagged_however_the_search_names_the_patient(
    region: Region, store: Store
) -> None:
    """The flag and the denied access do not depend on how the search names the patient: by its compartment
    path, in a list, by a full URL, at system level, through $lastn and $everything, or by her personnummer."""
    anna, child = region.patients["anna"], region.patients["child"]
    tom = region.staff["tom"]  # no care relationship with Anna or the child
    full = f"{str(region.fhir.base_url).rstrip('/')}/Patient/{anna}"
    attempts = {
        "compartment": (f"Patient/{anna}/Encounter", {}),
        "list": ("Observation", {"patient": f"{anna},{child}"}),
        "full URL": ("Observation", {"subject": full}),
        "system level": ("", {"_type": "Observation", "patient": anna}),
        "$lastn": ("Observation/$lastn", {"patient": anna}),
        "personnummer": ("Patient", {"identifier": f"{PNR}|{region.pnr['anna']}"}),
        "chained personnummer": ("Observation", {"subject.identifier": f"{PNR}|{region.pnr['anna']}"}),
    }
    with region.as_(tom.token()) as c:
        for what, (path, params) in attempts.items():
            answer = c.get(path, params=params)
            assert answer.status_code == 200 and not answer.json().get("total"), (what, answer.text)
            tried = [e for e in events(store, user_id=tom.hsa) if e.outcome == "permit"][-1]
            assert "outside-care-relationship" in (tried.flags or ""), what
            expected = {(anna, "denied"), (child, "denied")} if what == "list" else {(anna, "denied")}
            assert set(named(store, tried.seq)) == expected, what
        # $everything on a patient out of reach is refused as a read of her is, and logged as a denial.
        refused = c.get(f"Patient/{anna}/$everything")
        assert refused.status_code == 403, refused.text
        assert c.get("Patient/no-such-patient/$everything").status_code == 404
    denial = events(store, user_id=tom.hsa, outcome="deny")[-1]
    assert named(store, denial.seq) == [(anna, "denied")]


def test_r_log_4_an_auditor_reading_a_patients_log_is_in_that_patients_extract(region: Region, store: Store) -> None:
    """Reading the log about a patient is an access to her data too: it names her, with access type log-review."""
    anna = region.patients["anna"]
    with region.as_(region.staff["vc"].token()) as c:
        assert c.get(f"Observation?patient={anna}").status_code == 200
    auditor = region.staff["audit"]
    with region.as_(auditor.token()) as c:
        assert c.get(f"AuditEvent?patient={anna}").json()["total"] > 0
    read = events(store, user_id=auditor.hsa, action="search")[-1]
    assert [(a.patient_id, a.access_type) for a in accesses(store, read.seq)] == [(anna, "log-review")]
    with region.as_(token(region.pnr["anna"], "citizen")) as c:
        extract = c.get(f"Patient/{anna}/$log-extract").json()
    assert any(
        x.get("valueCode") == "log-review" for e in extract["entry"] for x in e["resource"].get("extension", [])
    ), "the patient sees that an auditor read her log"


def test_r_log_4_an_auditors_review_names_every_patient_whose_log_it_showed(region: Region, store: Store) -> None:
    """Listing the log of many patients at once (``$log-review``, ``AuditEvent?agent=``) is an access to each one's
    log: the auditor's record names every patient listed, with access type log-review."""
    anna, hidden = region.patients["anna"], region.patients["hidden"]
    vc = region.staff["vc"]
    with region.as_(vc.token()) as c:
        assert c.get(f"Patient/{anna}").status_code == 200
        assert c.get(f"Patient/{hidden}").status_code == 200
    auditor = region.staff["audit"]

    def listed(bundle: dict[str, Any]) -> set[str]:
        return {
            x["what"]["reference"].split("/")[1]
            for e in bundle["entry"]
            for x in e["resource"].get("entity", [])
            if x["what"]["reference"].startswith("Patient/")
        }

    def logged(action: str) -> set[tuple[str, str]]:
        last = events(store, user_id=auditor.hsa, action=action)[-1]
        return {(a.patient_id, a.access_type) for a in accesses(store, last.seq)}

    with region.as_(auditor.token()) as c:
        review = c.get("$log-review", params={"sampleRate": "1", "seed": "7"})
        assert review.status_code == 200, review.text
        reviewed = listed(review.json())
        assert {anna, hidden} <= reviewed
        assert logged("operation") == {(p, "log-review") for p in reviewed}
        by_agent = c.get("AuditEvent", params={"agent": vc.hsa, "_count": "1000"})
        assert by_agent.status_code == 200
        shown = listed(by_agent.json())
        assert {anna, hidden} <= shown
        assert logged("search") == {(p, "log-review") for p in shown}
    with region.as_(token(region.pnr["anna"], "citizen")) as c:
        extract = c.get(f"Patient/{anna}/$log-extract").json()
    kinds = [x.get("valueCode") for e in extract["entry"] for x in e["resource"].get("extension", [])]
    assert kinds.count("log-review") >= 2, "the patient sees both reviews of her log"


@pytest.mark.parametrize("legacy", ["Practitioner", "Patient"])
def test_r_log_4_own_record_is_flagged_however_the_personal_identity_number_was_stored(
    region: Region, store: Store, legacy: str
) -> None:
    """Records stored before writes were normalised (R-ID-1) keep the number as the feed wrote it (hyphen, RIV
    OID), and an Identifier may have no value: the staff member who reads her own record is flagged all the
    same, whichever of the two records (hers or the patient's) is the old one."""
    anna = region.patients["anna"]
    rid = "prac-self" if legacy == "Practitioner" else anna
    with store.transaction() as tx:
        tx.validate = False  # as a directory or population feed stored it before
        res = orjson.loads(tx.read(legacy, rid).content or "{}")
        res["identifier"] = [i for i in res["identifier"] if i["system"] != PNR] + [
            {"system": "urn:oid:1.2.752.129.2.1.3.1", "value": "19500203-2380"},
            {"system": PNR},
        ]
        tx.update(legacy, rid, res)
    with region.as_(region.staff["self"].token()) as c:
        assert c.get(f"Observation?patient={anna}").status_code == 200
    with region.as_(region.staff["audit"].token()) as c:
        r = c.get("$log-review", params={"sampleRate": "0", "seed": "1"})
    assert r.status_code == 200, r.text
    flagged = {
        e["resource"]["entity"][0]["what"]["reference"]: next(
            x["valueString"] for x in e["resource"]["extension"] if x["url"].endswith("review-flags")
        )
        for e in r.json()["entry"]
        if any(
            a.get("requestor") and a["who"]["identifier"]["value"] == region.staff["self"].hsa
            for a in e["resource"]["agent"]
        )
    }
    assert "own-record" in flagged.get(f"Patient/{anna}", ""), flagged


def test_r_log_4_many_patients_and_random_sample(region: Region, store: Store) -> None:
    with store.transaction() as tx:
        start, end = audit.default_period(1)
        items = audit.review_candidates(tx.conn, start, end, {}, {}, sample_rate=1.0, many_patients_threshold=0)
    assert items and all("random-sample" in i.criteria for i in items)
    assert any("many-patients" in i.criteria for i in items if i.patient_id)


def test_consent_and_block_operations_appear_in_the_log(region: Region, store: Store) -> None:
    anna = region.patients["anna"]
    region.post(consent(anna, "svod-consent", {"type": "permit", "actor": [actor("IRCP", f"Organization/{VC}")]}))
    assert any(e.resource_type == "Consent" and e.action == "create" for e in events(store))


# ---- a server killed mid-load --------------------------------------------------------------------
def test_every_acknowledged_request_has_its_record_after_a_kill(backend: Backend, tmp_path: Path) -> None:
    """Start `nara serve` as a region runs it, load it from threads, kill -9 the whole service (its processes)
    mid-load: every 2xx has its audit record. On PostgreSQL it runs two workers with the default read-audit
    outbox (`var/audit-outbox` under the directory it starts in): a read's record is there when the read
    answers; the workers and the sealer are gone, so `nara audit drain`, run in the same place, brings what
    they left into the log (as after a crash)."""
    if backend.name == "sqlite":
        url = f"sqlite:///{tmp_path}/kill.db"
    else:
        url = backend.url.rsplit("/", 1)[0] + f"/nara_kill_{os.getpid()}"
    port = _free_port()
    outbox = tmp_path / "var" / "audit-outbox"  # nara serve's default, under its working directory
    env = {k: v for k, v in os.environ.items() if k != "NARA_AUDIT_OUTBOX"}
    env.update(
        {
            "NARA_DEV_IDP": "true",
            "NARA_DATABASE_URL": url,
            # The sealer leaves the outbox alone until after the kill: what it holds then is what the reads left.
            "NARA_AUDIT_DRAIN_SECONDS": "3600",
            "NARA_AUDIT_SEAL_SECONDS": "3600",
        }
    )
    workers = "2" if backend.name == "postgres" else "1"
    serve = ["serve", "--port", str(port), "--database-url", url, "--workers", workers, "--log-level", "warning"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nara.cli", *serve],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill takes every process of the service
    )
    base = f"http://127.0.0.1:{port}/fhir"
    auth = {"Authorization": f"Bearer {token('load-test', 'system')}", **JSON}
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        pid = httpx.post(
            f"{base}/Patient",
            headers=auth,
            content=orjson.dumps({"resourceType": "Patient", "name": [{"family": "Last"}]}),
            timeout=10,
        ).json()["id"]
        acked_writes: list[str] = []
        acked_reads: list[str] = []
        stop = threading.Event()

        def load(worker: int) -> None:
            n = 0
            with httpx.Client(headers=auth, timeout=5) as c:
                while not stop.is_set():
                    n += 1
                    try:
                        if n % 2:
                            r = c.post(f"{base}/Observation", content=orjson.dumps(observation(pid, "8867-4", n)))
                            if r.status_code == 201:
                                acked_writes.append(r.json()["id"])
                        else:
                            marker = f"w{worker}n{n}"
                            r = c.get(f"{base}/Observation", params={"identifier": f"urn:load|{marker}"})
                            if r.status_code == 200:
                                acked_reads.append(marker)
                    except httpx.HTTPError:
                        return

        threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGKILL)  # as the service manager kills a service: all its processes
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=10)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert acked_writes and acked_reads
    from nara.store.database import create_engine, drop_database

    cli = [sys.executable, "-m", "nara.cli", "audit"]
    if backend.name == "postgres":
        assert list(outbox.glob("*.audit")), "the reads' records went through the outbox"
        drained = subprocess.run(  # its default outbox, in the directory the service ran in
            [*cli, "drain", "--database-url", url], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
        )
        assert drained.returncode == 0, drained.stderr
        assert not list(outbox.glob("*.audit"))  # every file drained and, its writer dead, removed
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            written = {
                r[0]
                for r in conn.execute(
                    text(
                        "SELECT resource_id FROM audit_event WHERE action = 'create' AND resource_type = 'Observation'"
                    )
                )
            }
            requests = [r[0] for r in conn.execute(text("SELECT request FROM audit_event WHERE action = 'search'"))]
        assert set(acked_writes) <= written
        logged = " ".join(requests)
        missing = [m for m in acked_reads if f"urn:load|{m}" not in logged]
        assert not missing, missing[:5]
        sealed = subprocess.run([*cli, "seal", "--database-url", url], capture_output=True, text=True, timeout=120)
        assert sealed.returncode == 0, sealed.stderr
        verified = subprocess.run([*cli, "verify", "--database-url", url], capture_output=True, text=True, timeout=120)
        assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout + verified.stderr
        report = audit.verify(engine)
        assert report.ok and report.unsealed == 0, report.problem
    finally:
        engine.dispose()
        if backend.name == "postgres":
            drop_database(url)


# ---- a read's record as a line of the outbox (audit.spool_line) ---------------------------------------------
def _staff(name: str = "Anna Ek", subject: str = "SE2321000016-P001") -> Actor:
    return Actor(kind="staff", subject=subject, name=name, assignment=assignment("Läsa;alla;SJF"))


def _as_stored(rec: audit.AuditRecord, at: datetime) -> Any:
    """The record as the log stores it, by the general path (``record_row`` then ``sealed_row``)."""
    return orjson.loads(orjson.dumps(audit.sealed_row(audit.record_row(rec, at))))


@pytest.mark.parametrize(
    "rec",
    [
        audit.AuditRecord(
            "read", "permit", _staff(), "Observation", "o1", "GET /Observation/o1",
            accesses=[audit.Access("p1", "SE2321000016-VG", "SE2321000016-E001", "own-unit")],
        ),
        audit.AuditRecord(
            "search", "permit", _staff(name="Nul\x00l"), "Observation", None, "GET /Observation?code=a%00b\x00",
            flags={"active-choice"},
            accesses=[
                audit.Access("p1", "VG2", "E2", "emergency", assertion_id="c1"),
                audit.Access("p1", "VG2", "E2", "emergency", assertion_id="c1"),  # the same access twice: once
                audit.Access("p2", "VG2", "E3", "svod", protected=True, assertion_id="c2"),
                audit.Access("p3", None, None, "denied"),
            ],
        ),
        audit.AuditRecord("read", "permit", audit.operator_actor("export"), "Patient", "p1", "GET /Patient/p1"),
        audit.AuditRecord(
            "operation", "permit", Actor(kind="citizen", subject="191212121212", patient="p9"), None, None,
            "GET /Patient/p9/$log-extract", reason="x" * 3000, accesses=[audit.Access("p9", None, None, "citizen")],
        ),
    ],
    ids=["staff-read", "staff-search-flags-and-nul", "operator", "citizen"],
)  # fmt: skip
def test_a_spool_line_holds_the_record_as_the_log_would_store_it(rec: audit.AuditRecord) -> None:
    at = audit.now_utc()
    line = audit.spool_line(rec, at)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == _as_stored(rec, at)
    assert orjson.loads(audit.spool_line(rec, at)) == _as_stored(rec, at)  # again, with the actor's columns kept


def test_a_spool_line_refuses_what_a_column_cannot_hold_for_the_actor_every_time_and_for_the_rest() -> None:
    at = audit.now_utc()
    too_long = _staff(subject="SE" + "9" * 70)  # user_id is 64 characters
    for _ in range(2):  # a refused actor is not kept as checked
        with pytest.raises(ValueError, match="user_id"):
            audit.spool_line(audit.AuditRecord("read", "permit", too_long, "Patient", "p1"), at)
    with pytest.raises(ValueError, match="action"):
        audit.spool_line(audit.AuditRecord("r" * 40, "permit", _staff(), "Patient", "p1"), at)
    with pytest.raises(ValueError, match="access_type"):
        access = audit.Access("p1", None, None, "a-type-past-sixteen-characters")
        audit.spool_line(audit.AuditRecord("read", "permit", _staff(), "Patient", "p1", accesses=[access]), at)


def test_each_spool_line_names_its_own_actor_also_past_the_kept_actors_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "_MAX_CHECKED_ACTORS", 3)
    at = audit.now_utc()
    actors = [_staff(name=f"Person {i}", subject=f"SE2321000016-P{i:03}") for i in range(10)]
    for a in [*actors[:2], *actors[:2], *actors, *actors]:  # kept ones (the first two, in turns) and past the limit
        line = orjson.loads(audit.spool_line(audit.AuditRecord("read", "permit", a, "Patient", "p1"), at))
        assert (line["e"]["user_id"], line["e"]["user_name"]) == (a.subject, a.name)
    assert len(audit._CHECKED_ACTORS) <= 3
