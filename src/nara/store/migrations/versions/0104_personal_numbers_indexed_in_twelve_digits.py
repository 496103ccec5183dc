"""search index: personal identity numbers written with a hyphen also under their 12 digits

Revision ID: 0104
Revises: 0103
Create Date: 2026-12-07 03:30:00

An identifier under the personnummer or samordningsnummer system (URI or RIV OID) written as
``YYYYMMDD-NNNC`` is now indexed twice: as written and as its 12 digits, so that a login, an identifier
look-up or a search by the number finds the record (R-ID-1). This adds the second row for what is already
stored. A number that fails the checks of R-ID-1, and the 10-digit forms (whose century depends on the day
they are read), get none. The rows are streamed in batches (a register that writes hyphens has one a
person). Downgrade removes nothing: the rows are what the index of each resource now holds.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from nara.fhir.identifiers import PERSONAL_SYSTEMS, stated_personal_number, written_systems

revision = "0104"
down_revision = "0103"
branch_labels = None
depends_on = None

BATCH = 5000


def upgrade() -> None:
    conn = op.get_bind()
    token = sa.table(
        "sp_token",
        sa.column("rid"),
        sa.column("res_type"),
        sa.column("param"),
        sa.column("patient_id"),
        sa.column("system"),
        sa.column("code"),
        sa.column("text"),
    )
    systems = sorted(alias for system in PERSONAL_SYSTEMS for alias in written_systems(system))
    # One pass over the index, streamed: only numbers not written in 12 digits can need a second row.
    found = conn.execute(
        sa.select(token)
        .where(token.c.system.in_(systems), sa.func.length(token.c.code) != 12)
        .execution_options(stream_results=True, yield_per=BATCH)  # this statement's, not the connection's
    )
    for part in found.mappings().partitions(BATCH):
        batch = [dict(r) for r in part]
        present = {
            (r.rid, r.param, r.system, r.code)
            for r in conn.execute(
                sa.select(token.c.rid, token.c.param, token.c.system, token.c.code).where(
                    token.c.rid.in_(sorted({r["rid"] for r in batch})), token.c.system.in_(systems)
                )
            )
        }
        added = []
        for r in batch:
            number = stated_personal_number(r["system"], r["code"]) if r["code"] else None
            key = (r["rid"], r["param"], r["system"], number)
            if number is None or number == r["code"] or key in present:
                continue
            present.add(key)
            added.append({**r, "code": number})
        if added:
            conn.execute(token.insert(), added)


def downgrade() -> None:
    pass
