"""Writing and removing a resource's search-index rows (inside the caller's transaction).

Index rows are the bulk of a write's database work (a blood-pressure Observation has about twenty
rows in five tables), so both dialects write them with as few statements as they can: on SQLite one
``executemany`` per table, on PostgreSQL ONE statement for all tables (``INSERT ... SELECT FROM
unnest(arrays)`` per table, chained as data-modifying CTEs), which saves a round trip and an executor
start per table. Deleting works the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from sqlalchemy import Connection, delete

from nara.fhir.searchparams import IndexRows
from nara.store.schema import INDEX_TABLES, INDEX_VALUE_COLUMNS

TABLE_ORDER = tuple(INDEX_TABLES)  # bit i of resource.index_mask = rows in TABLE_ORDER[i]
BASE_COLUMNS = ("rid", "res_type", "param", "patient_id")


# Views of a resource for its search index: upper layers register what must never be searchable (e.g. the
# address of a patient with protected identity, which a search would otherwise reveal). They register at
# import, as write hooks do (nara.store.store.register_write_hook), so the store does not depend on them.
# A view may look facts up in the writing transaction (its connection is the first argument).
INDEX_VIEWS: list[Callable[[Connection, dict[str, Any]], dict[str, Any]]] = []


def register_index_view(view: Callable[[Connection, dict[str, Any]], dict[str, Any]]) -> None:
    if view not in INDEX_VIEWS:
        INDEX_VIEWS.append(view)


def index_params(rid: int, res_type: str, patient_id: str | None, rows: IndexRows) -> dict[str, list[dict[str, Any]]]:
    """Insert parameters per index table for one resource."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in TABLE_ORDER:
        values = getattr(rows, kind)
        if not values:
            continue
        cols = INDEX_VALUE_COLUMNS[kind]
        out[kind] = [
            {
                "rid": rid,
                "res_type": res_type,
                "param": param,
                "patient_id": patient_id,
                **dict(zip(cols, v, strict=True)),
            }
            for param, v in values
        ]
    return out


def mask_of(rows: IndexRows) -> int:
    mask = 0
    for i, kind in enumerate(TABLE_ORDER):
        if getattr(rows, kind):
            mask |= 1 << i
    return mask


def insert_index(conn: Connection, batches: dict[str, list[dict[str, Any]]]) -> None:
    kinds = tuple(k for k in TABLE_ORDER if batches.get(k))
    if not kinds:
        return
    if conn.dialect.name == "postgresql":
        params: dict[str, list[Any]] = {}
        for kind in kinds:
            rows = batches[kind]
            for col in BASE_COLUMNS + INDEX_VALUE_COLUMNS[kind]:
                params[f"{kind}_{col}"] = [r[col] for r in rows]
        conn.exec_driver_sql(_pg_insert_sql(kinds), params)
        return
    for kind in kinds:
        conn.execute(INDEX_TABLES[kind].insert(), batches[kind])


def delete_index(conn: Connection, rid: int, mask: int) -> None:
    kinds = tuple(kind for i, kind in enumerate(TABLE_ORDER) if mask & (1 << i))
    if not kinds:
        return
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(_pg_delete_sql(kinds), {"rid": rid})
        return
    for kind in kinds:
        table = INDEX_TABLES[kind]
        conn.execute(delete(table).where(table.c.rid == rid))


def _pg_array_type(kind: str, col: str) -> str:
    sql_type = INDEX_TABLES[kind].c[col].type.compile(dialect=_pg_dialect())
    return "bigint" if col == "rid" else sql_type.lower()


@cache
def _pg_dialect() -> Any:
    from sqlalchemy.dialects import postgresql

    return postgresql.dialect()


@cache
def _pg_insert_sql(kinds: tuple[str, ...]) -> str:
    """One statement inserting the rows of every table in ``kinds`` from column arrays."""
    parts = []
    for kind in kinds:
        cols = BASE_COLUMNS + INDEX_VALUE_COLUMNS[kind]
        arrays = ", ".join(f"%({kind}_{c})s::{_pg_array_type(kind, c)}[]" for c in cols)
        parts.append(f"INSERT INTO {INDEX_TABLES[kind].name} ({', '.join(cols)}) SELECT * FROM unnest({arrays})")
    *ctes, last = parts
    if not ctes:
        return last
    return "WITH " + ", ".join(f"i{i} AS ({sql})" for i, sql in enumerate(ctes)) + " " + last


@cache
def _pg_delete_sql(kinds: tuple[str, ...]) -> str:
    parts = [f"DELETE FROM {INDEX_TABLES[kind].name} WHERE rid = %(rid)s" for kind in kinds]
    *ctes, last = parts
    if not ctes:
        return last
    return "WITH " + ", ".join(f"d{i} AS ({sql})" for i, sql in enumerate(ctes)) + " " + last
