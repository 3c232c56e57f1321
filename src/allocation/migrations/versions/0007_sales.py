"""Sales (the waiting room): a sale's terms and its skus, a sku in at most one open sale.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sales",
        sa.Column("namespace", sa.String(64), primary_key=True),
        sa.Column("sale", sa.String(64), primary_key=True),
        sa.Column("opens_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("admit_factor", sa.Float, nullable=False),
        sa.Column("pass_ttl_seconds", sa.Integer, nullable=False),
        sa.Column("max_admitted", sa.Integer, nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )
    op.create_table(
        "sale_skus",
        sa.Column("namespace", sa.String(64), primary_key=True),
        sa.Column("sale", sa.String(64), primary_key=True),
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("open", sa.Boolean, nullable=False),
        sa.ForeignKeyConstraint(["namespace", "sale"], ["sales.namespace", "sales.sale"],
                                name="fk_sale_skus_sale"),
    )
    op.create_index("uq_sale_skus_open_sku", "sale_skus", ["namespace", "sku"], unique=True,
                    postgresql_where=sa.text("open"), sqlite_where=sa.text("open"))


def downgrade() -> None:
    op.drop_index("uq_sale_skus_open_sku", "sale_skus")
    op.drop_table("sale_skus")
    op.drop_table("sales")
