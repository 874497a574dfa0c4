"""Aggregation shards: one row per aggregation step of a round (claim lease, attempts, status).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 00:13:14.570029

Keep this file portable (SQLite and PostgreSQL) and independent of server.db.models:
migrations describe the schema as it was at this revision, not as the models are today.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "aggregation_shards",
        sa.Column("round_id", sa.Uuid(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("module_group", sa.Integer(), nullable=False),
        sa.Column("module_groups", sa.Integer(), nullable=False),
        sa.Column("client_group", sa.Integer(), nullable=False),
        sa.Column("client_groups", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("storage_key", sa.String(length=400), nullable=True),
        sa.Column("stats", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["rounds.id"],
            name=op.f("fk_aggregation_shards_round_id_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("round_id", "index", name=op.f("pk_aggregation_shards")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("aggregation_shards")
