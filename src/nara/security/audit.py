"""The access log (HSLF-FS 2016:40 4 kap. 9 §, R-LOG-1..4): records, hash chain, extract and review.

Every interaction writes one ``audit_event`` row (and one ``audit_access`` row per patient and data
owner it touched) in the same database transaction as the interaction itself, so an acknowledged
request always has its record. A sealer chains committed rows in order: ``hash = sha256(prev_hash ||
canonical(event + its accesses))``. ``verify`` walks the chain and reports the first altered,
inserted or deleted record. Triggers refuse updates and deletes inside the retention period.
"""

from __future__ import annotations

import getpass
import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cache, partial
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Connection,
    DateTime,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    not_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Engine

from nara.fhir.dates import local_zone, utcnow
from nara.security.actors import Actor
from nara.security.rules import protected_patients
from nara.security.schema import audit_access, audit_event, audit_review, pdl_rule
from nara.store.memo import Memo

GENESIS = "0" * 64
SEAL_BATCH = 5000  # records chained per sealing transaction
CHAIN_LOCK = 734131  # PostgreSQL advisory lock of the chain's head: one sealer (or sealing drainer) at a time


@dataclass
class Access:
    patient_id: str
    owner_org: str | None
    owner_unit: str | None
    access_type: str
    protected: bool = False
    action: str | None = None  # set when it differs from the event's action
    # The Consent id this access was reached through (consent, emergency assertion or block break; R-LOG-1).
    assertion_id: str | None = None


@dataclass
class AuditRecord:
    action: str
    outcome: str
    actor: Actor
    resource_type: str | None = None
    resource_id: str | None = None
    request: str | None = None
    reason: str | None = None
    assertion_id: str | None = None
    flags: set[str] = field(default_factory=set)
    accesses: list[Access] = field(default_factory=list)
    # False when the access-rule store cannot be read (R-BLK-5): protected identity is then not looked up.
    lookup_protected: bool = True


def now_utc() -> datetime:
    return utcnow().replace(tzinfo=None)


_EVENT_COLUMNS = (
    "recorded_at",
    "action",
    "outcome",
    "actor_kind",
    "user_id",
    "user_name",
    "assignment_id",
    "unit_id",
    "provider_id",
    "purpose",
    "client_id",
    "resource_type",
    "resource_id",
    "request",
    "reason",
    "assertion_id",
    "flags",
    "patient_count",
)
_ACCESS_COLUMNS = ("patient_id", "owner_org", "owner_unit", "access_type", "protected", "action", "assertion_id")


def _placeholder(dialect: str, name: str) -> str:
    return f"%({name})s" if dialect == "postgresql" else f":{name}"


@cache
def _record_sql(dialect: str, accesses: int, lookup_protected: bool = True) -> tuple[str, str | None]:
    """SQL for one event and ``accesses`` access rows, built once per shape (no per-call compilation).

    PostgreSQL: one statement (a data-modifying CTE inserts the event, the outer INSERT its accesses).
    SQLite: the event insert, then an executemany of the access insert.
    """
    ph = partial(_placeholder, dialect)
    event = (
        f"INSERT INTO audit_event ({', '.join(_EVENT_COLUMNS)}) "
        f"VALUES ({', '.join(ph(c) for c in _EVENT_COLUMNS)}) RETURNING seq"
    )
    access_cols = "seq, recorded_at, " + ", ".join(_ACCESS_COLUMNS)
    if dialect == "postgresql" and accesses and lookup_protected:
        # Protected identity (R-ID-3) is looked up by the statement itself, so a read costs no extra query.
        patients = ", ".join(ph(f"patient_id_{i}") for i in range(accesses))
        values_ = [ph(c) for c in _EVENT_COLUMNS]
        values_[_EVENT_COLUMNS.index("flags")] = (
            f"NULLIF(concat_ws(',', {ph('flags')}::text, CASE WHEN EXISTS (SELECT 1 FROM pdl_rule p WHERE "
            f"p.kind = 'protected' AND p.patient_id IN ({patients})) THEN 'protected-identity' END), '')"
        )
        event = f"INSERT INTO audit_event ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join(values_)}) RETURNING seq"
        rows = ", ".join(
            "(" + ", ".join(ph(f"{c}_{i}") + ("::boolean" if c == "protected" else "") for c in _ACCESS_COLUMNS) + ")"
            for i in range(accesses)
        )
        both = (
            f"WITH ev AS ({event}) INSERT INTO audit_access ({access_cols}) "
            f"SELECT ev.seq, {ph('recorded_at')}, v.patient_id, v.owner_org, v.owner_unit, v.access_type, "
            "v.protected OR EXISTS (SELECT 1 FROM pdl_rule p WHERE p.kind = 'protected' "
            "AND p.patient_id = v.patient_id), v.action, v.assertion_id "
            f"FROM ev, (VALUES {rows}) AS v({', '.join(_ACCESS_COLUMNS)}) RETURNING seq"
        )
        return both, None
    access = (
        f"INSERT INTO audit_access ({access_cols}) VALUES ({ph('seq')}, {ph('recorded_at')}, "
        + ", ".join(ph(c) for c in _ACCESS_COLUMNS)
        + ")"
    )
    return event, access


def _event_params(rec: AuditRecord, at: datetime) -> tuple[dict[str, Any], list[Access]]:
    """The event's column values and its distinct accesses (one per patient, owner, access type and action)."""
    own, accesses = _own_params(rec, at)
    return {**own, **_actor_params(rec.actor)}, accesses


def _own_params(rec: AuditRecord, at: datetime) -> tuple[dict[str, Any], list[Access]]:
    """The event's column values but the actor's (``_actor_params``), and its distinct accesses."""
    flags = set(rec.flags)
    unique: dict[tuple[str, str | None, str | None, str, str | None, str | None], Access] = {}
    for x in rec.accesses:
        if x.protected:
            flags.add("protected-identity")
        if x.access_type == "emergency":
            flags.add("emergency")
        unique.setdefault((x.patient_id, x.owner_org, x.owner_unit, x.access_type, x.action, x.assertion_id), x)
    accesses = list(unique.values())
    params: dict[str, Any] = {
        "recorded_at": at,
        "action": rec.action,
        "outcome": rec.outcome,
        "resource_type": rec.resource_type,
        "resource_id": rec.resource_id,
        "request": (rec.request or "")[:2000] or None,
        "reason": rec.reason,
        "assertion_id": rec.assertion_id,  # an operation's own; each access names the one it was reached through
        "flags": ",".join(sorted(flags)) or None,
        "patient_count": len({x.patient_id for x in accesses}),
    }
    return _without_nul(params), accesses


def _actor_params(actor: Actor) -> dict[str, Any]:
    """The event's columns that say who acted."""
    a = actor.assignment
    return _without_nul(
        {
            "actor_kind": actor.kind,
            "user_id": actor.subject,
            "user_name": actor.name or None,
            "assignment_id": a.id if a else None,
            "unit_id": a.unit if a else None,
            "provider_id": a.provider if a else None,
            "purpose": a.purpose if a else None,
            "client_id": actor.client_id,
        }
    )


def _without_nul(params: dict[str, Any]) -> dict[str, Any]:
    for key, value in params.items():
        if isinstance(value, str) and "\x00" in value:
            # A NUL (sent as %00 in a query) cannot be stored in a PostgreSQL text column: the record would
            # fail, and with it the read. Logged as U+FFFD instead, so that the request is still on record.
            params[key] = value.replace("\x00", "\ufffd")
    return params


def record(conn: Connection, rec: AuditRecord, at: datetime | None = None) -> int:
    """Insert one audit record (event + accesses) in the caller's transaction; returns its seq."""
    at = at or now_utc()
    params, accesses = _event_params(rec, at)
    dialect = conn.dialect.name
    if dialect != "postgresql" and accesses and rec.lookup_protected:
        # SQLite: mark protected identity (R-ID-3) here; on PostgreSQL the insert statement does it.
        protected = protected_patients(conn, {x.patient_id for x in accesses})
        if protected:
            accesses = [replace(x, protected=x.protected or x.patient_id in protected) for x in accesses]
            if "protected-identity" not in (params["flags"] or ""):
                params["flags"] = ",".join(sorted({*(params["flags"] or "").split(","), "protected-identity"} - {""}))
    first, access_sql = _record_sql(dialect, len(accesses), rec.lookup_protected)
    if dialect == "postgresql" and accesses and rec.lookup_protected:
        for i, x in enumerate(accesses):
            for c in _ACCESS_COLUMNS:
                params[f"{c}_{i}"] = getattr(x, c)
        written = conn.exec_driver_sql(first, params).scalars().first()  # a row per access, each with the seq
        assert written is not None  # the statement inserts the event and returns it with every access row
        return int(written)
    seq = int(conn.exec_driver_sql(first, params).scalar_one())
    if accesses and access_sql is not None:
        conn.exec_driver_sql(
            access_sql,
            [{"seq": seq, "recorded_at": at, **{c: getattr(x, c) for c in _ACCESS_COLUMNS}} for x in accesses],
        )
    return seq


def operator_actor(command: str) -> Actor:
    """The operator running a ``nara`` command on the database directly (no token, no policy): named in the
    log by the operating-system user and the command."""
    user = getpass.getuser()
    return Actor(kind="system", subject=f"cli:{user}"[:64], name=f"nara {command} ({user})", policy_off=True)


def record_operator(
    conn: Connection, actor: Actor, action: str, request: str, patients: Iterable[str], access_type: str = "system"
) -> int:
    """One record of an operator command's access to many patients' data (``nara export``, ``nara import``),
    in the caller's transaction: one access row per patient, protected identity marked (R-ID-3)."""
    ids = sorted({p for p in patients if p})
    protected = protected_patients(conn, ids)
    rec = AuditRecord(
        action,
        "permit",
        actor,
        request=request,
        accesses=[Access(p, None, None, access_type, protected=p in protected) for p in ids],
        lookup_protected=False,  # marked here: the statement's own lookup is for a page of rows, not a region
    )
    return record(conn, rec)


class RecordingRead:
    """A read by id on PostgreSQL whose audit record the read's own statement writes (``Tx.read_recorder``).

    One statement instead of two: the SELECT becomes a CTE, and data-modifying CTEs insert the event and
    the access row for the patient of the row it found, in the same autocommit transaction, so the record is
    committed before the response exists (R-LOG-1) and costs no round trip of its own. Only a live row is
    recorded: a missing, hidden or deleted resource leaves no record here (hidden ones log their denial, as
    before). ``seq`` is the record's number once written; when it stays None the caller records as usual.
    """

    def __init__(self, rtype: str, rid: str, rec: AuditRecord, policy: Any) -> None:
        self.rtype, self.rid, self.rec = rtype, rid, rec
        self.policy = policy  # nara.security.policy.Policy: the access type of the row, as SQL
        self.seq: int | None = None
        self.used = False  # one statement records one read

    def applies(self, rtype: str, rid: str) -> bool:
        return not self.used and (rtype, rid) == (self.rtype, self.rid)

    def read(self, conn: Connection, stmt: Select[Any], params: dict[str, Any]) -> Any:
        self.used = True
        hit = _RECORDING_READS.get(
            (id(stmt), self.policy.shape),
            lambda: (stmt, read_with_record(stmt, self.policy.access_type_sql, self.policy.assertion_sql)),
        )
        event, _ = _event_params(self.rec, now_utc())
        row = conn.execute(hit[1], {**params, **{f"ev_{c}": v for c, v in event.items()}}).first()
        self.seq = None if row is None or row.audit_seq is None else int(row.audit_seq)
        return row


# Recording reads, one per read statement and policy shape (the entry keeps the read statement and its id alive).
_RECORDING_READS: Memo[tuple[int, Any], tuple[Select[Any], Select[Any]]] = Memo(1024)


def read_with_record(stmt: Select[Any], access_type: Any, assertion: Any) -> Select[Any]:
    """``stmt`` (a read of at most one resource row, with ``patient_id``, ``owner_org``, ``owner_unit`` and
    ``deleted``) as one PostgreSQL statement that also writes the read's audit record: the event from the
    parameters ``ev_<column>`` (``_event_params``) and one access row for the row's patient, typed
    ``access_type(columns)``, naming the Consent ``assertion(columns, type)`` it was reached through, protected
    identity looked up as in ``record`` (R-ID-3). The result has the read's columns and ``audit_seq``, the
    record's number (None when the row was deleted or not found: nothing is recorded then)."""
    read = stmt.cte("nara_read")
    # The live row's access type and protected identity, computed once (a CTE read twice is materialized).
    typed = (
        select(
            read.c.patient_id,
            read.c.owner_org,
            read.c.owner_unit,
            access_type(read.c).label("kind"),
            exists()
            .where(pdl_rule.c.kind == "protected", pdl_rule.c.patient_id == read.c.patient_id)
            .label("protected"),
        )
        .where(not_(read.c.deleted))
        .cte("nara_read_typed")
    )
    fixed = [c for c in _EVENT_COLUMNS if c not in ("flags", "patient_count")]
    values: list[ColumnElement[Any]] = [bindparam(f"ev_{c}", type_=audit_event.c[c].type) for c in fixed]
    flags = func.nullif(
        func.concat_ws(
            ",",
            bindparam("ev_flags", type_=String()),
            case((typed.c.kind == "emergency", "emergency")),
            case((typed.c.protected, "protected-identity")),
        ),
        "",
    )
    patients = case((typed.c.patient_id.is_not(None), 1), else_=0)
    event = (
        insert(audit_event)
        .from_select([*fixed, "flags", "patient_count"], select(*values, flags, patients).select_from(typed))
        .returning(audit_event.c.seq, audit_event.c.recorded_at)
        .cte("nara_read_event")
    )
    access = insert(audit_access).from_select(
        ["seq", "recorded_at", "patient_id", "owner_org", "owner_unit", "access_type", "protected", "assertion_id"],
        select(
            event.c.seq,
            event.c.recorded_at,
            typed.c.patient_id,
            typed.c.owner_org,
            typed.c.owner_unit,
            typed.c.kind,
            typed.c.protected,
            assertion(typed.c, typed.c.kind),
        )
        .select_from(event.join(typed, true()))
        .where(typed.c.patient_id.is_not(None)),
    )
    return select(*read.c, select(event.c.seq).scalar_subquery().label("audit_seq")).add_cte(
        access.cte("nara_read_access")
    )


_MANY_TYPES = {
    "recorded_at": "timestamp",
    "patient_count": "int",
    "protected": "bool",
    "seq": "bigint",
    "chain_seq": "bigint",
}


@cache
def _record_many_sql() -> str:
    """PostgreSQL: any number of audit records in one statement, passed as two JSON documents.

    The records' seqs are drawn first (a materialized CTE, so each record draws one), then the events and
    their accesses are inserted; protected identity (R-ID-3) is looked up by the statement, as in ``record``.
    The text never changes with the number of records, so the driver prepares it once; one JSON parameter
    per table costs the driver far less than one array per column.
    """

    def columns(names: tuple[str, ...]) -> str:
        return ", ".join(["ord int", *(f"{c} {_MANY_TYPES.get(c, 'text')}" for c in names)])

    event_values = [f"i.{c}" for c in _EVENT_COLUMNS]
    event_values[_EVENT_COLUMNS.index("flags")] = (
        "NULLIF(concat_ws(',', i.flags, CASE WHEN position('protected-identity' IN coalesce(i.flags, '')) = 0 "
        "AND EXISTS (SELECT 1 FROM acc WHERE acc.ord = i.ord AND acc.protected) THEN 'protected-identity' END), '')"
    )
    return (
        "WITH items AS MATERIALIZED (SELECT nextval(pg_get_serial_sequence('audit_event', 'seq')) AS seq, u.* "
        f"FROM json_to_recordset(%(events)s::json) AS u({columns(_EVENT_COLUMNS)})), "
        "acc AS MATERIALIZED (SELECT v.ord, v.patient_id, v.owner_org, v.owner_unit, v.access_type, "
        "v.protected OR EXISTS (SELECT 1 FROM pdl_rule p WHERE p.kind = 'protected' AND p.patient_id = v.patient_id) "
        "AS protected, v.action, v.assertion_id "
        f"FROM json_to_recordset(%(accesses)s::json) AS v({columns(_ACCESS_COLUMNS)})), "
        f"ev AS (INSERT INTO audit_event (seq, {', '.join(_EVENT_COLUMNS)}) "
        f"SELECT i.seq, {', '.join(event_values)} FROM items i), "
        f"ac AS (INSERT INTO audit_access (seq, recorded_at, {', '.join(_ACCESS_COLUMNS)}) "
        "SELECT i.seq, i.recorded_at, acc.patient_id, acc.owner_org, acc.owner_unit, acc.access_type, acc.protected, "
        "acc.action, acc.assertion_id FROM acc JOIN items i ON i.ord = acc.ord) "
        "SELECT ord, seq FROM items"
    )


def record_many(conn: Connection, records: list[tuple[AuditRecord, datetime]]) -> list[int]:
    """PostgreSQL: insert several audit records (each with its own time) in one statement; returns their seqs.

    Every record must look protected identity up (``lookup_protected``); the others go through ``record``.
    """
    rows = []
    for rec, at in records:
        if not rec.lookup_protected:
            raise ValueError("record_many always looks protected identity up")
        rows.append(record_row(rec, at))
    return insert_rows(conn, rows)


def record_row(rec: AuditRecord, at: datetime) -> dict[str, Any]:
    """One audit record as plain values: the event's columns (``e``) and its distinct accesses (``a``), as
    ``insert_rows`` writes them and as the read-audit outbox keeps them until then."""
    params, distinct = _event_params(rec, at)
    return {"e": params, "a": [{c: getattr(x, c) for c in _ACCESS_COLUMNS} for x in distinct]}


def insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """PostgreSQL: insert audit records given as ``record_row`` values in one statement, protected identity
    looked up by the statement (R-ID-3); returns their seqs in order."""
    if conn.dialect.name != "postgresql":
        raise ValueError("insert_rows is the PostgreSQL statement; use record() elsewhere")
    events: list[dict[str, Any]] = []
    accesses: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        events.append({**row["e"], "ord": i})
        accesses.extend({**x, "ord": i} for x in row["a"])
    seqs: dict[int, int] = dict(
        conn.exec_driver_sql(
            _record_many_sql(), {"events": orjson.dumps(events).decode(), "accesses": orjson.dumps(accesses).decode()}
        ).all()
    )
    return [int(seqs[i]) for i in range(len(rows))]


def sealed_row(row: Any) -> dict[str, Any]:
    """A ``record_row`` value (as made, or read back from the read-audit outbox), checked and typed as the log
    stores it (what ``insert_sealed`` hashes must be exactly what the database keeps); ValueError when it is not
    a record, or when a value does not fit its column (the database would refuse it). Spaces past a
    ``varchar``'s length are cut, as PostgreSQL cuts them instead of refusing them."""
    e, given = (row.get("e"), row.get("a")) if isinstance(row, dict) else (None, None)
    if not isinstance(e, dict) or not isinstance(given, list):
        raise ValueError("not an audit record")
    accesses = []
    for x in given:
        if not isinstance(x, dict):
            raise ValueError("an access is not an object")
        accesses.append(_stored(_ACCESS_SPEC, x))
    return {"e": _stored(_EVENT_SPEC, e), "a": accesses}


_TIME, _BOOL, _INT, _TEXT = range(4)


def _spec(table: Any, names: tuple[str, ...]) -> tuple[tuple[str, int, bool, int | None], ...]:
    """Each column's name, kind, whether it may be NULL and its length (for ``_stored``; read once from the table)."""
    out = []
    for name in names:
        column = table.c[name]
        kind = column.type
        code = (
            _TIME
            if isinstance(kind, DateTime)
            else _BOOL
            if isinstance(kind, Boolean)
            else _INT
            if isinstance(kind, Integer)  # BigInteger too
            else _TEXT
        )
        out.append((name, code, bool(column.nullable), getattr(kind, "length", None)))
    return tuple(out)


def _stored(spec: tuple[tuple[str, int, bool, int | None], ...], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (from JSON, or as ``record_row`` made them) as the columns of ``spec`` store them; ValueError
    when a column would not store a value as it is."""
    out: dict[str, Any] = {}
    for name, code, nullable, length in spec:
        value = values.get(name)
        if value is None:
            if not nullable:
                raise ValueError(f"{name} is missing")
        elif code == _TEXT:
            if type(value) is not str:
                raise ValueError(f"{name} cannot hold {value!r}")
            if length is not None and len(value) > length:
                if value[length:].strip(" "):
                    raise ValueError(f"{name} is longer than {length} characters")
                value = value[:length]  # spaces past the length: cut, as PostgreSQL stores (and we hash) it
        elif code == _TIME:
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            if not isinstance(value, datetime) or value.tzinfo is not None:  # the log keeps UTC without an offset
                raise ValueError(f"{name} is not a time in UTC: {value!r}")
        elif (code == _INT and type(value) is not int) or (code == _BOOL and type(value) is not bool):
            raise ValueError(f"{name} cannot hold {value!r}")
        out[name] = value
    return out


_EVENT_SPEC = _spec(audit_event, _EVENT_COLUMNS)
_ACCESS_SPEC = _spec(audit_access, _ACCESS_COLUMNS)
_ACTOR_COLUMNS = _EVENT_COLUMNS[_EVENT_COLUMNS.index("actor_kind") : _EVENT_COLUMNS.index("client_id") + 1]
_ACTOR_SPEC = tuple(c for c in _EVENT_SPEC if c[0] in _ACTOR_COLUMNS)
_OWN_SPEC = tuple(c for c in _EVENT_SPEC if c[0] not in _ACTOR_COLUMNS)
# The actor's columns as stored, by actor object (the identity resolver keeps one object per signed-in user for
# a while): checked once per actor, not with every read's record. Each entry keeps its actor, so an id is not
# reused while it is here.
_CHECKED_ACTORS: dict[int, tuple[Actor, dict[str, Any]]] = {}
_MAX_CHECKED_ACTORS = 4096


def spool_line(rec: AuditRecord, at: datetime) -> bytes:
    """``rec`` as a line of the read-audit outbox: ``sealed_row(record_row(rec, at))`` as JSON, made in one pass
    on a read's way out (ValueError, as ``sealed_row``, when a value does not fit its column)."""
    own, accesses = _own_params(rec, at)
    event = {**_stored(_OWN_SPEC, own), **_checked_actor(rec.actor)}
    checked = [_stored(_ACCESS_SPEC, {c: getattr(x, c) for c in _ACCESS_COLUMNS}) for x in accesses]
    return orjson.dumps({"e": event, "a": checked}) + b"\n"


def _checked_actor(actor: Actor) -> dict[str, Any]:
    hit = _CHECKED_ACTORS.get(id(actor))
    if hit is not None and hit[0] is actor:
        return hit[1]
    part = _stored(_ACTOR_SPEC, _actor_params(actor))
    if len(_CHECKED_ACTORS) >= _MAX_CHECKED_ACTORS:
        _CHECKED_ACTORS.clear()
    _CHECKED_ACTORS[id(actor)] = (actor, part)
    return part


def lock_chain(conn: Connection) -> None:
    """Take the chain's lock (PostgreSQL: held until the transaction ends; one sealer or sealing drainer at a
    time). Read the head in a later statement: a statement's snapshot is taken before it waits for the lock."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({CHAIN_LOCK})")


def chain_head(conn: Connection) -> tuple[int, str]:
    """The chain's head, its last position and hash (the caller holds the chain's lock)."""
    head = conn.execute(
        select(audit_event.c.chain_seq, audit_event.c.hash)
        .where(audit_event.c.chain_seq.is_not(None))
        .order_by(audit_event.c.chain_seq.desc())
        .limit(1)
    ).first()
    return (int(head.chain_seq), str(head.hash)) if head else (0, GENESIS)


def insert_sealed(conn: Connection, rows: list[dict[str, Any]], head: tuple[int, str] | None = None) -> tuple[int, str]:
    """PostgreSQL: insert audit records given as ``sealed_row`` values in one statement, already chained after
    ``head`` (read with the seqs when not given; the caller holds the chain's lock, ``lock_chain``); returns
    the new head.

    The read-audit outbox's drain inserts its records this way: they are sealed as they are written, so a read's
    record is written once (sealing afterwards rewrites every row and leaves a dead tuple behind), and the
    window in which a record is protected by the triggers only closes for reads. Protected identity (R-ID-3)
    is looked up first, because the hash covers it; the records' seqs are drawn first for the same reason.
    """
    if conn.dialect.name != "postgresql":
        raise ValueError("insert_sealed is the PostgreSQL statement; use record() elsewhere")
    patients = sorted({x["patient_id"] for row in rows for x in row["a"]})
    drawn, protected_ids, last, last_hash = conn.exec_driver_sql(
        _DRAW_SQL, {"n": len(rows), "patients": patients}
    ).one()
    protected = set(protected_ids)
    position, prev = head if head is not None else (int(last or 0), str(last_hash or GENESIS))
    events: list[dict[str, Any]] = []
    accesses: list[dict[str, Any]] = []
    for seq, row in zip(sorted(drawn), rows, strict=True):
        acc = [{**x, "protected": x["protected"] or x["patient_id"] in protected} for x in row["a"]]
        event = dict(row["e"])
        if any(x["protected"] for x in acc) and "protected-identity" not in (event["flags"] or ""):
            event["flags"] = ",".join(f for f in (event["flags"], "protected-identity") if f)
        event["seq"] = seq
        position += 1
        digest = chain_hash(prev, _Values(event), [_Values(x) for x in acc])
        events.append({**event, "chain_seq": position, "prev_hash": prev, "hash": digest})
        accesses.extend({**x, "seq": seq, "recorded_at": event["recorded_at"]} for x in acc)
        prev = digest
    conn.exec_driver_sql(
        _sealed_many_sql(), {"events": orjson.dumps(events).decode(), "accesses": orjson.dumps(accesses).decode()}
    )
    return position, prev


class _Values:
    """A record's values by attribute, as ``chain_hash`` reads a row."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


# The records' seqs, which of their patients have protected identity, and the chain's head: one round trip.
_DRAW_SQL = (
    "SELECT ARRAY(SELECT nextval(pg_get_serial_sequence('audit_event', 'seq')) FROM generate_series(1, %(n)s)), "
    "ARRAY(SELECT DISTINCT patient_id FROM pdl_rule "
    "WHERE kind = 'protected' AND patient_id = ANY(%(patients)s::text[])), head.chain_seq, head.hash "
    "FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT chain_seq, hash FROM audit_event WHERE chain_seq IS NOT NULL "
    "ORDER BY chain_seq DESC LIMIT 1) AS head ON true"
)


@cache
def _sealed_many_sql() -> str:
    """PostgreSQL: records with their seqs and chain columns in one statement, as two JSON documents."""

    def columns(names: tuple[str, ...]) -> str:
        return ", ".join(f"{c} {_MANY_TYPES.get(c, 'text')}" for c in names)

    event_cols = ("seq", *_EVENT_COLUMNS, "chain_seq", "prev_hash", "hash")
    access_cols = ("seq", "recorded_at", *_ACCESS_COLUMNS)
    return (
        f"WITH ev AS (INSERT INTO audit_event ({', '.join(event_cols)}) SELECT {', '.join(event_cols)} "
        f"FROM json_to_recordset(%(events)s::json) AS u({columns(event_cols)})) "
        f"INSERT INTO audit_access ({', '.join(access_cols)}) SELECT {', '.join(access_cols)} "
        f"FROM json_to_recordset(%(accesses)s::json) AS v({columns(access_cols)})"
    )


# ---- hash chain -------------------------------------------------------------------------------
_EVENT_FIELDS = (
    "seq",
    "recorded_at",
    "action",
    "outcome",
    "actor_kind",
    "user_id",
    "user_name",
    "assignment_id",
    "unit_id",
    "provider_id",
    "purpose",
    "client_id",
    "resource_type",
    "resource_id",
    "request",
    "reason",
    "assertion_id",
    "flags",
    "patient_count",
)


def _canonical(event: Any, accesses: list[Any]) -> bytes:
    values = []
    for f in _EVENT_FIELDS:
        v = getattr(event, f)
        values.append(v.isoformat() if isinstance(v, datetime) else v)
    acc = sorted(
        # The assertion only where there is one: records sealed before the column existed keep their hashes.
        [a.patient_id, a.owner_org or "", a.owner_unit or "", a.access_type, bool(a.protected), a.action or ""]
        + ([a.assertion_id] if a.assertion_id else [])
        for a in accesses
    )
    return orjson.dumps([values, acc])


def chain_hash(prev: str, event: Any, accesses: list[Any]) -> str:
    return hashlib.sha256(prev.encode() + _canonical(event, accesses)).hexdigest()


# Records further apart than this are fetched by separate range scans (see _accesses_for).
_ACCESS_RUN_GAP = 64


def _accesses_for(conn: Connection, seqs: list[int]) -> dict[int, list[Any]]:
    """The access rows of the records ``seqs``, by record.

    The sealer and the verifier ask for thousands of records at a time, nearly consecutive. They are read
    by range scans over runs of consecutive numbers, and the rows of records not asked for (sealed in
    another round) are dropped here. Measured ad hoc on PostgreSQL with 5,000 records: 25-35 ms, where one
    ``IN`` list (or ``= ANY`` array) of the numbers took 0.7-1.1 s, most of a sealing round's time.
    """
    out: dict[int, list[Any]] = defaultdict(list)
    wanted = set(seqs)
    if not wanted:
        return out
    ordered = sorted(wanted)
    runs: list[tuple[int, int]] = []
    start = prev = ordered[0]
    for s in ordered[1:]:
        if s - prev > _ACCESS_RUN_GAP:
            runs.append((start, prev))
            start = s
        prev = s
    runs.append((start, prev))
    for low, high in runs:
        for row in conn.execute(select(audit_access).where(audit_access.c.seq.between(low, high))):
            if row.seq in wanted:
                out[row.seq].append(row)
    return out


def seal(engine: Engine, limit: int = SEAL_BATCH, wait: bool = False) -> int:
    """Chain the oldest unsealed records; safe to call from several processes (one sealer at a time).

    With ``wait`` the call queues behind another sealer instead of returning 0 at once.
    """
    pg = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        pending = conn.execute(select(audit_event.c.seq).where(audit_event.c.chain_seq.is_(None)).limit(1)).first()
        conn.rollback()
    if pending is None:
        return 0
    with engine.connect().execution_options(nara_write=True) as conn, conn.begin():
        if wait:
            lock_chain(conn)
        elif pg and not conn.exec_driver_sql(f"SELECT pg_try_advisory_xact_lock({CHAIN_LOCK})").scalar():
            return 0
        chain_seq, prev = chain_head(conn)
        rows = conn.execute(
            select(audit_event).where(audit_event.c.chain_seq.is_(None)).order_by(audit_event.c.seq).limit(limit)
        ).all()
        accesses = _accesses_for(conn, [r.seq for r in rows])
        sealed = []
        for r in rows:
            chain_seq += 1
            h = chain_hash(prev, r, accesses.get(r.seq, []))
            sealed.append({"k_seq": r.seq, "v_chain": chain_seq, "v_prev": prev, "v_hash": h})
            prev = h
        if sealed and pg:
            # One statement for the batch (the values as arrays): a statement per record cost PostgreSQL more
            # in executing statements than in updating rows.
            columns = ("k_seq", "v_chain", "v_prev", "v_hash")
            conn.exec_driver_sql(_SEAL_PG, {k: [x[k] for x in sealed] for k in columns})
        elif sealed:
            conn.execute(
                update(audit_event)
                .where(audit_event.c.seq == bindparam("k_seq"), audit_event.c.chain_seq.is_(None))
                .values(chain_seq=bindparam("v_chain"), prev_hash=bindparam("v_prev"), hash=bindparam("v_hash")),
                sealed,
            )
        return len(rows)


_SEAL_PG = (
    "UPDATE audit_event SET chain_seq = v.chain_seq, prev_hash = v.prev_hash, hash = v.hash "
    "FROM unnest(%(k_seq)s::bigint[], %(v_chain)s::bigint[], %(v_prev)s::text[], %(v_hash)s::text[]) "
    "AS v(seq, chain_seq, prev_hash, hash) WHERE audit_event.seq = v.seq AND audit_event.chain_seq IS NULL"
)


def seal_all(engine: Engine) -> int:
    total = 0
    while True:
        n = seal(engine, wait=True)
        total += n
        if n == 0:
            return total


def parse_anchor(value: str) -> tuple[int, str]:
    """An anchor as ``nara audit verify`` prints it, ``POSITION:HASH``, as (position, hash)."""
    position, sep, digest = value.strip().partition(":")
    digest = digest.lower()
    if not sep or not position.isdigit() or int(position) < 1:
        raise ValueError(f"{value!r} is not an anchor: expected POSITION:HASH, e.g. 1200:9f86d0...")
    if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
        raise ValueError(f"{value!r} is not an anchor: the hash must be 64 hexadecimal digits")
    return int(position), digest


@dataclass
class VerifyReport:
    ok: bool
    checked: int
    unsealed: int
    problem: str | None = None
    first_bad_seq: int | None = None
    head_hash: str | None = None
    head_position: int = 0  # the chain position of the last good record
    archived: int = 0  # positions before the first record present (archived past retention, vouched by an anchor)

    @property
    def head_anchor(self) -> str | None:
        """The head as ``nara audit verify --anchor`` takes it back: ``POSITION:HASH``."""
        return f"{self.head_position}:{self.head_hash}" if self.head_hash else None


def verify(
    engine: Engine,
    batch: int = 5000,
    anchors: dict[int, str] | None = None,
    archived_to: tuple[int, str] | None = None,
) -> VerifyReport:
    """Walk the chain; report the first altered, inserted or deleted record.

    ``anchors`` are heads printed by earlier runs and kept outside the database (chain position: hash). The
    chain must still hold each at its position: a chain rewritten and rehashed from an earlier record, or cut
    short, is consistent in itself and only an anchor reveals it.

    ``archived_to`` is the anchor of the last record a region archived (deleted once past the retention
    period, with every record before it): the chain then starts right after it and follows from its hash.
    Anchors of archived positions are not checked.
    """
    anchors = anchors or {}
    checked = 0
    prev = GENESIS
    expected = 1
    archived = 0
    if archived_to is not None:
        archived, prev = archived_to
        expected = archived + 1

    def broken(problem: str, seq: int | None = None) -> VerifyReport:
        good = expected - 1
        return VerifyReport(False, checked, 0, problem, seq, prev if good else None, good, archived)

    with engine.connect() as conn:
        last_seq = 0
        while True:
            rows = conn.execute(
                select(audit_event)
                .where(audit_event.c.chain_seq.is_not(None), audit_event.c.chain_seq > last_seq)
                .order_by(audit_event.c.chain_seq)
                .limit(batch)
            ).all()
            if not rows:
                break
            accesses = _accesses_for(conn, [r.seq for r in rows])
            for r in rows:
                if r.chain_seq <= archived:
                    return broken(
                        f"chain position {r.chain_seq} (seq {r.seq}) is still there: the chain was not archived to "
                        f"position {archived}",
                        r.seq,
                    )
                if r.chain_seq != expected:
                    hint = " (records archived before it need the last one's anchor)" if checked == 0 else ""
                    return broken(
                        f"chain position {expected} is missing: a record was deleted "
                        f"(next found at position {r.chain_seq}, seq {r.seq}){hint}",
                        r.seq,
                    )
                if r.prev_hash != prev:
                    return broken(f"record seq {r.seq} does not follow its predecessor (inserted or reordered)", r.seq)
                mine = accesses.get(r.seq, [])
                if chain_hash(prev, r, mine) != r.hash:
                    return broken(f"record seq {r.seq} was altered after it was sealed", r.seq)
                # An access row repeats its record's time (the log extract is read by it); the hash covers the
                # record's, so a different one is an alteration too.
                if any(a.recorded_at != r.recorded_at for a in mine):
                    return broken(f"record seq {r.seq} was altered after it was sealed (the time of an access)", r.seq)
                anchored = anchors.get(r.chain_seq)
                if anchored is not None and anchored != r.hash:
                    return broken(
                        f"chain position {r.chain_seq} (seq {r.seq}) does not have its anchored hash: the chain was "
                        "rewritten from there or earlier",
                        r.seq,
                    )
                prev = r.hash
                expected += 1
                checked += 1
            last_seq = rows[-1].chain_seq
        head = expected - 1
        if checked == 0 and archived:
            return broken(f"the chain is archived to position {archived} and no record follows it")
        beyond = sorted(p for p in anchors if p > head)
        if beyond:
            return broken(
                f"chain position {beyond[0]} is anchored but the chain ends at position {head}: "
                "records were deleted from its end"
            )
        unsealed = int(conn.execute(select(func.count()).where(audit_event.c.chain_seq.is_(None))).scalar_one())
    return VerifyReport(True, checked, unsealed, None, None, prev if head else None, head, archived)


# ---- log extract (R-LOG-3) ----------------------------------------------------------------------
@dataclass
class ExtractRow:
    time_utc: datetime
    time_local: str
    action: str
    unit_id: str | None
    provider_id: str | None
    user_name: str | None
    access_type: str
    actor_kind: str


def extract(
    conn: Connection,
    patient_id: str,
    start: datetime | None = None,
    end: datetime | None = None,
    include_names: bool = True,
    limit: int = 10_000,
    provider: str | None = None,
) -> list[ExtractRow]:
    """Who (unit, and name where configured) accessed the patient's data, when, and how; with ``provider``, only
    the accesses of that care provider's (or care giver's) users."""
    conds = [audit_access.c.patient_id == patient_id, audit_event.c.outcome == "permit"]
    if provider is not None:
        conds.append(audit_event.c.provider_id == provider)
    if start is not None:
        conds.append(audit_access.c.recorded_at >= start)
    if end is not None:
        conds.append(audit_access.c.recorded_at <= end)
    stmt = (
        select(
            audit_access.c.recorded_at,
            audit_event.c.action,
            audit_event.c.unit_id,
            audit_event.c.provider_id,
            audit_event.c.user_name,
            audit_access.c.access_type,
            audit_event.c.actor_kind,
        )
        .select_from(audit_access.join(audit_event, audit_event.c.seq == audit_access.c.seq))
        .where(*conds)
        .order_by(audit_access.c.recorded_at.desc())
        .limit(limit)
    )
    zone = local_zone()
    # Positional rows, fetched at once: about a thousand rows a patient over five years, where attribute
    # access and one fetch per row cost as much as the query itself.
    return [
        ExtractRow(
            at,
            at.replace(tzinfo=UTC).astimezone(zone).isoformat(timespec="seconds"),
            action,
            unit_id,
            provider_id,
            user_name if include_names else None,
            access_type,
            actor_kind,
        )
        for at, action, unit_id, provider_id, user_name, access_type, actor_kind in conn.execute(stmt).all()
    ]


# ---- log review (R-LOG-4) -----------------------------------------------------------------------
REVIEW_CRITERIA = (
    "own-record",
    "colleague-record",
    "same-surname",
    "same-address",
    "protected-identity",
    "vip",
    "emergency",
    "block-break",
    "no-documentation",
    "outside-care-relationship",
    "many-patients",
    "random-sample",
)


@dataclass
class ReviewItem:
    seq: int
    recorded_at: datetime
    user_id: str | None
    user_name: str | None
    unit_id: str | None
    patient_id: str | None
    action: str
    criteria: list[str]


@dataclass
class StaffFacts:
    """What the review needs to know about a staff member (from the directory)."""

    personal_numbers: set[str] = field(default_factory=set)
    surnames: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)


@dataclass
class PatientFacts:
    personal_number: str | None = None
    surnames: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)


def staff_accesses_between(start: datetime, end: datetime, provider: str | None = None) -> list[ColumnElement[bool]]:
    """The log review's events: staff accesses in [start, end), of one care provider's users when given."""
    conds = [audit_event.c.recorded_at >= start, audit_event.c.recorded_at < end, audit_event.c.actor_kind == "staff"]
    if provider is not None:
        conds.append(audit_event.c.provider_id == provider)
    return conds


def review_candidates(
    conn: Connection,
    start: datetime,
    end: datetime,
    staff: dict[str, StaffFacts],
    patients: dict[str, PatientFacts],
    vip: Iterable[str] = (),
    sample_rate: float = 0.05,
    many_patients_threshold: int = 50,
    seed: int | None = None,
    provider: str | None = None,
) -> list[ReviewItem]:
    """Accesses to review in [start, end): the targeted criteria plus a random sample (R-LOG-4); with
    ``provider``, only the accesses of that care provider's users."""
    vip_set = set(vip)
    staff_pnrs = {p: u for u, f in staff.items() for p in f.personal_numbers}
    rows = conn.execute(
        select(
            audit_event.c.seq,
            audit_event.c.recorded_at,
            audit_event.c.user_id,
            audit_event.c.user_name,
            audit_event.c.unit_id,
            audit_event.c.action,
            audit_event.c.outcome,
            audit_event.c.flags,
            audit_event.c.actor_kind,
            audit_access.c.patient_id,
            audit_access.c.access_type,
            audit_access.c.protected,
        )
        .select_from(audit_event.outerjoin(audit_access, audit_access.c.seq == audit_event.c.seq))
        .where(*staff_accesses_between(start, end, provider))
        .order_by(audit_event.c.seq)
    ).all()
    documented: set[tuple[str, str, Any]] = set()
    per_day: dict[tuple[str, Any], set[str]] = defaultdict(set)
    for r in rows:
        if r.patient_id and r.user_id:
            per_day[(r.user_id, r.recorded_at.date())].add(r.patient_id)
            if r.action in ("create", "update", "patch"):
                documented.add((r.user_id, r.patient_id, r.recorded_at.date()))
    # A reproducible sample only when a seed is given (tests, re-running a documented review).
    rng = random.Random(seed) if seed is not None else random.SystemRandom()  # noqa: S311
    items: dict[tuple[int, str | None], ReviewItem] = {}
    for r in rows:
        crit: list[str] = []
        flags = set((r.flags or "").split(","))
        sf = staff.get(r.user_id or "", StaffFacts())
        pf = patients.get(r.patient_id or "", PatientFacts())
        if pf.personal_number and pf.personal_number in sf.personal_numbers:
            crit.append("own-record")
        elif pf.personal_number and pf.personal_number in staff_pnrs:
            crit.append("colleague-record")
        if sf.surnames & pf.surnames:
            crit.append("same-surname")
        if sf.addresses & pf.addresses:
            crit.append("same-address")
        if r.protected or "protected-identity" in flags:
            crit.append("protected-identity")
        if r.patient_id in vip_set:
            crit.append("vip")
        if "emergency" in flags or r.access_type == "emergency":
            crit.append("emergency")
        if "block-break" in flags or r.access_type == "block-break":
            crit.append("block-break")
        if (
            r.patient_id
            and r.action in ("read", "search", "vread", "history", "operation")
            and (r.user_id, r.patient_id, r.recorded_at.date()) not in documented
        ):
            crit.append("no-documentation")
        if r.outcome == "deny" or "outside-care-relationship" in flags:
            crit.append("outside-care-relationship")
        if len(per_day.get((r.user_id, r.recorded_at.date()), ())) > many_patients_threshold:
            crit.append("many-patients")
        if rng.random() < sample_rate:
            crit.append("random-sample")
        targeted = [c for c in crit if c not in ("no-documentation",)]
        if targeted:
            key = (r.seq, r.patient_id)
            items[key] = ReviewItem(
                r.seq, r.recorded_at, r.user_id, r.user_name, r.unit_id, r.patient_id, r.action, crit
            )
    return sorted(items.values(), key=lambda i: (i.recorded_at, i.seq))


def store_review(
    conn: Connection,
    reviewer: str,
    events: list[int],
    finding: str,
    action: str,
    period: tuple[datetime, datetime] | None = None,
) -> int:
    """Record a completed review (reviewer, date, finding, action)."""
    return int(
        conn.execute(
            insert(audit_review)
            .values(
                reviewed_at=now_utc(),
                reviewer=reviewer,
                period_start=period[0] if period else None,
                period_end=period[1] if period else None,
                events=",".join(str(e) for e in sorted(set(events))),
                finding=finding,
                action=action,
            )
            .returning(audit_review.c.id)
        ).scalar_one()
    )


def events_between(conn: Connection, start: datetime, end: datetime, limit: int = 1000) -> list[Any]:
    return list(
        conn.execute(
            select(audit_event)
            .where(and_(audit_event.c.recorded_at >= start, audit_event.c.recorded_at < end))
            .order_by(audit_event.c.seq)
            .limit(limit)
        ).all()
    )


def default_period(days: int = 30) -> tuple[datetime, datetime]:
    end = now_utc()
    return end - timedelta(days=days), end
