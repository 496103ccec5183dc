"""search: planner statistics across the index columns that depend on each other

Revision ID: 0101
Revises: 0100
Create Date: 2026-11-23 00:25:00

PostgreSQL estimates a search's rows by multiplying each column's selectivity, as if the resource type,
parameter, system and code of a token row were independent. They are not (a LOINC code implies
``param = 'code'`` and ``res_type = 'Observation'``), so a common code was estimated at 1/15 of its rows and
the planner built the whole match set instead of walking the page order and stopping after ``_count``
matches: measured on the benchmark's growth data (18,166 resources), a population query
``Observation?code=...&date=ge...&date=lt...&_count=20`` went from 72 ms to 3 ms with these statistics.
SQLite has no such objects; nothing to do there.
"""

from __future__ import annotations

from alembic import op

revision = "0101"
down_revision = "0100"
branch_labels = None
depends_on = None

STATISTICS = {
    "st_sp_token_code": "(dependencies, ndistinct, mcv) ON res_type, param, system, code FROM sp_token",
    "st_sp_reference_target": "(dependencies, ndistinct) ON res_type, param, target_type, target_id FROM sp_reference",
    "st_sp_string_param": "(dependencies, mcv) ON res_type, param FROM sp_string",
    "st_sp_date_param": "(dependencies, mcv) ON res_type, param FROM sp_date",
    "st_sp_quantity_param": "(dependencies, mcv) ON res_type, param FROM sp_quantity",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, definition in STATISTICS.items():
        op.execute(f"CREATE STATISTICS IF NOT EXISTS {name} {definition}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in STATISTICS:
        op.execute(f"DROP STATISTICS IF EXISTS {name}")
