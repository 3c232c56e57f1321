"""Reservations: the units each item holds, and on each ledger row the reservation it belongs
to, the units held after it and a hold's expiry (a rebuild restores the open holds from them).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

KINDS = "'init', 'adjust', 'decrement', 'refund', 'hold', 'confirm', 'release', 'expire'"


def upgrade() -> None:
    with op.batch_alter_table("inventory_items") as batch:
        batch.add_column(sa.Column("held", sa.BigInteger, nullable=False, server_default="0"))
        batch.drop_constraint("ck_items_consumed_in_range", type_="check")
        batch.create_check_constraint("ck_items_consumed_in_range",
                                      "consumed >= 0 AND held >= 0 AND consumed + held <= total")
    with op.batch_alter_table("inventory_ledger") as batch:
        batch.add_column(sa.Column("reservation_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("held_after", sa.BigInteger, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint("ck_ledger_kind", type_="check")
        batch.create_check_constraint("ck_ledger_kind", f"kind IN ({KINDS})")
    # A rebuild finds an item's open holds; a lookup finds a reservation's rows.
    op.create_index("ix_ledger_reservation", "inventory_ledger",
                    ["namespace", "reservation_id"],
                    postgresql_where=sa.text("reservation_id IS NOT NULL"),
                    sqlite_where=sa.text("reservation_id IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_ledger_reservation", "inventory_ledger")
    with op.batch_alter_table("inventory_ledger") as batch:
        batch.drop_constraint("ck_ledger_kind", type_="check")
        batch.create_check_constraint(
            "ck_ledger_kind", "kind IN ('init', 'adjust', 'decrement', 'refund')")
        batch.drop_column("expires_at")
        batch.drop_column("held_after")
        batch.drop_column("reservation_id")
    with op.batch_alter_table("inventory_items") as batch:
        batch.drop_constraint("ck_items_consumed_in_range", type_="check")
        batch.create_check_constraint("ck_items_consumed_in_range",
                                      "consumed >= 0 AND consumed <= total")
        batch.drop_column("held")
