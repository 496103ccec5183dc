"""Group commit of read-audit records (nara.security.audit_commit) and the many-record statement behind it,
on a real PostgreSQL (the path exists only there; SQLite writes each record in its own transaction)."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select, text

from nara.fhir.outcome import FhirError
from nara.security import audit
from nara.security.actors import Actor
from nara.security.audit_commit import GroupCommit
from nara.security.schema import audit_access, audit_event, pdl_rule
from nara.store.store import Store
from tests.security.region import assignment

NURSE = Actor(
    kind="staff",
    subject="SE2321000032-PNURSE",
    name="Nina Nurse",
    practitioner="prac-nurse",
    assignment=assignment("Läsa;alla;SJF", id="SE2321000032-PNURSE-U", role_id="role-nurse"),
)


@pytest.fixture
def pg(store: Store) -> Store:
    if not store.postgres:
        pytest.skip("group commit is the PostgreSQL read path")
    return store


def read_record(resource_id: str, patient: str = "pat-1", **kw: Any) -> audit.AuditRecord:
    accesses = [audit.Access(patient, "SE2321000032-REG", "SE2321000032-VC1", "own-unit")]
    return audit.AuditRecord(
        "read", "permit", NURSE, kw.pop("resource_type", "Observation"), resource_id, f"GET {resource_id}",
        accesses=accesses, **kw,
    )  # fmt: skip


def events(store: Store) -> dict[str, Any]:
    with store.engine.connect() as conn:
        return {r.resource_id: r for r in conn.execute(select(audit_event))}


def run_concurrently(store: Store, commit: GroupCommit, records: list[audit.AuditRecord]) -> list[Any]:
    """Each record from its own thread and read transaction, while a table lock holds the first write back,
    so that the others queue behind it (as concurrent requests do under load)."""
    results: list[Any] = [None] * len(records)

    def one(i: int) -> None:
        try:
            with store.transaction(write=False, records_audit=True) as tx:
                assert tx.autocommit
                results[i] = commit.record(tx.conn, records[i])
        except FhirError as e:
            results[i] = e

    with store.engine.connect() as blocker:
        blocker.execute(text("LOCK TABLE audit_access IN SHARE MODE"))  # inserts wait for the lock
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(records))]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the first writer is waiting on the lock, the others have queued
        blocker.rollback()
    for t in threads:
        t.join(timeout=30)
    return results


def test_concurrent_reads_each_get_their_own_record_written_in_shared_statements(pg: Store) -> None:
    commit = GroupCommit()
    records = [read_record(f"Observation/o{i}", patient=f"pat-{i}") for i in range(12)]
    seqs = run_concurrently(pg, commit, records)
    assert all(isinstance(s, int) for s in seqs) and len(set(seqs)) == 12
    assert commit.stats.records == 12
    assert commit.stats.statements < 12 and commit.stats.largest >= 2
    stored = events(pg)
    with pg.engine.connect() as conn:
        access = {r.seq: r for r in conn.execute(select(audit_access))}
    for i, seq in enumerate(seqs):
        ev = stored[f"Observation/o{i}"]
        assert ev.seq == seq and ev.user_id == NURSE.subject and ev.unit_id == "SE2321000032-VC1"
        assert ev.patient_count == 1 and access[seq].patient_id == f"pat-{i}"


def test_a_record_that_cannot_be_written_fails_only_its_own_request(pg: Store) -> None:
    commit = GroupCommit()
    records = [read_record(f"Observation/o{i}") for i in range(6)]
    records[3] = read_record("Observation/bad", resource_type="X" * 80)  # longer than the column allows
    results = run_concurrently(pg, commit, records)
    assert isinstance(results[3], FhirError) and results[3].status >= 500
    assert all(isinstance(results[i], int) for i in (0, 1, 2, 4, 5))
    assert commit.stats.retried >= 1
    stored = events(pg)
    assert "Observation/bad" not in stored
    assert {f"Observation/o{i}" for i in (0, 1, 2, 4, 5)} <= stored.keys()


def test_many_records_in_one_statement_equal_the_same_records_written_one_by_one(pg: Store) -> None:
    """record_many writes exactly what record writes, including protected identity (R-ID-3) looked up in
    the access rules and the emergency flag."""
    with pg.engine.connect() as conn:
        conn.execute(pdl_rule.insert().values(source_rid=0, patient_id="pat-hidden", kind="protected"))
        conn.commit()
    at = datetime(2026, 11, 1, 8, 30)
    emergency = audit.AuditRecord(
        "search", "permit", NURSE, "Observation", None, "GET Observation?patient=pat-hidden",
        flags={"active-choice"},
        accesses=[
            audit.Access("pat-hidden", "SE2120000000-KOM", "SE2120000000-HSV", "emergency"),
            audit.Access("pat-2", "SE2321000032-REG", "SE2321000032-VC1", "own-unit"),
        ],
    )  # fmt: skip
    plain = read_record("Observation/plain", patient="pat-3")
    with pg.transaction(write=False, records_audit=True) as tx:
        one = [audit.record(tx.conn, r, at) for r in (emergency, plain)]
        many = audit.record_many(tx.conn, [(emergency, at), (plain, at)])
    with pg.engine.connect() as conn:
        rows = {r.seq: r for r in conn.execute(select(audit_event))}
        acc: dict[int, set[tuple[Any, ...]]] = {}
        for a in conn.execute(select(audit_access)):
            acc.setdefault(a.seq, set()).add((a.patient_id, a.owner_org, a.owner_unit, a.access_type, a.protected))

    def shape(seq: int) -> tuple[Any, ...]:
        r = rows[seq]
        values = tuple(getattr(r, c) for c in audit._EVENT_COLUMNS if c != "flags")
        return values, set((r.flags or "").split(",")), acc[seq]

    for a, b in zip(one, many, strict=True):
        assert shape(a) == shape(b)
    assert shape(many[0])[1] == {"active-choice", "emergency", "protected-identity"}
    assert ("pat-hidden", "SE2120000000-KOM", "SE2120000000-HSV", "emergency", True) in acc[many[0]]
    assert shape(many[1])[1] == {""}


def test_the_many_record_statement_is_refused_on_sqlite(store: Store) -> None:
    if store.postgres:
        pytest.skip("the SQLite side of the statement")
    with store.transaction() as tx, pytest.raises(ValueError):
        audit.record_many(tx.conn, [(read_record("Observation/x"), audit.now_utc())])
