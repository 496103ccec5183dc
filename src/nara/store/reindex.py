"""Rebuilding the search index rows of stored resources (``nara reindex``).

Needed after the extraction rules change (a new Nära version, a fixed parameter): every current
resource is read back, its index rows are extracted again, and its old rows, ``index_mask`` and
``patient_id`` are replaced. The rows other layers derive from each write (``DEFAULT_WRITE_HOOKS``: the
access rules, care relationships and consents, that the security layer keeps) are derived again too, so
that rules changed in a new version also apply to data written before it.

The work goes in batches of ``batch_size`` resources, each in its own transaction that locks its rows
(``FOR UPDATE`` on PostgreSQL; SQLite serialises writers), so a server can keep running: a write to a
resource either lands before its batch or waits for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import orjson
from sqlalchemy import bindparam, delete, false, func, select, update

from nara.store.crud import Stored
from nara.store.database import json_out
from nara.store.indexing import index_params, insert_index
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
            cols = [c for c in resource.c if c.name not in ("content", "index_mask")]
            stmt = (
                select(*cols, json_out(resource.c.content, tx.pg).label("content"))
                .where(resource.c.deleted == false(), resource.c.rid > after)
                .order_by(resource.c.rid)
                .limit(batch_size)
            )
            if types:
                stmt = stmt.where(resource.c.res_type.in_(types))
            if tx.pg:
                stmt = stmt.with_for_update()
            batch = list(tx.conn.execute(stmt))
            if not batch:
                break
            rids = [r.rid for r in batch]
            rows: dict[str, list[dict[str, object]]] = {}
            changes = []
            # Extracted before the batch's old rows go: a resource that names its patient by personnummer finds
            # her by the index rows of her Patient, which may be in this batch.
            for r in batch:
                res = orjson.loads(r.content)
                extracted, patient, mask = tx._index(res)
                for kind, params in index_params(r.rid, res["resourceType"], patient, extracted).items():
                    rows.setdefault(kind, []).extend(params)
                changes.append({"b_rid": r.rid, "b_mask": mask, "b_patient": patient})
                summary.moved += patient != r.patient_id
            for table in INDEX_TABLES.values():
                tx.conn.execute(delete(table).where(table.c.rid.in_(rids)))
            insert_index(tx.conn, rows)
            tx.conn.execute(
                update(resource)
                .where(resource.c.rid == bindparam("b_rid"))
                .values(index_mask=bindparam("b_mask"), patient_id=bindparam("b_patient")),
                changes,
            )
            for r, change in zip(batch, changes, strict=True):
                st = replace(Stored.from_row(r), patient_id=change["b_patient"])
                for hook in DEFAULT_WRITE_HOOKS:  # derived rows, as a write of this version would make them
                    hook(tx, "REINDEX", st)
            summary.resources += len(batch)
            summary.rows += sum(len(v) for v in rows.values())
            after = rids[-1]
        if progress is not None:
            progress(len(batch))
    return summary
