"""audit: the read-audit outbox's progress (how far each host's spool file has been drained)

Revision ID: 0103
Revises: 0102
Create Date: 2026-12-07 01:00:00

Reads append their audit record to a local spool file before answering; the host's sealer inserts the
records into the log. This table keeps, per spool file, how many bytes are in the log, updated in the
transaction that inserts them (nara.security.audit_outbox). A new table: nothing existing changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0103"
down_revision = "0102"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_outbox",
        sa.Column("file", sa.String(length=200), primary_key=True),
        sa.Column("drained", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_outbox")
