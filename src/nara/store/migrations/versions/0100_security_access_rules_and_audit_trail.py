"""security: access rules and audit trail

Revision ID: 0100
Revises: 0001
Create Date: 2026-11-22 21:25:11.183219
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0100"
down_revision = "0001"
branch_labels = None
depends_on = None


AUDIT_RETENTION_DAYS = 1827  # five years (R-LOG-2); every `nara` command that migrates re-installs the guards with
# NARA_AUDIT_RETENTION_YEARS


def upgrade() -> None:
    op.create_table(
        "audit_access",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("owner_org", sa.String(length=64), nullable=True),
        sa.Column("owner_unit", sa.String(length=64), nullable=True),
        sa.Column("access_type", sa.String(length=16), nullable=False),
        sa.Column("protected", sa.Boolean(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=True),
    )
    with op.batch_alter_table("audit_access", schema=None) as batch_op:
        batch_op.create_index("ix_audit_access_patient", ["patient_id", "recorded_at"], unique=False)
        batch_op.create_index("ix_audit_access_seq", ["seq"], unique=False)

    op.create_table(
        "audit_event",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=8), nullable=False),
        sa.Column("actor_kind", sa.String(length=12), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("user_name", sa.Text(), nullable=True),
        sa.Column("assignment_id", sa.String(length=64), nullable=True),
        sa.Column("unit_id", sa.String(length=64), nullable=True),
        sa.Column("provider_id", sa.String(length=64), nullable=True),
        sa.Column("purpose", sa.Text(), nullable=True),
        sa.Column("client_id", sa.String(length=64), nullable=True),
        sa.Column("resource_type", sa.String(length=64), nullable=True),
        sa.Column("resource_id", sa.Text(), nullable=True),
        sa.Column("request", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("assertion_id", sa.String(length=64), nullable=True),
        sa.Column("flags", sa.Text(), nullable=True),
        sa.Column("patient_count", sa.Integer(), nullable=False),
        sa.Column("chain_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.create_index("ix_audit_event_time", ["recorded_at"], unique=False)
        batch_op.create_index("ix_audit_event_user", ["user_id", "recorded_at"], unique=False)
        batch_op.create_index("ux_audit_event_chain", ["chain_seq"], unique=True)
        batch_op.create_index(
            "ix_audit_event_unsealed",
            ["seq"],
            unique=False,
            postgresql_where=sa.text("chain_seq IS NULL"),
            sqlite_where=sa.text("chain_seq IS NULL"),
        )

    op.create_table(
        "audit_review",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("reviewed_at", sa.DateTime(), nullable=False),
        sa.Column("reviewer", sa.String(length=64), nullable=False),
        sa.Column("period_start", sa.DateTime(), nullable=True),
        sa.Column("period_end", sa.DateTime(), nullable=True),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("finding", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "care_relation",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("source_rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("unit", sa.String(length=64), nullable=False),
        sa.Column("starts", sa.DateTime(), nullable=True),
        sa.Column("ends", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("care_relation", schema=None) as batch_op:
        batch_op.create_index("ix_care_relation_patient", ["patient_id"], unique=False)
        batch_op.create_index("ix_care_relation_source", ["source_rid"], unique=False)
        batch_op.create_index("ix_care_relation_unit", ["unit", "patient_id"], unique=False)

    op.create_table(
        "pdl_rule",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("source_rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("org", sa.String(length=64), nullable=True),
        sa.Column("unit", sa.String(length=64), nullable=True),
        sa.Column("employee", sa.String(length=64), nullable=True),
        sa.Column("person", sa.String(length=32), nullable=True),
        sa.Column("starts", sa.DateTime(), nullable=True),
        sa.Column("ends", sa.DateTime(), nullable=True),
        sa.Column("exempt_alerts", sa.Boolean(), nullable=False),
        sa.Column("exempt_medication", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("pdl_rule", schema=None) as batch_op:
        batch_op.create_index("ix_pdl_rule_patient", ["patient_id", "kind"], unique=False)
        batch_op.create_index("ix_pdl_rule_person", ["kind", "person"], unique=False)
        batch_op.create_index("ix_pdl_rule_source", ["source_rid"], unique=False)
        batch_op.create_index("ix_pdl_rule_unit", ["kind", "unit", "patient_id"], unique=False)
    from nara.security.schema import guard_statements

    bind = op.get_bind()
    for stmt in guard_statements(bind.dialect.name, AUDIT_RETENTION_DAYS):
        op.execute(stmt)


def downgrade() -> None:
    from nara.security.schema import drop_guard_statements

    for stmt in drop_guard_statements(op.get_bind().dialect.name):
        op.execute(stmt)
    with op.batch_alter_table("pdl_rule", schema=None) as batch_op:
        batch_op.drop_index("ix_pdl_rule_unit")
        batch_op.drop_index("ix_pdl_rule_source")
        batch_op.drop_index("ix_pdl_rule_person")
        batch_op.drop_index("ix_pdl_rule_patient")

    op.drop_table("pdl_rule")
    with op.batch_alter_table("care_relation", schema=None) as batch_op:
        batch_op.drop_index("ix_care_relation_unit")
        batch_op.drop_index("ix_care_relation_source")
        batch_op.drop_index("ix_care_relation_patient")

    op.drop_table("care_relation")
    op.drop_table("audit_review")
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_event_unsealed")
        batch_op.drop_index("ux_audit_event_chain")
        batch_op.drop_index("ix_audit_event_user")
        batch_op.drop_index("ix_audit_event_time")

    op.drop_table("audit_event")
    with op.batch_alter_table("audit_access", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_access_seq")
        batch_op.drop_index("ix_audit_access_patient")

    op.drop_table("audit_access")
