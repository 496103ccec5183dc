"""audit: the Consent that gave an access (R-LOG-1 "consent or emergency assertion id if used")

Revision ID: 0102
Revises: 0101
Create Date: 2026-12-06 18:45:00

Each access row names the Consent it was reached through: the patient's consent for coordinated
documentation (SVOD), the emergency assertion, or the block break. A nullable column: adding it rewrites
nothing on PostgreSQL or SQLite, and rows written before it keep their hashes (the chain includes the
value only when it is set).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0102"
down_revision = "0101"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_access", sa.Column("assertion_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_access", schema=None) as batch_op:
        batch_op.drop_column("assertion_id")
