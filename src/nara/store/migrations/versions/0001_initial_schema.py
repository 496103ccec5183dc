"""initial schema

Revision ID: 0001
Revises: -
Create Date: 2026-11-22 21:13:42.378013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resource",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("owner_org", sa.String(length=64), nullable=True),
        sa.Column("owner_unit", sa.String(length=64), nullable=True),
        sa.Column("last_updated", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("index_mask", sa.Integer(), nullable=False),
        sa.Column(
            "content", sa.Text().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.PrimaryKeyConstraint("rid"),
    )
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.create_index("ix_resource_patient", ["patient_id", "res_type"], unique=False)
        batch_op.create_index("ix_resource_type_updated", ["res_type", "last_updated"], unique=False)
        batch_op.create_index("ix_resource_updated", ["last_updated"], unique=False)
        batch_op.create_index("ux_resource_type_id", ["res_type", "res_id"], unique=True)

    op.create_table(
        "resource_history",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("owner_org", sa.String(length=64), nullable=True),
        sa.Column("owner_unit", sa.String(length=64), nullable=True),
        sa.Column("last_updated", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column(
            "content", sa.Text().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
    )
    with op.batch_alter_table("resource_history", schema=None) as batch_op:
        batch_op.create_index("ix_history_type_updated", ["res_type", "last_updated"], unique=False)
        batch_op.create_index("ix_history_updated", ["last_updated"], unique=False)
        batch_op.create_index("ux_history_type_id_version", ["res_type", "res_id", "version"], unique=True)

    op.create_table(
        "sp_composite",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("c1_system", sa.Text(), nullable=True),
        sa.Column("c1_code", sa.Text(), nullable=True),
        sa.Column("c2_system", sa.Text(), nullable=True),
        sa.Column("c2_code", sa.Text(), nullable=True),
        sa.Column("c2_lo", sa.Float(), nullable=True),
        sa.Column("c2_hi", sa.Float(), nullable=True),
        sa.Column("c2_text", sa.Text(), nullable=True),
    )
    with op.batch_alter_table("sp_composite", schema=None) as batch_op:
        batch_op.create_index("ix_sp_composite_0", ["res_type", "param", "c1_code", "c2_code", "c2_lo"], unique=False)
        batch_op.create_index("ix_sp_composite_rid", ["rid"], unique=False)

    op.create_table(
        "sp_date",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("lo", sa.DateTime(), nullable=False),
        sa.Column("hi", sa.DateTime(), nullable=False),
    )
    with op.batch_alter_table("sp_date", schema=None) as batch_op:
        batch_op.create_index("ix_sp_date_0", ["res_type", "param", "lo"], unique=False)
        batch_op.create_index("ix_sp_date_1", ["res_type", "param", "hi"], unique=False)
        batch_op.create_index("ix_sp_date_2", ["patient_id", "res_type", "param", "lo"], unique=False)
        batch_op.create_index("ix_sp_date_rid", ["rid"], unique=False)

    op.create_table(
        "sp_number",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("lo", sa.Float(), nullable=False),
        sa.Column("hi", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("sp_number", schema=None) as batch_op:
        batch_op.create_index("ix_sp_number_0", ["res_type", "param", "lo"], unique=False)
        batch_op.create_index("ix_sp_number_rid", ["rid"], unique=False)

    op.create_table(
        "sp_quantity",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("system", sa.Text(), nullable=True),
        sa.Column("code", sa.Text(), nullable=True),
        sa.Column("unit", sa.Text(), nullable=True),
        sa.Column("lo", sa.Float(), nullable=False),
        sa.Column("hi", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("sp_quantity", schema=None) as batch_op:
        batch_op.create_index("ix_sp_quantity_0", ["res_type", "param", "code", "lo"], unique=False)
        batch_op.create_index("ix_sp_quantity_rid", ["rid"], unique=False)

    op.create_table(
        "sp_reference",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("target_type", sa.String(length=64), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("id_system", sa.Text(), nullable=True),
        sa.Column("id_value", sa.Text(), nullable=True),
    )
    with op.batch_alter_table("sp_reference", schema=None) as batch_op:
        batch_op.create_index("ix_sp_reference_0", ["target_id", "target_type", "param", "res_type"], unique=False)
        batch_op.create_index("ix_sp_reference_1", ["res_type", "param", "url"], unique=False)
        batch_op.create_index("ix_sp_reference_2", ["res_type", "param", "id_value"], unique=False)
        batch_op.create_index("ix_sp_reference_rid", ["rid"], unique=False)

    op.create_table(
        "sp_string",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("exact", sa.Text(), nullable=False),
    )
    with op.batch_alter_table("sp_string", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sp_string_0", ["res_type", "param", "value"], unique=False, postgresql_ops={"value": "text_pattern_ops"}
        )
        batch_op.create_index("ix_sp_string_rid", ["rid"], unique=False)

    op.create_table(
        "sp_token",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("system", sa.Text(), nullable=True),
        sa.Column("code", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
    )
    with op.batch_alter_table("sp_token", schema=None) as batch_op:
        batch_op.create_index("ix_sp_token_0", ["res_type", "param", "code", "system"], unique=False)
        batch_op.create_index("ix_sp_token_1", ["patient_id", "res_type", "param", "code"], unique=False)
        batch_op.create_index("ix_sp_token_rid", ["rid"], unique=False)

    op.create_table(
        "sp_uri",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    with op.batch_alter_table("sp_uri", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sp_uri_0", ["res_type", "param", "value"], unique=False, postgresql_ops={"value": "text_pattern_ops"}
        )
        batch_op.create_index("ix_sp_uri_rid", ["rid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sp_uri", schema=None) as batch_op:
        batch_op.drop_index("ix_sp_uri_rid")
        batch_op.drop_index("ix_sp_uri_0", postgresql_ops={"value": "text_pattern_ops"})

    op.drop_table("sp_uri")
    with op.batch_alter_table("sp_token", schema=None) as batch_op:
        batch_op.drop_index("ix_sp_token_rid")
        batch_op.drop_index("ix_sp_token_1")
        batch_op.drop_index("ix_sp_token_0")

    op.drop_table("sp_token")
    with op.batch_alter_table("sp_string", schema=None) as batch_op:
        batch_op.drop_index("ix_sp_string_rid")
        batch_op.drop_index("ix_sp_string_0", postgresql_ops={"value": "text_pattern_ops"})

    op.drop_table("sp_string")
    with op.batch_alter_table("sp_reference", schema=None) as batch_op:
        batch_op.drop_index("ix_sp_reference_rid")
        batch_op.drop_index("ix_sp_reference_2")
        batch_op.drop_index("ix_sp_reference_1")
        batch_op.drop_index("ix_sp_reference_0")

    op.drop_table("sp_reference")
    with op.batch_alter_table("sp_quantity", schema=None) as batch_op:
        batch_op.drop_index("ix_sp_quantity_rid")
        batch_op.drop_index("ix_sp_quantity_0")

    op.drop_table("sp_quantity")
    with op.batch_alter_table("sp_number", schema=None) as batch_op:
        batch_op.drop_index("ix_sp_number_rid")
        batch_op.drop_index("ix_sp_number_0")

    op.drop_table("sp_number")
    with op.batch_alter_table("sp_date", schema=None) as batch_op:
        batch_op.drop_index("ix_sp_date_rid")
        batch_op.drop_index("ix_sp_date_2")
        batch_op.drop_index("ix_sp_date_1")
        batch_op.drop_index("ix_sp_date_0")

    op.drop_table("sp_date")
    with op.batch_alter_table("sp_composite", schema=None) as batch_op:
        batch_op.drop_index("ix_sp_composite_rid")
        batch_op.drop_index("ix_sp_composite_0")

    op.drop_table("sp_composite")
    with op.batch_alter_table("resource_history", schema=None) as batch_op:
        batch_op.drop_index("ux_history_type_id_version")
        batch_op.drop_index("ix_history_updated")
        batch_op.drop_index("ix_history_type_updated")

    op.drop_table("resource_history")
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.drop_index("ux_resource_type_id")
        batch_op.drop_index("ix_resource_updated")
        batch_op.drop_index("ix_resource_type_updated")
        batch_op.drop_index("ix_resource_patient")

    op.drop_table("resource")
