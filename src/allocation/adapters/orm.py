"""Imperative SQLAlchemy 2.x mapping of the domain: the items table and the append-only ledger."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    event,
    func,
    inspect,
)
from sqlalchemy.orm import registry

from allocation.domain.model import InventoryItem

metadata = MetaData()
mapper_registry = registry(metadata=metadata)

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")

# Access tokens: only a hash of each token is kept (the token is shown once, when made).
access_tokens = Table(
    "access_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("namespace", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("role IN ('read', 'sell', 'admin')", name="access_token_role"),
)

items = Table(
    "inventory_items",
    metadata,
    Column("namespace", String(64), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("total", BigInteger, nullable=False),
    Column("consumed", BigInteger, nullable=False),
    Column("held", BigInteger, nullable=False, server_default="0"),
    Column("last_seq", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    Column("counter_gen", String(32), nullable=True),
    Column("limit_per_buyer", BigInteger, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now(),
           onupdate=func.now()),
    CheckConstraint("consumed >= 0 AND held >= 0 AND consumed + held <= total",
                    name="ck_items_consumed_in_range"),
)

ledger = Table(
    "inventory_ledger",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("namespace", String(64), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("qty", BigInteger, nullable=False),
    Column("total_after", BigInteger, nullable=False),
    Column("available_after", BigInteger, nullable=False),
    Column("idempotency_key", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("buyer", String(128), nullable=True),
    Column("reservation_id", String(64), nullable=True),
    Column("held_after", BigInteger, nullable=False, server_default="0"),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("namespace", "sku", "seq", name="uq_ledger_item_seq"),
    ForeignKeyConstraint(["namespace", "sku"], ["inventory_items.namespace", "inventory_items.sku"],
                         name="fk_ledger_item"),
    CheckConstraint("kind IN ('init', 'adjust', 'decrement', 'refund', 'hold', 'confirm', "
                    "'release', 'expire', 'extend')", name="ck_ledger_kind"),
)
Index("ix_ledger_item_buyer", ledger.c.namespace, ledger.c.sku, ledger.c.buyer,
      postgresql_where=ledger.c.buyer.is_not(None), sqlite_where=ledger.c.buyer.is_not(None))
# Not unique: a key reused after its window is a new movement, and its row keeps the key.
Index("ix_ledger_item_key", ledger.c.namespace, ledger.c.sku, ledger.c.idempotency_key,
      postgresql_where=ledger.c.idempotency_key.is_not(None),
      sqlite_where=ledger.c.idempotency_key.is_not(None))
Index("ix_ledger_reservation", ledger.c.namespace, ledger.c.reservation_id,
      postgresql_where=ledger.c.reservation_id.is_not(None),
      sqlite_where=ledger.c.reservation_id.is_not(None))

# Sales (the waiting room): their terms, so that a Redis rebuild can restore them; the queue
# itself lives in Redis. A sku is in at most one open sale: the partial unique index says so
# whatever the race between two sales naming it.
sales = Table(
    "sales",
    metadata,
    Column("namespace", String(64), primary_key=True),
    Column("sale", String(64), primary_key=True),
    Column("opens_at", DateTime(timezone=True), nullable=False),
    Column("admit_factor", Float, nullable=False),
    Column("pass_ttl_seconds", Integer, nullable=False),
    Column("max_admitted", Integer, nullable=True),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

sale_skus = Table(
    "sale_skus",
    metadata,
    Column("namespace", String(64), primary_key=True),
    Column("sale", String(64), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("position", Integer, nullable=False),  # the skus' order as the sale named them
    Column("open", Boolean, nullable=False),
    ForeignKeyConstraint(["namespace", "sale"], ["sales.namespace", "sales.sale"],
                         name="fk_sale_skus_sale"),
)
Index("uq_sale_skus_open_sku", sale_skus.c.namespace, sale_skus.c.sku, unique=True,
      postgresql_where=sale_skus.c.open, sqlite_where=sale_skus.c.open)


def start_mappers() -> None:
    """Map the domain classes once per process; safe to call again."""
    if inspect(InventoryItem, raiseerr=False) is not None:
        return
    mapper_registry.map_imperatively(
        InventoryItem, items, version_id_col=items.c.version,
        exclude_properties=["created_at", "updated_at"],
    )
    # LedgerEntry stays a plain dataclass: the ledger is written with multi-row INSERT / COPY and
    # read with Core selects; mapping it would only add per-object bookkeeping.
    event.listen(InventoryItem, "load", _fresh_collections)


def _fresh_collections(item: InventoryItem, _context: Any) -> None:
    # Loaded aggregates skip __init__; give them the lists the domain appends to.
    item.events = []
    item.new_entries = []
