"""History at instance, type and system level (``_history``), newest first, with keyset paging.

The current version lives in ``resource`` and every earlier one in ``resource_history``; a history
query reads both. The cursor carries (lastUpdated, rid, version) of the page's last entry, so a page
never shifts when new versions arrive (they sort before it).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import orjson
from sqlalchemy import and_, func, or_, select, union_all

from nara.fhir.outcome import FhirError
from nara.store.crud import Stored
from nara.store.database import json_out
from nara.store.schema import resource, resource_history

if TYPE_CHECKING:
    from nara.store.crud import Tx
    from nara.store.search import RowFilter


@dataclass
class HistoryPage:
    entries: list[Stored]
    total: int | None
    next_cursor: str | None


def _cursor(st: Stored) -> str:
    raw = orjson.dumps({"t": st.last_updated.isoformat(), "r": st.rid, "v": st.version})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str) -> tuple[datetime, int, int]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return datetime.fromisoformat(data["t"]), int(data["r"]), int(data["v"])
    except (ValueError, KeyError, TypeError):
        raise FhirError(400, "invalid", "The history paging cursor is not valid") from None


def history(
    tx: Tx,
    rtype: str | None = None,
    rid: str | None = None,
    *,
    since: datetime | None = None,
    at: datetime | None = None,
    count: int = 20,
    cursor: str | None = None,
    with_total: bool = True,
    row_filter: RowFilter | None = None,
) -> HistoryPage:
    if row_filter is None and getattr(tx, "policy", None) is not None:
        row_filter = tx.policy.row_filter  # the transaction's access policy applies to history too
    parts = []
    for table in (resource, resource_history):
        cols = [
            table.c.rid,
            table.c.res_type,
            table.c.res_id,
            table.c.version,
            table.c.last_updated,
            table.c.deleted,
            table.c.patient_id,
            table.c.method,
            table.c.owner_org,
            table.c.owner_unit,
            json_out(table.c.content, tx.pg).label("content"),
        ]
        conds = []
        if rtype is not None:
            conds.append(table.c.res_type == rtype)
        if rid is not None:
            conds.append(table.c.res_id == rid)
        if since is not None:
            conds.append(table.c.last_updated >= since)
        if at is not None:
            conds.append(table.c.last_updated <= at)
        if row_filter is not None:
            extra = row_filter(table, rtype)  # type: ignore[arg-type]
            if extra is not None:
                conds.append(extra)
        parts.append(select(*cols).where(*conds))
    u = union_all(*parts).subquery("h")
    conds2 = []
    if cursor:
        t, r, v = _decode(cursor)
        conds2.append(
            or_(
                u.c.last_updated < t,
                and_(u.c.last_updated == t, u.c.rid < r),
                and_(u.c.last_updated == t, u.c.rid == r, u.c.version < v),
            )
        )
    stmt = (
        select(u).where(*conds2).order_by(u.c.last_updated.desc(), u.c.rid.desc(), u.c.version.desc()).limit(count + 1)
    )
    rows = tx.conn.execute(stmt).all()
    more = len(rows) > count
    entries = [Stored.from_row(r) for r in rows[:count]]
    total = None
    if with_total:
        total = int(tx.conn.execute(select(func.count()).select_from(union_all(*parts).subquery())).scalar_one())
    # Nothing to show: a resource the policy hides answers 403 as a read of it does (logged), a missing one 404.
    if rtype is not None and rid is not None and not entries and not cursor and not tx.sees(rtype, rid):
        tx.hidden_or_missing(rtype, rid)
    return HistoryPage(entries, total, _cursor(entries[-1]) if more and entries else None)
