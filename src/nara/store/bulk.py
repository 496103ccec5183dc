"""Bulk loading of new resources: the rows the normal write path would produce, written in large batches.

:class:`BulkLoader` takes resources with their ids already set (a generator's or an export's) and writes,
per batch and in one transaction, the ``resource`` rows, the ``sp_*`` index rows and the rows of the store's
write hooks (access-rule indexes and the like). Content, index rows and hook rows are the ones
:class:`~nara.store.crud.Tx` produces for a create: the same preparation (``meta.versionId``/``lastUpdated``,
validation), the same extraction (:func:`nara.fhir.searchparams.extract`, ``compartment_patient``) and the same
index parameters (:func:`nara.store.indexing.index_params` / ``mask_of``).

On PostgreSQL the rows go in with ``COPY`` (rids reserved from the ``resource`` sequence); on SQLite with
batched ``INSERT`` statements (rids allocated under the write lock). Only new resources can be bulk loaded:
an id that already exists makes the batch fail with a conflict and nothing of that batch is written.

A resource that names its patient by personnummer finds her only among the Patients of earlier batches (a
batch's index rows are written after its resources are extracted): one whose Patient comes in the same batch or
a later one is stored in the compartment ``?unresolved`` and given to her when the load finishes (``finish``,
which the context manager calls), as ``nara reindex`` would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, func, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Delete, Insert

from nara.fhir.outcome import FhirError
from nara.store.crud import Stored, Tx
from nara.store.indexing import INDEX_TABLES, index_params, insert_index
from nara.store.patients import UNRESOLVED_PATIENT
from nara.store.reindex import resolve_unresolved
from nara.store.schema import resource
from nara.store.store import Store, translate_db_error

RESOURCE_COLUMNS = (
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
    "index_mask",
    "content",
)
Owner = tuple[str | None, str | None]


@dataclass
class BulkStats:
    resources: int = 0
    index_rows: int = 0
    hook_rows: int = 0
    batches: int = 0
    resolved: int = 0  # resources given to a Patient loaded after them (out of ?unresolved) when the load finished


_INDEX_TABLES = frozenset(INDEX_TABLES.values())


class _HookConnection:
    """What a write hook sees as ``tx.conn`` during a bulk load.

    Every resource in a bulk load is new, so no row can refer to its rid yet: a hook's DELETE of rows derived
    from an earlier version has nothing to delete and is skipped, and its INSERTs are collected and written
    together with the batch. A DELETE of search-index rows runs: the batch's own are written before its hooks
    run, and a hook may take some out of the index (a protected patient's household's address, R-ID-3).
    Anything else (reads) runs on the real connection.
    """

    def __init__(self, conn: Connection, sink: dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]]) -> None:
        self._conn = conn
        self._sink = sink

    def execute(self, statement: Any, parameters: Any = None, **kw: Any) -> Any:
        if isinstance(statement, Delete):
            return self._conn.execute(statement, parameters, **kw) if statement.table in _INDEX_TABLES else None
        plain_insert = isinstance(statement, Insert) and not getattr(statement, "_returning", ())
        if plain_insert and isinstance(statement.table, Table) and parameters is not None:
            rows = parameters if isinstance(parameters, list) else [parameters]
            for row in rows:
                self._sink.setdefault((statement.table, tuple(row)), []).append(row)
            return None
        return self._conn.execute(statement, parameters, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class BulkLoader:
    """Buffer new resources and write them ``batch_size`` at a time; use as a context manager.

    ``add(res, owner=(provider, unit))`` stamps the owner columns that the normal path takes from the writing
    actor's assignment. ``on_batch`` is called with the number of resources after each committed batch. A load
    ends with ``finish`` (the context manager's exit): the last batch, then the resources that named a Patient
    loaded after them.
    """

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 5000,
        method: str = "PUT",
        on_batch: Callable[[int], None] | None = None,
        validate: bool | None = None,
    ) -> None:
        self.store = store
        # Structural validation of every resource, as on the normal path (None: the store's setting).
        self.validate = store.validate if validate is None else validate
        self.batch_size = batch_size
        self.method = method
        self.on_batch = on_batch
        self.stats = BulkStats()
        self._pending: list[tuple[dict[str, Any], Owner]] = []
        # The resources this load stored in ?unresolved (rids), and whether it has loaded a Patient who may be theirs.
        self._unresolved: list[int] = []
        self._loaded_patient = False

    def __enter__(self) -> BulkLoader:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.finish()

    def finish(self) -> None:
        """End the load: write the buffered resources, then give those this load stored in ``?unresolved`` to the
        Patient carrying the number they name where the load registered her after them (R-ACC-1), in
        transactions of ``batch_size`` resources, as ``nara reindex`` does for a resource."""
        self.flush()
        waiting, self._unresolved = self._unresolved, []
        if not self._loaded_patient:
            return
        for start in range(0, len(waiting), self.batch_size):
            with self.store.transaction() as tx:
                self.stats.resolved += len(resolve_unresolved(tx, waiting[start : start + self.batch_size]))

    def add(self, res: dict[str, Any], owner: Owner = (None, None)) -> None:
        self._pending.append((res, owner))
        if len(self._pending) >= self.batch_size:
            self.flush()

    def add_all(self, resources: Iterable[dict[str, Any]], owner: Owner = (None, None)) -> None:
        for res in resources:
            self.add(res, owner)

    def flush(self) -> None:
        """Write the buffered resources in one transaction and commit it."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            with self.store.engine.connect() as conn, conn.execution_options(nara_write=True).begin():
                stored = self._write(conn, batch)
        except DBAPIError as exc:
            raise translate_db_error(exc) from exc
        self._unresolved.extend(st.rid for st in stored if st.patient_id == UNRESOLVED_PATIENT)
        self._loaded_patient = self._loaded_patient or any(st.res_type == "Patient" for st in stored)
        self.stats.batches += 1
        self.stats.resources += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch))

    def analyze(self) -> None:
        """Refresh the planner statistics after a large load (PostgreSQL; SQLite's ANALYZE otherwise)."""
        with self.store.engine.connect() as conn:
            if self.store.postgres:  # whole-database statistics outlast the store's per-statement timeout
                conn.execute(text("SET LOCAL statement_timeout = 0"))
            conn.execute(text("ANALYZE"))
            conn.commit()

    # ---- one batch --------------------------------------------------------------------------------
    def _write(self, conn: Connection, batch: Sequence[tuple[dict[str, Any], Owner]]) -> list[Stored]:
        pg = self.store.postgres
        if pg:
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            conn.execute(text("SET LOCAL statement_timeout = 0"))
        tx = Tx(self.store, conn)
        tx.validate = self.validate
        rids = self._reserve_rids(conn, len(batch))
        resource_rows: list[tuple[Any, ...]] = []
        index: dict[str, list[dict[str, Any]]] = {}
        stored: list[Stored] = []
        for (body, (owner_org, owner_unit)), rid in zip(batch, rids, strict=True):
            rtype = body.get("resourceType")
            res_id = body.get("id")
            if not isinstance(rtype, str) or not isinstance(res_id, str):
                raise FhirError(400, "invalid", "A bulk-loaded resource needs resourceType and id")
            now: datetime = tx._now_after(None)
            try:
                res, content = tx._prepare(body, rtype, res_id, 1, now)
            except FhirError as e:
                e.issues[0].diagnostics = f"{rtype}/{res_id}: {e.issues[0].diagnostics}"
                raise
            rows, patient, mask = tx._index(res)
            resource_rows.append(
                (rid, rtype, res_id, 1, patient, owner_org, owner_unit, now, False, self.method, mask, content)
            )
            for kind, params in index_params(rid, rtype, patient, rows).items():
                index.setdefault(kind, []).extend(params)
            stored.append(
                Stored(
                    rid=rid,
                    res_type=rtype,
                    res_id=res_id,
                    version=1,
                    last_updated=now,
                    deleted=False,
                    content=content,
                    patient_id=patient,
                    method=self.method,
                    owner_org=owner_org,
                    owner_unit=owner_unit,
                    _parsed=res,
                )
            )
        if pg:
            self._copy(conn, resource, RESOURCE_COLUMNS, resource_rows)
            for kind, params in index.items():
                table = INDEX_TABLES[kind]
                cols = tuple(params[0])
                self._copy(conn, table, cols, [tuple(p[c] for c in cols) for p in params])
        else:
            conn.execute(insert(resource), [dict(zip(RESOURCE_COLUMNS, r, strict=True)) for r in resource_rows])
            insert_index(conn, index)
        self.stats.index_rows += sum(len(v) for v in index.values())
        self._run_hooks(conn, stored)
        return stored

    def _reserve_rids(self, conn: Connection, n: int) -> list[int]:
        if self.store.postgres:
            rows = conn.execute(
                text("SELECT nextval(pg_get_serial_sequence('resource', 'rid')) FROM generate_series(1, :n)"),
                {"n": n},
            ).all()
            return [int(r[0]) for r in rows]
        # SQLite: the transaction holds the write lock (BEGIN IMMEDIATE), so max(rid) cannot move under us.
        top = conn.execute(select(func.coalesce(func.max(resource.c.rid), 0))).scalar_one()
        return list(range(int(top) + 1, int(top) + 1 + n))

    @staticmethod
    def _copy(conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        raw = conn.connection.driver_connection
        assert raw is not None
        cols = ", ".join(f'"{c}"' for c in columns)
        statement = f'COPY "{table.name}" ({cols}) FROM STDIN'
        try:
            with raw.cursor() as cur, cur.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        except raw.Error as exc:  # the driver's own error: wrap it as SQLAlchemy would
            raise DBAPIError.instance(statement, None, exc, type(raw).Error) from exc

    def _run_hooks(self, conn: Connection, stored: list[Stored]) -> None:
        hooks: list[Callable[..., None]] = list(getattr(self.store, "write_hooks", []))
        if not hooks:
            return
        sink: dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]] = {}
        hook_tx = Tx(self.store, _HookConnection(conn, sink))  # type: ignore[arg-type]
        for st in stored:
            for hook in hooks:
                hook(hook_tx, self.method, st)
        for (table, cols), rows in sink.items():
            if self.store.postgres:
                self._copy(conn, table, cols, [tuple(r[c] for c in cols) for r in rows])
            else:
                conn.execute(insert(table), rows)
            self.stats.hook_rows += len(rows)
