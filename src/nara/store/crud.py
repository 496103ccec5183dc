"""Create, read, update, patch and delete of FHIR resources, with history and index rows.

Every public method of :class:`Tx` runs inside one database transaction that the caller opened with
:meth:`nara.store.store.Store.transaction`; a write and everything it implies (history row, index
rows, and later audit rows) commit or roll back together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import jsonpatch
import orjson
from sqlalchemy import Connection, Select, bindparam, insert, literal, select, update

from nara.fhir import validation
from nara.fhir.dates import instant, utcnow
from nara.fhir.identifiers import personal_number, written_identifiers
from nara.fhir.ids import is_valid_id, new_id
from nara.fhir.outcome import FhirError, invalid, not_found
from nara.fhir.searchparams import carrier_reference, compartment_patient, extract, patient_compartment_params
from nara.fhir.spec import spec
from nara.store.database import json_in, json_out
from nara.store.indexing import INDEX_VIEWS, delete_index, index_params, insert_index, mask_of
from nara.store.memo import Memo
from nara.store.patients import UNRESOLVED_PATIENT, patients_identified_by
from nara.store.schema import resource, resource_history

if TYPE_CHECKING:
    from nara.store.store import Store


# orjson serializes at most this many levels of nested objects and arrays.
MAX_JSON_DEPTH = 254


def _typed_patient(node: Any, value: str) -> bool:
    """Whether ``node`` names ``value`` anywhere in a Reference typed Patient (``{"type": "Patient", "identifier":
    ...}``)."""
    if isinstance(node, list):
        return any(_typed_patient(x, value) for x in node)
    if not isinstance(node, dict):
        return False
    ident = node.get("identifier")
    if node.get("type") == "Patient" and isinstance(ident, dict) and ident.get("value") == value:
        return True
    return any(_typed_patient(x, value) for x in node.values() if isinstance(x, dict | list))


@dataclass(slots=True)
class Stored:
    """One stored version of a resource as read from the database."""

    rid: int
    res_type: str
    res_id: str
    version: int
    last_updated: datetime
    deleted: bool
    content: str | None  # JSON text including meta.versionId and meta.lastUpdated
    patient_id: str | None = None
    method: str = "PUT"
    owner_org: str | None = None  # care provider that owns (documented) this version
    owner_unit: str | None = None  # unit that owns this version
    _parsed: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: Any, res_type: str | None = None, res_id: str | None = None) -> Stored:
        """The version in a row of the resource or history columns (``res_type``/``res_id``: when it lacks them)."""
        return cls(
            row.rid,
            res_type if res_type is not None else row.res_type,
            res_id if res_id is not None else row.res_id,
            row.version,
            row.last_updated,
            row.deleted,
            row.content,
            row.patient_id,
            row.method,
            row.owner_org,
            row.owner_unit,
        )

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    def resource(self) -> dict[str, Any]:
        if self._parsed is None:
            if self.content is None:
                raise FhirError(410, "deleted", f"{self.res_type}/{self.res_id} is deleted")
            self._parsed = orjson.loads(self.content)
        return self._parsed

    def json_bytes(self) -> bytes:
        if self.content is None:
            raise FhirError(410, "deleted", f"{self.res_type}/{self.res_id} is deleted")
        return self.content.encode()


@dataclass(slots=True)
class WriteResult:
    status: int  # 200 updated / 201 created / 204 deleted
    stored: Stored | None
    created: bool = False
    unchanged: bool = False  # conditional create matched, or delete of something already gone


def _apply_patch(doc: dict[str, Any], ops: list[Any]) -> Any:
    """Apply JSON Patch operations one by one. A failure names the operation and why, never a value of the
    document (the library's messages quote the document, which may hold what this user may not see)."""
    for i, op in enumerate(ops):
        what = f"operation {i} ({op.get('op')} {op.get('path')})" if isinstance(op, dict) else f"operation {i}"
        try:
            doc = jsonpatch.JsonPatch([op]).apply(doc)
        except jsonpatch.JsonPatchTestFailed:
            raise FhirError(422, "processing", f"JSON Patch {what}: the test failed") from None
        except jsonpatch.InvalidJsonPatch:
            raise FhirError(422, "processing", f"JSON Patch {what} is not a valid operation") from None
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError, IndexError):
            raise FhirError(422, "processing", f"JSON Patch {what} could not be applied: no such path") from None
    return doc


def _ensure_type(rtype: str) -> None:
    if rtype not in spec().resource_types:
        raise FhirError(404, "not-supported", f"Unknown resource type '{rtype}'")


def _ensure_id(rid: str) -> None:
    if not is_valid_id(rid):
        raise invalid(f"Invalid resource id {rid[:80]!r}: 1-64 characters of A-Z, a-z, 0-9, '-' and '.'")


def _hidden(rtype: str, rid: str) -> FhirError:
    """The answer about a resource that exists but that the policy hides from the user (a read's, a write's)."""
    return FhirError(403, "forbidden", f"Access to {rtype}/{rid} is not allowed for this user and assignment")


def parse_etag(value: str) -> int:
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    try:
        return int(v)
    except ValueError:
        raise FhirError(400, "invalid", f'Malformed ETag {value[:40]!r}; expected W/"<version>"') from None


_RESOURCE_COLS = (
    resource.c.rid,
    resource.c.res_type,
    resource.c.res_id,
    resource.c.version,
    resource.c.last_updated,
    resource.c.deleted,
    resource.c.patient_id,
    resource.c.method,
    resource.c.index_mask,
    resource.c.owner_org,
    resource.c.owner_unit,
)


class ReadRecorder(Protocol):
    """Writes the record of a read by id in the very statement that reads the resource (one round trip).

    Set on a transaction by the audit layer before a read by id runs; the store asks whether it applies to a
    read and then lets it run that read's SELECT with its parameters (``read``: the row found, or None). It
    applies to one statement at most."""

    def applies(self, rtype: str, rid: str) -> bool: ...

    def read(self, conn: Connection, stmt: Select[Any], params: dict[str, Any]) -> Any: ...


# Read-by-id statements, one per row filter (the policy's filters are cached objects, one per policy shape). A
# statement object used again keeps its SQL cache key, so a read builds no statement; the values are bound.
_READ_BY_ID: Memo[tuple[int, ...], tuple[list[Any], Select[Any]]] = Memo(1024)


class Tx:
    """The operations available inside one transaction."""

    def __init__(self, store: Store, conn: Connection, autocommit: bool = False) -> None:
        self.store = store
        self.conn = conn
        self.pg = store.postgres
        # True on PostgreSQL's autocommit read pool: every statement commits on its own.
        self.autocommit = autocommit
        self.validate = store.validate
        # Hooks run after each successful write inside the same transaction (audit, access rules).
        self.after_write: list[Callable[[str, Stored], None]] = [partial(h, self) for h in store.write_hooks]
        # The access policy for this transaction's actor (nara.security.policy.Policy), or None (no policy).
        self.policy: Any = None
        self.actor: Any = None
        # Index rows are written in batches: before any search in this transaction, and before commit.
        self._pending_index: dict[str, list[dict[str, Any]]] = {}
        # Run by flush(), after the index rows: other buffered writers (the audit trail batches its records).
        self.flush_hooks: list[Callable[[], None]] = []
        # The audit layer's recorder for this request's read by id, if its record is written by the read itself.
        self.read_recorder: ReadRecorder | None = None
        # The versions written here into the compartment ?unresolved (naming a personal identity number no Patient
        # carried when they were written), and whether a Patient has been written since they were last resolved:
        # she may be registered by a later entry of the same transaction (see settle_unresolved).
        self._unresolved: list[Stored] = []
        self._patient_written = False

    def _queue_index(self, batches: dict[str, list[dict[str, Any]]]) -> None:
        for kind, rows in batches.items():
            self._pending_index.setdefault(kind, []).extend(rows)

    def drop_pending_index(self, drop: Callable[[dict[str, Any]], bool]) -> None:
        """Forget the index rows this transaction has yet to write for which ``drop(row)`` holds (a write hook
        that learns they must not be indexed after all)."""
        for kind, rows in self._pending_index.items():
            self._pending_index[kind] = [r for r in rows if not drop(r)]

    def _unqueue_index(self, rid: int) -> None:
        for kind, rows in self._pending_index.items():
            self._pending_index[kind] = [r for r in rows if r["rid"] != rid]

    def flush(self) -> None:
        """Write queued index rows (called before searches and at commit), after giving what this transaction
        wrote into ``?unresolved`` to a Patient it has registered since (``settle_unresolved``)."""
        if self._unresolved and self._patient_written:
            self.settle_unresolved()
        self._flush_index()
        for hook in self.flush_hooks:
            hook()

    def settle_unresolved(self) -> None:
        """Give the resources this transaction wrote into ``?unresolved`` to their patient when a Patient written in
        it carries the number they name (R-ACC-1): a transaction that names the patient in an entry before the one
        that registers her, or in plain POSTs created together (``create_many`` extracts every entry before it
        writes one). Their rows and index rows get her compartment and their access rules are derived, as
        ``nara reindex`` does for a resource (no new version); the versions this transaction reported (to the
        audit trail) name her too. Run by ``flush``, so before the commit and before any search after the write."""
        from nara.store.reindex import resolve_unresolved  # reindex builds on Tx

        waiting, self._unresolved, self._patient_written = self._unresolved, [], False
        moved = resolve_unresolved(self, [st.rid for st in waiting])
        for st in waiting:
            if st.rid in moved:
                st.patient_id = moved[st.rid]
            else:
                self._unresolved.append(st)  # still no one's (or changed since): a later Patient may be hers

    def _flush_index(self) -> None:
        if self._pending_index:
            pending, self._pending_index = self._pending_index, {}
            insert_index(self.conn, {k: v for k, v in pending.items() if v})

    # ---- reads ---------------------------------------------------------------------------------
    def _current(self, rtype: str, rid: str, for_update: bool = False) -> Any:
        q = select(*_RESOURCE_COLS).where(resource.c.res_type == rtype, resource.c.res_id == rid)
        if for_update and self.pg:
            q = q.with_for_update()
        return self.conn.execute(q).first()

    def visible(self, table: Any, rtype: str | None = None) -> list[Any]:
        """The policy's row filter for ``table`` (resource or resource_history; rows of ``rtype``, None: any
        type), as WHERE conditions."""
        if self.policy is None:
            return []
        cond = self.policy.row_filter(table, rtype)
        return [] if cond is None else [cond]

    def _read_by_id(self, rtype: str) -> Select[Any]:
        """The read-by-id statement under this transaction's row filter (values bound as read_type, read_id)."""
        conds = self.visible(resource, rtype)
        key = (int(self.pg), *(id(c) for c in conds))  # the memo's entry keeps the conditions (and their ids) alive

        def build() -> tuple[list[Any], Select[Any]]:
            stmt = select(*_RESOURCE_COLS, json_out(resource.c.content, self.pg).label("content")).where(
                resource.c.res_type == bindparam("read_type"), resource.c.res_id == bindparam("read_id"), *conds
            )
            return conds, stmt

        return _READ_BY_ID.get(key, build)[1]

    def hidden_or_missing(self, rtype: str, rid: str) -> NoReturn:
        """Raise 403 when the resource exists but the policy hides it, else 404."""
        if self.policy is not None and self._current(rtype, rid) is not None:
            raise _hidden(rtype, rid)
        raise not_found(f"{rtype}/{rid} is not known")

    def _current_as_seen(self, cur: Any, rtype: str, rid: str) -> dict[str, Any] | None:
        """The current content of ``cur`` (a row of ``_current``) as the policy lets this writer read it: a writer
        changes only what it may read, and learns nothing else about it first (its version, its labels); 403
        otherwise, as a read answers. None without a policy, or when the resource is deleted."""
        if self.policy is None or cur.deleted:
            return None
        content = self.conn.execute(
            select(json_out(resource.c.content, self.pg)).where(
                resource.c.rid == cur.rid, *self.visible(resource, rtype)
            )
        ).scalar()
        if content is None:
            raise _hidden(rtype, rid)
        loaded: dict[str, Any] = orjson.loads(content)
        return loaded

    def read(self, rtype: str, rid: str) -> Stored:
        _ensure_type(rtype)
        _ensure_id(rid)
        stmt = self._read_by_id(rtype)
        params = {"read_type": rtype, "read_id": rid}
        recorder = self.read_recorder
        if recorder is not None and recorder.applies(rtype, rid):
            row = recorder.read(self.conn, stmt, params)
        else:
            row = self.conn.execute(stmt, params).first()
        if row is None:
            self.hidden_or_missing(rtype, rid)
        st = Stored.from_row(row, rtype, rid)
        if st.deleted:
            raise FhirError(410, "deleted", f"{rtype}/{rid} was deleted", headers={"ETag": st.etag})
        return st

    def read_optional(self, rtype: str, rid: str) -> Stored | None:
        try:
            return self.read(rtype, rid)
        except FhirError as e:
            if e.status in (404, 410):
                return None
            raise

    def vread(self, rtype: str, rid: str, vid: str) -> Stored:
        _ensure_type(rtype)
        _ensure_id(rid)
        try:
            version = int(vid)
        except ValueError:
            raise not_found(f"Version '{vid[:20]}' of {rtype}/{rid} is not known") from None
        for table in (resource, resource_history):
            row = self.conn.execute(
                select(
                    table.c.rid,
                    table.c.version,
                    table.c.last_updated,
                    table.c.deleted,
                    table.c.patient_id,
                    table.c.method,
                    table.c.owner_org,
                    table.c.owner_unit,
                    json_out(table.c.content, self.pg).label("content"),
                ).where(
                    table.c.res_type == rtype,
                    table.c.res_id == rid,
                    table.c.version == version,
                    *self.visible(table, rtype),
                )
            ).first()
            if row is not None:
                st = Stored.from_row(row, rtype, rid)
                if st.deleted:
                    raise FhirError(410, "deleted", f"Version {version} of {rtype}/{rid} is a deletion")
                return st
        if self.policy is not None and self._current(rtype, rid) is not None and not self.sees(rtype, rid):
            raise _hidden(rtype, rid)  # as a read of it answers (logged); not which versions exist
        raise not_found(f"Version {version} of {rtype}/{rid} is not known")

    def sees(self, rtype: str, rid: str) -> bool:
        """Whether the resource's current row exists and the policy lets this transaction's user see it."""
        q = select(resource.c.rid).where(
            resource.c.res_type == rtype, resource.c.res_id == rid, *self.visible(resource, rtype)
        )
        return self.conn.execute(q).first() is not None

    # ---- writes --------------------------------------------------------------------------------
    def _prepare(
        self, body: Any, rtype: str, rid: str, version: int, now: datetime, kept: validation.Kept | None = None
    ) -> tuple[dict[str, Any], str]:
        """The resource as stored (server meta, the writer's label), validated: ``kept`` gives the identifiers of
        the version it replaces (``validation.check``)."""
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object (a FHIR resource)")
        if body.get("resourceType") != rtype:
            raise invalid(
                f"resourceType {body.get('resourceType')!r} does not match the endpoint type {rtype}",
                ["resourceType"],
            )
        meta = dict(body["meta"]) if isinstance(body.get("meta"), dict) else {}
        meta["versionId"] = str(version)
        meta["lastUpdated"] = instant(now)
        res = {"resourceType": rtype, "id": rid, "meta": meta}
        res.update((k, v) for k, v in body.items() if k not in res)
        if self.policy is not None:
            res = self.policy.labelled_for_writer(res)
        if self.validate:
            validation.check(res, kept=kept)
        try:
            return res, orjson.dumps(res).decode()
        except orjson.JSONEncodeError:
            raise invalid(f"The resource is nested too deeply (more than {MAX_JSON_DEPTH} levels)", [rtype]) from None

    def _now_after(self, previous: datetime | None) -> datetime:
        now = utcnow().replace(tzinfo=None)
        if previous is not None and now <= previous:
            now = previous + timedelta(microseconds=1)
        return now

    def _index(self, res: dict[str, Any]) -> tuple[Any, str | None, int]:
        """The index rows, compartment patient and index mask of ``res`` (as the registered index views show it)."""
        for view in INDEX_VIEWS:
            res = view(self.conn, res)
        rows = extract(res)
        patient = compartment_patient(res, rows)
        if patient is None:
            patient = self._identified_patient(res, rows)
        carrier = carrier_reference(res) if patient is None else None
        if carrier is not None:  # a Binary or document about another resource: that resource's patient
            found = self._current(*carrier) if carrier[0] in spec().resource_types else None
            patient = found.patient_id if found is not None else None
        return rows, patient, mask_of(rows)

    def _identified_patient(self, res: dict[str, Any], rows: Any) -> str | None:
        """The Patient a resource names by identifier (a personnummer) rather than by reference: in a reference
        of its patient compartment (or its ``subject``/``patient``), or as a contained Patient. That Patient is
        its compartment, so that the access policy and the patient's own searches treat the data as hers. A
        personal identity number, a reference typed Patient or a contained Patient that no single Patient
        carries gives ``UNRESOLVED_PATIENT``: the data is about a person, and stored as no one's it would be
        readable by whoever may read data without a patient. Other identifiers (a device's) leave it None."""
        params = patient_compartment_params(res["resourceType"])
        if not params:
            return None
        named = [
            (system, value)
            for code, (_t, target, _url, system, value) in rows.reference
            if target is None and value and (code in params or code in ("subject", "patient"))
        ]
        contained = [
            (i.get("system"), i["value"])
            for c in res.get("contained") or []
            if isinstance(c, dict) and c.get("resourceType") == "Patient"
            for i in c.get("identifier") or []
            if isinstance(i, dict) and isinstance(i.get("value"), str)
        ]
        if not named and not contained:
            return None
        self._flush_index()  # a Patient written earlier in this transaction is found too
        for system, value in [*named, *contained]:
            found = patients_identified_by(self.conn, system, value)
            if len(found) == 1:
                return found[0]
        person = bool(contained) or any(
            personal_number(system, value) is not None or _typed_patient(res, value) for system, value in named
        )
        return UNRESOLVED_PATIENT if person else None

    def create(
        self, body: Any, rtype: str | None = None, *, if_none_exist: str | None = None, rid: str | None = None
    ) -> WriteResult:
        """POST: a new resource with a server-assigned id (``rid`` is for transaction-internal ids)."""
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object (a FHIR resource)")
        rtype = rtype or body.get("resourceType")
        if not isinstance(rtype, str):
            raise invalid("Missing resourceType")
        _ensure_type(rtype)
        if if_none_exist:
            matches = self.match(rtype, if_none_exist, limit=2)
            if len(matches) > 1:
                raise FhirError(412, "duplicate", f"If-None-Exist '{if_none_exist}' matches more than one resource")
            if matches:
                return WriteResult(200, matches[0], created=False, unchanged=True)
        return self._insert(body, rtype, rid or new_id(), "POST")

    def _insert(self, body: Any, rtype: str, rid: str, method: str) -> WriteResult:
        now = self._now_after(None)
        res, text = self._prepare(body, rtype, rid, 1, now)
        rows, patient, mask = self._index(res)
        owner_org, owner_unit = self._owner(None)
        if self.policy is not None:
            self.policy.check_write(self, "create", rtype, res, patient, None)
        new_rid = self.conn.execute(
            insert(resource)
            .values(
                res_type=rtype,
                res_id=rid,
                version=1,
                patient_id=patient,
                owner_org=owner_org,
                owner_unit=owner_unit,
                last_updated=now,
                deleted=False,
                method=method,
                index_mask=mask,
                content=json_in("content", self.pg),
            )
            .returning(resource.c.rid),
            {"content": text},
        ).scalar_one()
        self._queue_index(index_params(new_rid, rtype, patient, rows))
        st = Stored(new_rid, rtype, rid, 1, now, False, text, patient, method, owner_org, owner_unit, res)
        self._after(method, st)
        return WriteResult(201, st, created=True)

    def _owner(self, cur: Any) -> tuple[str | None, str | None]:
        """The owner stamped on a new version: the writing actor's provider and unit (from the policy, never
        from the body); writers without an assignment keep the previous owner."""
        owner = self.policy.owner() if self.policy is not None else (None, None)
        if owner == (None, None) and cur is not None:
            return cur.owner_org, cur.owner_unit
        return owner

    def create_many(self, items: list[tuple[Any, str, str]]) -> list[WriteResult]:
        """Several creates (body, type, new id) in one multi-row INSERT: a transaction's plain POSTs.

        Each resource is validated, stamped, indexed and checked by the policy exactly as ``create``
        does; a failure raises a FhirError whose ``item`` attribute is the failing position.
        """
        if not items:
            return []
        now = self._now_after(None)
        owner_org, owner_unit = self._owner(None)
        prepared = []
        for n, (body, rtype, rid) in enumerate(items):
            try:
                _ensure_type(rtype)
                _ensure_id(rid)
                res, text = self._prepare(body, rtype, rid, 1, now)
                rows, patient, mask = self._index(res)
                if self.policy is not None:
                    self.policy.check_write(self, "create", rtype, res, patient, None)
            except FhirError as e:
                e.item = n  # type: ignore[attr-defined]
                raise
            prepared.append((rtype, rid, res, text, rows, patient, mask))
        stmt = (
            insert(resource)
            .values(content=json_in("content_json", self.pg))
            .returning(resource.c.rid, sort_by_parameter_order=True)
        )
        params = [
            {
                "res_type": rtype,
                "res_id": rid,
                "version": 1,
                "patient_id": patient,
                "owner_org": owner_org,
                "owner_unit": owner_unit,
                "last_updated": now,
                "deleted": False,
                "method": "POST",
                "index_mask": mask,
                "content_json": text,
            }
            for rtype, rid, _res, text, _rows, patient, mask in prepared
        ]
        rids = self.conn.execute(stmt, params).scalars().all()
        results = []
        for (rtype, rid, res, text, rows, patient, _mask), new_rid in zip(prepared, rids, strict=True):
            self._queue_index(index_params(new_rid, rtype, patient, rows))
            st = Stored(new_rid, rtype, rid, 1, now, False, text, patient, "POST", owner_org, owner_unit, res)
            self._after("POST", st)
            results.append(WriteResult(201, st, created=True))
        return results

    def _after(self, method: str, st: Stored) -> None:
        if st.patient_id == UNRESOLVED_PATIENT and not st.deleted:
            self._unresolved.append(st)
        elif st.res_type == "Patient" and not st.deleted:
            self._patient_written = True
        for hook in self.after_write:
            hook(method, st)

    def _archive(self, rid: int) -> None:
        """Copy the current row of ``rid`` into history (server-side, without reading its content)."""
        cols = [
            "rid",
            "res_type",
            "res_id",
            "version",
            "patient_id",
            "owner_org",
            "owner_unit",
            "last_updated",
            "deleted",
            "method",
            "content",
        ]
        self.conn.execute(
            insert(resource_history).from_select(
                cols, select(*(resource.c[c] for c in cols)).where(resource.c.rid == rid)
            )
        )

    def update(self, rtype: str, rid: str, body: Any, *, if_match: str | None = None) -> WriteResult:
        """PUT: replace, or create with the client's id when it does not exist (update-as-create)."""
        _ensure_type(rtype)
        _ensure_id(rid)
        if isinstance(body, dict) and body.get("id") is not None and body.get("id") != rid:
            raise invalid(f"Resource id {body.get('id')!r} does not match the URL id {rid!r}", ["id"])
        if isinstance(body, dict) and "id" not in body:
            raise invalid("The resource in an update must carry the id of the URL", ["id"])
        cur = self._current(rtype, rid, for_update=True)
        if cur is None:
            if if_match is not None:
                raise FhirError(412, "conflict", f"If-Match given but {rtype}/{rid} does not exist")
            return self._insert(body, rtype, rid, "PUT")
        existing = self._current_as_seen(cur, rtype, rid)
        if if_match is not None and parse_etag(if_match) != cur.version:
            raise FhirError(
                412, "conflict", f"Version conflict: {rtype}/{rid} is at version {cur.version}, not {if_match}"
            )
        return self._replace(cur, body, rtype, rid, "PUT", existing)

    def _replace(
        self, cur: Any, body: Any, rtype: str, rid: str, method: str, existing: dict[str, Any] | None
    ) -> WriteResult:
        """A new version of ``cur``; ``existing`` is its current content as the writer may read it."""
        if self.policy is not None and existing is not None and isinstance(body, dict):
            body = self.policy.keep_register_data(self, rtype, existing, body)
        version = cur.version + 1
        now = self._now_after(cur.last_updated)
        res, text = self._prepare(body, rtype, rid, version, now, self._kept_identifiers(cur, existing))
        rows, patient, mask = self._index(res)
        owner_org, owner_unit = self._owner(cur)
        if self.policy is not None:
            self.policy.check_write(self, "update", rtype, res, patient, (cur.owner_org, cur.owner_unit), existing)
        self._archive(cur.rid)
        result = self.conn.execute(
            update(resource)
            .where(resource.c.rid == cur.rid, resource.c.version == cur.version)
            .values(
                version=version,
                patient_id=patient,
                owner_org=owner_org,
                owner_unit=owner_unit,
                last_updated=now,
                deleted=False,
                method=method,
                index_mask=mask,
                content=json_in("content", self.pg),
            ),
            {"content": text},
        )
        if result.rowcount != 1:
            raise FhirError(409, "conflict", f"{rtype}/{rid} was changed concurrently; retry")
        self._unqueue_index(cur.rid)
        delete_index(self.conn, cur.rid, cur.index_mask)
        self._queue_index(index_params(cur.rid, rtype, patient, rows))
        st = Stored(cur.rid, rtype, rid, version, now, False, text, patient, method, owner_org, owner_unit, res)
        self._after(method, st)
        return WriteResult(201 if cur.deleted else 200, st, created=bool(cur.deleted))

    def _kept_identifiers(self, cur: Any, existing: dict[str, Any] | None) -> validation.Kept:
        """The identifiers of ``cur``'s stored content, for ``validation.check`` (read only when it asks)."""

        def kept() -> frozenset[tuple[str, str, str]]:
            if existing is not None:
                return written_identifiers(existing)
            content = self.conn.execute(
                select(json_out(resource.c.content, self.pg)).where(resource.c.rid == cur.rid)
            ).scalar()
            return written_identifiers(orjson.loads(content)) if content is not None else frozenset()

        return kept

    def patch(self, rtype: str, rid: str, patch: Any, *, if_match: str | None = None) -> WriteResult:
        """JSON Patch (RFC 6902) applied to the current version."""
        _ensure_type(rtype)
        _ensure_id(rid)
        if not isinstance(patch, list):
            raise invalid("A JSON Patch body must be an array of operations")
        cur = self._current(rtype, rid, for_update=True)
        if cur is None or cur.deleted:
            raise (
                not_found(f"{rtype}/{rid} is not known")
                if cur is None
                else FhirError(410, "deleted", f"{rtype}/{rid} was deleted")
            )
        existing = self._current_as_seen(cur, rtype, rid)
        if if_match is not None and parse_etag(if_match) != cur.version:
            raise FhirError(412, "conflict", f"Version conflict: {rtype}/{rid} is at version {cur.version}")
        if existing is None or self.policy is None:
            current = self.read(rtype, rid).resource()
        else:
            current = self.policy.shown_for_writing(self, rtype, existing)
        patched = _apply_patch(current, patch)
        if not isinstance(patched, dict) or patched.get("id") != rid or patched.get("resourceType") != rtype:
            raise FhirError(422, "processing", "JSON Patch must not change resourceType or id")
        return self._replace(cur, patched, rtype, rid, "PATCH", existing)

    def delete(self, rtype: str, rid: str) -> WriteResult:
        _ensure_type(rtype)
        _ensure_id(rid)
        cur = self._current(rtype, rid, for_update=True)
        if cur is None:
            raise not_found(f"{rtype}/{rid} is not known")
        if cur.deleted:
            if self.policy is not None and not self.sees(rtype, rid):
                raise _hidden(rtype, rid)  # as a read of it answers: not whether it was there and is gone
            return WriteResult(204, None, unchanged=True)
        existing = self._current_as_seen(cur, rtype, rid)
        if self.policy is not None:
            self.policy.check_write(
                self, "delete", rtype, None, cur.patient_id, (cur.owner_org, cur.owner_unit), existing
            )
        version = cur.version + 1
        now = self._now_after(cur.last_updated)
        self._archive(cur.rid)
        self.conn.execute(
            update(resource)
            .where(resource.c.rid == cur.rid)
            .values(
                version=version, last_updated=now, deleted=True, method="DELETE", index_mask=0, content=literal(None)
            )
        )
        self._unqueue_index(cur.rid)
        delete_index(self.conn, cur.rid, cur.index_mask)
        st = Stored(
            cur.rid, rtype, rid, version, now, True, None, cur.patient_id, "DELETE", cur.owner_org, cur.owner_unit
        )
        self._after("DELETE", st)
        return WriteResult(204, st)

    # ---- conditional interactions --------------------------------------------------------------
    def match(self, rtype: str, query: str, limit: int = 2) -> list[Stored]:
        """Resources of ``rtype`` matching a search query string (for conditional interactions)."""
        from nara.store.search import search_ids

        self.flush()
        return search_ids(self, rtype, query, limit=limit)

    def conditional_update(
        self, rtype: str, query: str, body: Any, *, if_match: str | None = None, new_rid: str | None = None
    ) -> WriteResult:
        """PUT Type?criteria: update the one match, or create (with the body's id, else ``new_rid`` or a new id)."""
        _ensure_type(rtype)
        matches = self.match(rtype, query, limit=2)
        body_id = body.get("id") if isinstance(body, dict) else None
        if len(matches) > 1:
            raise FhirError(412, "multiple-matches", f"Conditional update '{query}' matches more than one resource")
        if not matches:
            if body_id is not None:
                _ensure_id(body_id)
                if self._current(rtype, body_id) is not None:
                    if self.policy is not None:
                        self.read_optional(rtype, body_id)  # one the policy hides: 403, as a read answers (logged)
                    raise FhirError(
                        409, "conflict", f"No match for '{query}', but {rtype}/{body_id} exists with other content"
                    )
                return self._insert(body, rtype, body_id, "PUT")
            return self._insert(body, rtype, new_rid or new_id(), "POST")
        found = matches[0]
        if body_id is not None and body_id != found.res_id:
            raise invalid(f"Resource id {body_id!r} does not match the resource found ({found.res_id})", ["id"])
        if isinstance(body, dict):
            body = {**body, "id": found.res_id}
        return self.update(rtype, found.res_id, body, if_match=if_match)

    def conditional_delete(self, rtype: str, query: str, *, multiple: bool = False) -> WriteResult:
        _ensure_type(rtype)
        limit = self.store.max_conditional_delete if multiple else 2
        matches = self.match(rtype, query, limit=limit + 1 if multiple else 2)
        if len(matches) > 1 and not multiple:
            raise FhirError(412, "multiple-matches", f"Conditional delete '{query}' matches more than one resource")
        if multiple and len(matches) > limit:
            raise FhirError(412, "too-costly", f"Conditional delete '{query}' matches more than {limit} resources")
        if not matches:
            return WriteResult(204, None, unchanged=True)
        last: WriteResult | None = None
        for m in matches:
            last = self.delete(rtype, m.res_id)
        assert last is not None
        return last
