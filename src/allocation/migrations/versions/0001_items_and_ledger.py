"""The items table and the append-only ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "inventory_items",
        sa.Column("namespace", sa.String(64), primary_key=True),
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("consumed", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.CheckConstraint("consumed >= 0 AND consumed <= total",
                           name="ck_items_consumed_in_range"),
    )
    op.create_table(
        "inventory_ledger",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("qty", sa.BigInteger, nullable=False),
        sa.Column("total_after", sa.BigInteger, nullable=False),
        sa.Column("available_after", sa.BigInteger, nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("namespace", "sku", "seq", name="uq_ledger_item_seq"),
        sa.UniqueConstraint("namespace", "sku", "idempotency_key", name="uq_ledger_item_key"),
        sa.ForeignKeyConstraint(["namespace", "sku"],
                                ["inventory_items.namespace", "inventory_items.sku"],
                                name="fk_ledger_item"),
        sa.CheckConstraint("kind IN ('init', 'adjust', 'decrement', 'refund')",
                           name="ck_ledger_kind"),
    )


def downgrade() -> None:
    op.drop_table("inventory_ledger")
    op.drop_table("inventory_items")
