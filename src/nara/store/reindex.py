"""Rebuilding the search index rows of stored resources (``nara reindex``).

Needed after the extraction rules change (a new Nära version, a fixed parameter): every current
resource is read back, its index rows are extracted again, and its old rows, ``index_mask`` and
``patient_id`` are replaced. The rows other layers derive from each write (``DEFAULT_WRITE_HOOKS``: the
access rules, care relationships and consents, that the security layer keeps) are derived again too, so
that rules changed in a new version also apply to data written before it.

The same work for a few resources (``reindex_resources``) also settles what a transaction or a bulk load wrote
about a personnummer before it registered her Patient (``resolve_unresolved``).

The work goes in batches of ``batch_size`` resources, each in its own transaction that locks its rows
(``FOR UPDATE`` on PostgreSQL; SQLite serialises writers), so a server can keep running: a write to a
resource either lands before its batch or waits for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from sqlalchemy import Select, bindparam, delete, false, func, select, update

from nara.store.crud import Stored, Tx
from nara.store.database import json_out
from nara.store.indexing import index_params, insert_index
from nara.store.patients import UNRESOLVED_PATIENT
from nara.store.schema import INDEX_TABLES, resource
from nara.store.store import DEFAULT_WRITE_HOOKS, Store


@dataclass
class ReindexSummary:
    resources: int = 0
    rows: int = 0
    moved: int = 0  # resources whose patient compartment (patient_id) changed


def count_resources(store: Store, types: list[str] | None = None) -> int:
    """How many current resources a reindex of ``types`` (all when None) will visit."""
    stmt = select(func.count()).select_from(resource).where(resource.c.deleted == false())
    if types:
        stmt = stmt.where(resource.c.res_type.in_(types))
    with store.transaction(write=False) as tx:
        return int(tx.conn.execute(stmt).scalar_one())


def current_rows(tx: Tx) -> Select[Any]:
    """The statement that reads current resources as ``reindex_resources`` takes them (add the conditions)."""
    cols = [c for c in resource.c if c.name not in ("content", "index_mask")]
    return select(*cols, json_out(resource.c.content, tx.pg).label("content")).where(resource.c.deleted == false())


def reindex_resources(
    tx: Tx, batch: Sequence[Any], *, moved_only: bool = False, summary: ReindexSummary | None = None
) -> list[tuple[int, str | None]]:
    """Re-extract, in ``tx``, the index rows of stored resources (``batch``: rows of ``current_rows``) and replace
    their old rows, ``index_mask`` and ``patient_id``; then derive their access rules again (the store's derived-row
    write hooks, ``DEFAULT_WRITE_HOOKS``), as a write of this version would. No new version is written. With
    ``moved_only`` only the resources whose compartment changes are rewritten (resolving ``?unresolved``).
    Returns the (rid, patient) of each resource rewritten, and counts them in ``summary``."""
    tx._flush_index()  # no row this transaction has yet to write for them outlives their rewrite
    rows: dict[str, list[dict[str, object]]] = {}
    changes = []
    picked = []
    # Extracted before the batch's old rows go: a resource that names its patient by personnummer finds her by
    # the index rows of her Patient, which may be in this batch.
    for r in batch:
        res = orjson.loads(r.content)
        extracted, patient, mask = tx._index(res)
        if moved_only and patient == r.patient_id:
            continue
        for kind, params in index_params(r.rid, res["resourceType"], patient, extracted).items():
            rows.setdefault(kind, []).extend(params)
        changes.append({"b_rid": r.rid, "b_mask": mask, "b_patient": patient})
        picked.append(r)
    if not picked:
        return []
    rids = [r.rid for r in picked]
    for table in INDEX_TABLES.values():
        tx.conn.execute(delete(table).where(table.c.rid.in_(rids)))
    insert_index(tx.conn, rows)
    tx.conn.execute(
        update(resource)
        .where(resource.c.rid == bindparam("b_rid"))
        .values(index_mask=bindparam("b_mask"), patient_id=bindparam("b_patient")),
        changes,
    )
    for r, change in zip(picked, changes, strict=True):
        st = replace(Stored.from_row(r), patient_id=change["b_patient"])
        for hook in DEFAULT_WRITE_HOOKS:  # derived rows, as a write of this version would make them
            hook(tx, "REINDEX", st)
    if summary is not None:
        summary.resources += len(picked)
        summary.rows += sum(len(v) for v in rows.values())
        summary.moved += sum(r.patient_id != change["b_patient"] for r, change in zip(picked, changes, strict=True))
    return [(r.rid, change["b_patient"]) for r, change in zip(picked, changes, strict=True)]


def resolve_unresolved(tx: Tx, rids: Sequence[int]) -> dict[int, str | None]:
    """Give the current resources among ``rids`` that are in the compartment ``?unresolved`` to their patient, where
    a Patient now carries the number they name (as a reindex of them would): their new compartment by rid."""
    moved: dict[int, str | None] = {}
    ids = sorted(set(rids))
    for start in range(0, len(ids), 1000):
        stmt = current_rows(tx).where(
            resource.c.rid.in_(ids[start : start + 1000]), resource.c.patient_id == UNRESOLVED_PATIENT
        )
        if tx.pg:
            stmt = stmt.with_for_update()
        moved.update(reindex_resources(tx, list(tx.conn.execute(stmt.order_by(resource.c.rid))), moved_only=True))
    return moved


def reindex(
    store: Store,
    types: list[str] | None = None,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> ReindexSummary:
    """Re-extract the index rows of every current resource (of ``types``); ``progress(n)`` after each batch."""
    summary = ReindexSummary()
    after = 0
    while True:
        with store.transaction() as tx:
            stmt = current_rows(tx).where(resource.c.rid > after).order_by(resource.c.rid).limit(batch_size)
            if types:
                stmt = stmt.where(resource.c.res_type.in_(types))
            if tx.pg:
                stmt = stmt.with_for_update()
            batch = list(tx.conn.execute(stmt))
            if not batch:
                break
            reindex_resources(tx, batch, summary=summary)
            after = batch[-1].rid
        if progress is not None:
            progress(len(batch))
    return summary
