"""Where aggregates are kept, on SQL: the repository port's SQLAlchemy adapter."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Select,
    String,
    any_,
    bindparam,
    case,
    cast,
    exists,
    func,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from allocation.adapters import orm
from allocation.adapters.counter import Allowances, Hold, Restored
from allocation.adapters.repository import UNITS_SIGN, AbstractRepository, aware
from allocation.adapters.sql_arrays import text_array
from allocation.domain.model import InventoryItem, LedgerEntry
from allocation.domain.outcome import Figures

ENTRY_COLUMNS = [orm.ledger.c[name] for name in (
    "namespace", "sku", "seq", "kind", "qty", "total_after", "available_after", "idempotency_key",
    "created_at", "buyer", "reservation_id", "held_after", "expires_at")]

# The sku, then an item's figures in the order of ``Figures``' fields.
STOCK_COLUMNS = [orm.items.c[name]
                 for name in ("sku", "total", "consumed", "held", "limit_per_buyer", "last_seq")]


# The items Redis lost, rebased, with their buyers' units, open holds (each until its latest
# extension) and keyed movements: one statement that reads their ledger rows once and answers
# one row of flat arrays, a column each (the driver parses an array in C; a row, or a nested
# array, per item cost more in Python, garbage collection included, than the database's work).
# Each part's arrays are one aggregate of its own, one row each: no join for the planner to
# misjudge on a freshly loaded table (its nested loops over 2,000 items ran past the statement
# timeout). A part's arrays are built in one pass over its rows sorted once (an ORDER BY in
# each array_agg sorted the part again for every column), so they line up row for row.
def _arrays(source: str, order: str, *columns: str) -> str:
    aggregates = ", ".join(f"array_agg({c})" for c in columns)
    return f"(SELECT {aggregates} FROM (SELECT * FROM {source} ORDER BY {order}) AS sorted)"


_UNITS = " ".join(f"WHEN '{kind}' THEN {sign} * qty" for kind, sign in UNITS_SIGN.items())
REBASE_LOST = text(f"""
WITH renewed AS (
  UPDATE inventory_items SET counter_gen = :gen, version = version + 1
  WHERE namespace = :namespace AND sku BETWEEN :first AND :last
    AND sku = ANY(CAST(:skus AS text[]))
  RETURNING sku, total, consumed, last_seq, limit_per_buyer, held),
moves AS MATERIALIZED (
  SELECT sku, seq, kind, qty, buyer, reservation_id, idempotency_key, total_after,
         available_after, held_after, expires_at, created_at
  FROM inventory_ledger
  WHERE namespace = :namespace AND sku BETWEEN :first AND :last
    AND sku = ANY(CAST(:skus AS text[]))),
units AS (
  SELECT * FROM (SELECT sku, buyer, sum(CASE kind {_UNITS} ELSE 0 END)::bigint AS n
                 FROM moves WHERE buyer IS NOT NULL GROUP BY sku, buyer) b
  WHERE n > 0),
lines AS (
  SELECT sku, reservation_id, max(qty) FILTER (WHERE kind = 'hold') AS qty,
         max(buyer) FILTER (WHERE kind = 'hold') AS buyer,
         coalesce((array_agg(expires_at ORDER BY seq DESC) FILTER (WHERE kind = 'extend'))[1],
                  max(coalesce(expires_at, created_at)) FILTER (WHERE kind = 'hold')) AS until
  FROM moves WHERE reservation_id IS NOT NULL
  GROUP BY sku, reservation_id
  HAVING bool_or(kind = 'hold') AND NOT bool_or(kind IN ('confirm', 'release', 'expire'))),
keyed AS (
  SELECT * FROM moves WHERE idempotency_key IS NOT NULL AND created_at >= :since)
SELECT * FROM
{_arrays("renewed", "sku", "sku", "total", "consumed", "last_seq", "limit_per_buyer", "held")}
  AS figures,
{_arrays("units", "sku, buyer", "sku", "buyer", "n")} AS units_of,
{_arrays("lines", "sku, reservation_id", "sku", "reservation_id", "qty",
         "coalesce(buyer, '')", "floor(extract(epoch FROM until) * 1000)::bigint")} AS held,
{_arrays("keyed", "sku, seq DESC", "sku", "idempotency_key", "kind", "qty", "buyer",
         "total_after", "available_after", "held_after",
         "floor(extract(epoch FROM created_at) * 1000000)::bigint")} AS keys_of
""")


# A page of SKUs after ``after`` ("" for the first: every SKU sorts after it).
SKU_PAGE = text("SELECT array_agg(sku) FROM (SELECT sku FROM inventory_items "
                "WHERE namespace = :namespace AND sku > :after ORDER BY sku LIMIT :limit) AS page")


class SqlAlchemyRepository(AbstractRepository):
    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def _add(self, item: InventoryItem) -> None:
        self.session.add(item)

    def _get(self, namespace: str, sku: str, lock: bool) -> InventoryItem | None:
        query = select(InventoryItem).filter_by(namespace=namespace, sku=sku)
        if lock:
            query = query.with_for_update()
        return self.session.scalars(query).one_or_none()

    def lock_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], InventoryItem]:
        wanted = sorted(set(keys))
        rows = self.session.scalars(
            select(InventoryItem)
            .where(tuple_(orm.items.c.namespace, orm.items.c.sku).in_(wanted))
            .order_by(orm.items.c.namespace, orm.items.c.sku)
            .with_for_update()).all()
        self.seen.update(rows)
        return {(row.namespace, row.sku): row for row in rows}

    def many(self, namespace: str, skus: Sequence[str]) -> dict[str, InventoryItem]:
        rows = self.session.scalars(select(InventoryItem).where(
            orm.items.c.namespace == namespace, orm.items.c.sku.in_(list(skus)))).all()
        self.seen.update(rows)
        return {row.sku: row for row in rows}

    def list(self, namespace: str, after: str | None, limit: int,
             *, lock: bool = False) -> Sequence[InventoryItem]:
        query = select(InventoryItem).where(orm.items.c.namespace == namespace)
        if after is not None:
            query = query.where(orm.items.c.sku > after)
        query = query.order_by(orm.items.c.sku).limit(limit)
        if lock:
            query = query.with_for_update()
        return self.session.scalars(query).all()

    # Bulk reads skip the ORM: building aggregates cost more than the queries themselves.
    def stock(self, namespace: str, skus: Sequence[str]) -> dict[str, Figures]:
        rows = self.session.execute(select(*STOCK_COLUMNS).where(
            orm.items.c.namespace == namespace, self._among(orm.items.c.sku, skus)))
        return {row[0]: Figures(*row[1:]) for row in rows}

    def stock_page(self, namespace: str, after: str | None, limit: int
                   ) -> Sequence[tuple[str, Figures]]:
        query = select(*STOCK_COLUMNS).where(orm.items.c.namespace == namespace)
        if after is not None:
            query = query.where(orm.items.c.sku > after)
        return [(row[0], Figures(*row[1:])) for row in
                self.session.execute(query.order_by(orm.items.c.sku).limit(limit))]

    def sku_page(self, namespace: str, after: str | None, limit: int) -> builtins.list[str]:
        if self.session.get_bind().dialect.name == "postgresql":
            # One row, an array the driver parses in C: a row a SKU cost more.
            found: builtins.list[str] | None = self.session.execute(SKU_PAGE, {
                "namespace": namespace, "after": after or "", "limit": limit}).scalar()
            return found or []
        query = select(orm.items.c.sku).where(orm.items.c.namespace == namespace)
        if after is not None:
            query = query.where(orm.items.c.sku > after)
        return builtins.list(self.session.scalars(query.order_by(orm.items.c.sku).limit(limit)))

    def allowances(self, namespace: str, skus: Sequence[str]) -> dict[str, Allowances]:
        wanted = list(skus)
        limits = self.session.execute(select(orm.items.c.sku, orm.items.c.limit_per_buyer).where(
            orm.items.c.namespace == namespace, self._among(orm.items.c.sku, wanted))).all()
        buyers = self.buyers(namespace, wanted)
        return {sku: (limit, buyers.get(sku, {})) for sku, limit in limits}

    def buyers(self, namespace: str, skus: Sequence[str]) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        ledger = orm.ledger.c
        units = func.sum(case(*((ledger.kind == kind, sign * ledger.qty)
                                for kind, sign in UNITS_SIGN.items()), else_=0))
        for sku, buyer, n in self.session.execute(
                select(ledger.sku, ledger.buyer, units)
                .where(ledger.namespace == namespace, self._among(ledger.sku, skus),
                       ledger.buyer.is_not(None))
                .group_by(ledger.sku, ledger.buyer).having(units > 0)):
            found.setdefault(sku, {})[buyer] = int(n)
        return found

    def open_holds(self, namespace: str, skus: Sequence[str]
                   ) -> dict[str, builtins.list[Hold]]:
        ledger = orm.ledger.c
        ended, extension = orm.ledger.alias("ended").c, orm.ledger.alias("extension").c
        # Extended holds: each line's latest extension holds the expiry (seq orders them).
        extended = (select(extension.expires_at)
                    .where(extension.namespace == ledger.namespace,
                           extension.reservation_id == ledger.reservation_id,
                           extension.sku == ledger.sku, extension.kind == "extend")
                    .order_by(extension.seq.desc()).limit(1).scalar_subquery())
        rows = self.session.execute(
            select(ledger.sku, ledger.reservation_id, ledger.qty, ledger.buyer,
                   func.coalesce(extended, ledger.expires_at, ledger.created_at))
            .where(ledger.namespace == namespace, self._among(ledger.sku, skus),
                   ledger.kind == "hold",
                   ~exists().where(ended.namespace == ledger.namespace,
                                   ended.reservation_id == ledger.reservation_id,
                                   ended.sku == ledger.sku,
                                   ended.kind.in_(("confirm", "release", "expire")))))
        found: dict[str, builtins.list[Hold]] = {sku: [] for sku in skus}
        for sku, rid, qty, buyer, until in rows:
            if isinstance(until, str):  # SQLite hands back a coalesced time as text
                until = datetime.fromisoformat(until)
            found[sku].append((rid or "", qty, buyer or "",
                               int(aware(until).timestamp() * 1000)))
        return found

    def generations(self, namespace: str, skus: Sequence[str]) -> dict[str, str | None]:
        rows = self.session.execute(select(orm.items.c.sku, orm.items.c.counter_gen).where(
            orm.items.c.namespace == namespace, self._among(orm.items.c.sku, skus)))
        return {row[0]: row[1] for row in rows}

    def rebase(self, namespace: str, skus: Sequence[str], gen: str) -> dict[str, Figures]:
        # One statement for a whole batch (it locks the rows as the writers' do); the ORM
        # would send an UPDATE per item.
        rows = self.session.execute(
            update(orm.items)
            .where(orm.items.c.namespace == namespace, self._among(orm.items.c.sku, skus))
            .values(counter_gen=gen, version=orm.items.c.version + 1)
            .returning(*STOCK_COLUMNS))
        return {row[0]: Figures(*row[1:]) for row in rows}

    def rebase_lost(self, namespace: str, skus: Sequence[str], gen: str,
                    since: datetime) -> Restored:
        if self.session.get_bind().dialect.name != "postgresql":
            return super().rebase_lost(namespace, skus, gen, since)
        # The driver's arrays are the columns as they are: no object per item or row.
        row = [column or [] for column in self.session.execute(REBASE_LOST, {
            "gen": gen, "namespace": namespace, "skus": text_array(skus), "first": min(skus),
            "last": max(skus), "since": since}).one()]
        (found, totals, consumed, seqs, limits, held), n = row[:6], len(row[0])
        return Restored(found, totals, consumed, held, seqs, gen, limits, [""] * n,
                        tuple(row[6:9]), tuple(row[9:14]), tuple(row[14:]))  # type: ignore[arg-type]

    def keyed_entries(self, namespace: str, skus: Sequence[str], since: datetime,
                      limit: int = 1_000_000) -> Sequence[LedgerEntry]:
        return self._entries(
            select(*ENTRY_COLUMNS)
            .where(orm.ledger.c.namespace == namespace, self._among(orm.ledger.c.sku, skus),
                   orm.ledger.c.idempotency_key.is_not(None),
                   orm.ledger.c.created_at >= self._moment(since))
            # A key used twice (its window shortened since): the latest first, which the
            # counter's remember (first one wins) keeps.
            .order_by(orm.ledger.c.seq.desc())
            .limit(limit))

    def reservation_entries(self, namespace: str, reservation_id: str) -> Sequence[LedgerEntry]:
        return self._entries(select(*ENTRY_COLUMNS).where(
            orm.ledger.c.namespace == namespace, orm.ledger.c.reservation_id == reservation_id)
            .order_by(orm.ledger.c.sku, orm.ledger.c.seq))

    def reservation_entry(self, namespace: str, sku: str, reservation_id: str,
                          kind: str) -> LedgerEntry | None:
        found = self._entries(select(*ENTRY_COLUMNS).where(
            orm.ledger.c.namespace == namespace, orm.ledger.c.reservation_id == reservation_id,
            orm.ledger.c.sku == sku, orm.ledger.c.kind == kind))
        return found[0] if found else None

    def entry_for_key(self, namespace: str, sku: str, key: str,
                      since: datetime | None = None) -> LedgerEntry | None:
        query = select(*ENTRY_COLUMNS).where(
            orm.ledger.c.namespace == namespace, orm.ledger.c.sku == sku,
            orm.ledger.c.idempotency_key == key)
        if since is not None:
            query = query.where(orm.ledger.c.created_at >= self._moment(since))
        found = self._entries(query.order_by(orm.ledger.c.seq.desc()).limit(1))
        return found[0] if found else None

    def _among(self, column: ColumnElement[str], values: Sequence[str]) -> ColumnElement[bool]:
        """``column IN values``; on PostgreSQL one array parameter rather than a parameter per
        value (a rebuild asks about thousands of items at once)."""
        if self.session.get_bind().dialect.name == "postgresql":
            return column == any_(cast(bindparam(None, text_array(values), type_=String),
                                       ARRAY(String)))
        return column.in_(list(values))

    def _moment(self, moment: datetime) -> datetime:
        # SQLite compares timestamps as the naive UTC text it stored.
        return (moment if self.session.get_bind().dialect.name == "postgresql"
                else moment.astimezone(UTC).replace(tzinfo=None))

    def ledger(self, namespace: str, sku: str, after_seq: int,
               limit: int) -> Sequence[LedgerEntry]:
        return self._entries(
            select(*ENTRY_COLUMNS)
            .where(orm.ledger.c.namespace == namespace, orm.ledger.c.sku == sku,
                   orm.ledger.c.seq > after_seq)
            .order_by(orm.ledger.c.seq).limit(limit))

    def _entries(self, query: Select[Any]) -> Sequence[LedgerEntry]:
        return [LedgerEntry(**row) for row in self.session.execute(query).mappings()]
