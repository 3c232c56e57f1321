"""Buyer limits: an item's limit per buyer, and the buyer a ledger movement named (a rebuild
sums each buyer's units from it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("inventory_items", sa.Column("limit_per_buyer", sa.BigInteger, nullable=True))
    op.add_column("inventory_ledger", sa.Column("buyer", sa.String(128), nullable=True))
    # A rebuild sums buyers' units; only movements that named one are indexed.
    op.create_index("ix_ledger_item_buyer", "inventory_ledger", ["namespace", "sku", "buyer"],
                    postgresql_where=sa.text("buyer IS NOT NULL"),
                    sqlite_where=sa.text("buyer IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_ledger_item_buyer", "inventory_ledger")
    with op.batch_alter_table("inventory_ledger") as batch:
        batch.drop_column("buyer")
    with op.batch_alter_table("inventory_items") as batch:
        batch.drop_column("limit_per_buyer")
