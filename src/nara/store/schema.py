"""The database schema: one SQLAlchemy Core definition for SQLite and PostgreSQL.

- ``resource`` holds the current version of every resource (or its delete marker);
- ``resource_history`` holds every superseded version, append-only;
- ``sp_*`` hold the search index rows, one table per search-parameter type.

Every row carries ``patient_id`` (the Patient compartment it belongs to), the distribution key for
a sharded (Citus) deployment. There are no foreign keys between tables. See docs/adr/0001-storage-schema.md.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

ID = String(64)
RID = BigInteger().with_variant(Integer, "sqlite")


# Serialized JSON: ``jsonb`` on PostgreSQL, ``TEXT`` on SQLite. The store binds it as text and casts
# (see nara.store.sql.json_in / json_out), so JSON is serialized once with orjson and read back as text.
JSON_CONTENT = Text().with_variant(JSONB(), "postgresql")


resource = Table(
    "resource",
    metadata,
    Column("rid", RID, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", ID, nullable=False),
    Column("version", Integer, nullable=False),
    Column("patient_id", ID),
    Column("owner_org", ID),
    Column("owner_unit", ID),
    Column("last_updated", DateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("method", String(8), nullable=False),
    # Bit i set = rows exist in INDEX_TABLES[i]; lets an update skip deletes from empty index tables.
    Column("index_mask", Integer, nullable=False, default=0),
    Column("content", JSON_CONTENT),
    Index("ux_resource_type_id", "res_type", "res_id", unique=True),
    Index("ix_resource_patient", "patient_id", "res_type"),
    Index("ix_resource_type_updated", "res_type", "last_updated"),
    Index("ix_resource_updated", "last_updated"),
)

resource_history = Table(
    "resource_history",
    metadata,
    Column("rid", RID, nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", ID, nullable=False),
    Column("version", Integer, nullable=False),
    Column("patient_id", ID),
    Column("owner_org", ID),
    Column("owner_unit", ID),
    Column("last_updated", DateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("method", String(8), nullable=False),
    Column("content", JSON_CONTENT),
    Index("ux_history_type_id_version", "res_type", "res_id", "version", unique=True),
    Index("ix_history_type_updated", "res_type", "last_updated"),
    Index("ix_history_updated", "last_updated"),
)


def _index_table(
    name: str, *cols: Column[Any], indexes: tuple[tuple[str, ...], ...], pattern_ops: tuple[str, ...] = ()
) -> Table:
    base: list[Any] = [
        Column("rid", RID, nullable=False),
        Column("res_type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        Column("patient_id", ID),
        *cols,
        Index(f"ix_{name}_rid", "rid"),
    ]
    for i, idx in enumerate(indexes):
        # LIKE 'prefix%' uses a PostgreSQL btree only with text_pattern_ops (any collation).
        ops = {c: "text_pattern_ops" for c in idx if c in pattern_ops}
        base.append(Index(f"ix_{name}_{i}", *idx, postgresql_ops=ops) if ops else Index(f"ix_{name}_{i}", *idx))
    return Table(name, metadata, *base)


sp_token = _index_table(
    "sp_token",
    Column("system", Text),
    Column("code", Text),
    Column("text", Text),
    indexes=(("res_type", "param", "code", "system"), ("patient_id", "res_type", "param", "code")),
)
sp_string = _index_table(
    "sp_string",
    Column("value", Text, nullable=False),
    Column("exact", Text, nullable=False),
    indexes=(("res_type", "param", "value"),),
    pattern_ops=("value",),
)
sp_date = _index_table(
    "sp_date",
    Column("lo", DateTime, nullable=False),
    Column("hi", DateTime, nullable=False),
    indexes=(("res_type", "param", "lo"), ("res_type", "param", "hi"), ("patient_id", "res_type", "param", "lo")),
)
sp_number = _index_table(
    "sp_number",
    Column("lo", Float, nullable=False),
    Column("hi", Float, nullable=False),
    indexes=(("res_type", "param", "lo"),),
)
sp_quantity = _index_table(
    "sp_quantity",
    Column("system", Text),
    Column("code", Text),
    Column("unit", Text),
    Column("lo", Float, nullable=False),
    Column("hi", Float, nullable=False),
    indexes=(("res_type", "param", "code", "lo"),),
)
sp_reference = _index_table(
    "sp_reference",
    Column("target_type", String(64)),
    Column("target_id", ID),
    Column("url", Text),
    Column("id_system", Text),
    Column("id_value", Text),
    indexes=(
        ("target_id", "target_type", "param", "res_type"),
        ("res_type", "param", "url"),
        ("res_type", "param", "id_value"),
    ),
)
sp_uri = _index_table(
    "sp_uri",
    Column("value", Text, nullable=False),
    indexes=(("res_type", "param", "value"),),
    pattern_ops=("value",),
)
sp_composite = _index_table(
    "sp_composite",
    Column("c1_system", Text),
    Column("c1_code", Text),
    Column("c2_system", Text),
    Column("c2_code", Text),
    Column("c2_lo", Float),
    Column("c2_hi", Float),
    Column("c2_text", Text),
    indexes=(("res_type", "param", "c1_code", "c2_code", "c2_lo"),),
)

INDEX_TABLES: dict[str, Table] = {
    "token": sp_token,
    "string": sp_string,
    "date": sp_date,
    "number": sp_number,
    "quantity": sp_quantity,
    "reference": sp_reference,
    "uri": sp_uri,
    "composite": sp_composite,
}

# The value columns of each index table, in the order searchparams.extract() produces them.
INDEX_VALUE_COLUMNS: dict[str, tuple[str, ...]] = {
    "token": ("system", "code", "text"),
    "string": ("value", "exact"),
    "date": ("lo", "hi"),
    "number": ("lo", "hi"),
    "quantity": ("system", "code", "unit", "lo", "hi"),
    "reference": ("target_type", "target_id", "url", "id_system", "id_value"),
    "uri": ("value",),
    "composite": ("c1_system", "c1_code", "c2_system", "c2_code", "c2_lo", "c2_hi", "c2_text"),
}
