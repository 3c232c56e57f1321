"""The ledger keeps every key: a key reused after its window is a new movement whose row keeps
the key, so (namespace, sku, idempotency_key) is indexed, not unique (seq stays unique: no row
is written twice). A reservation's extension is a ledger row of kind ``extend``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

KINDS = ("'init', 'adjust', 'decrement', 'refund', 'hold', 'confirm', 'release', 'expire', "
         "'extend'")
OLD_KINDS = "'init', 'adjust', 'decrement', 'refund', 'hold', 'confirm', 'release', 'expire'"


def upgrade() -> None:
    with op.batch_alter_table("inventory_ledger") as batch:
        batch.drop_constraint("uq_ledger_item_key", type_="unique")
        batch.drop_constraint("ck_ledger_kind", type_="check")
        batch.create_check_constraint("ck_ledger_kind", f"kind IN ({KINDS})")
    # A retry is answered from the ledger by its key's latest row.
    op.create_index("ix_ledger_item_key", "inventory_ledger",
                    ["namespace", "sku", "idempotency_key"],
                    postgresql_where=sa.text("idempotency_key IS NOT NULL"),
                    sqlite_where=sa.text("idempotency_key IS NOT NULL"))


def downgrade() -> None:
    # Refused where a key was reused after its window (two rows hold it): nothing is dropped.
    op.drop_index("ix_ledger_item_key", "inventory_ledger")
    op.execute("DELETE FROM inventory_ledger WHERE kind = 'extend'")
    with op.batch_alter_table("inventory_ledger") as batch:
        batch.drop_constraint("ck_ledger_kind", type_="check")
        batch.create_check_constraint("ck_ledger_kind", f"kind IN ({OLD_KINDS})")
        batch.create_unique_constraint("uq_ledger_item_key",
                                       ["namespace", "sku", "idempotency_key"])
