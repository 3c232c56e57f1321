"""Each item's counter generation: the ledger writes only movements of the counter generation
it follows, so seqs that a history Redis lost handed out are never written.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("inventory_items", sa.Column("counter_gen", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inventory_items") as batch:
        batch.drop_column("counter_gen")
