"""The ``InventoryItem`` aggregate: one SKU's stock in one namespace, and its ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from allocation.domain import errors, events, rules


@dataclass
class LedgerEntry:
    """One applied movement. ``seq`` is gap-less per item: it is the item's ``last_seq`` + 1,
    taken in the same transaction that writes the row."""

    namespace: str
    sku: str
    seq: int
    kind: str
    qty: int
    total_after: int
    available_after: int
    idempotency_key: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Stock(NamedTuple):
    """An item's figures as the record holds them, for reading in bulk: no aggregate, no
    behaviour, cheap to build by the hundred thousand."""

    sku: str
    total: int
    consumed: int
    last_seq: int


class InventoryItem:
    def __init__(
        self, namespace: str, sku: str, total: int = 0, consumed: int = 0, last_seq: int = 0
    ) -> None:
        self.namespace = namespace
        self.sku = sku
        self.total = total
        self.consumed = consumed
        self.last_seq = last_seq
        self.events: list[events.Event] = []
        self.new_entries: list[LedgerEntry] = []

    @classmethod
    def initialise(cls, namespace: str, sku: str, total: int) -> InventoryItem:
        item = cls(namespace, sku)
        item._move("init", total, None)
        item.events.append(events.InventoryInitialized(namespace, sku, item.total, item.consumed))
        return item

    @property
    def available(self) -> int:
        return self.total - self.consumed

    def adjust(self, delta: int, idempotency_key: str | None = None) -> LedgerEntry:
        entry = self._move("adjust", delta, idempotency_key)
        self.events.append(events.TotalAdjusted(
            self.namespace, self.sku, self.total, self.consumed, delta, idempotency_key))
        return entry

    def decrement(self, qty: int, idempotency_key: str) -> LedgerEntry:
        entry = self._move("decrement", qty, idempotency_key)
        self.events.append(events.Decremented(
            self.namespace, self.sku, self.total, self.consumed, qty, idempotency_key))
        if self.available == 0:
            self.events.append(events.SoldOut(self.namespace, self.sku, self.total, self.consumed))
        return entry

    def refund(self, qty: int, idempotency_key: str) -> LedgerEntry:
        entry = self._move("refund", qty, idempotency_key)
        self.events.append(events.Refunded(
            self.namespace, self.sku, self.total, self.consumed, qty, idempotency_key))
        return entry

    def record(self, kind: rules.Kind, qty: int, idempotency_key: str | None,
               total_after: int, consumed_after: int) -> bool:
        """Write down a movement the fast path already decided and acknowledged.

        The figures after it are the fast path's: what a client was told succeeded is never
        lost. Returns whether the rules, applied here, agree; False means the two had drifted.
        """
        try:
            agrees = rules.apply(kind, self.total, self.consumed, qty) == (total_after,
                                                                          consumed_after)
        except errors.DomainError:
            agrees = False
        self.total, self.consumed = total_after, consumed_after
        self.last_seq += 1
        self.new_entries.append(LedgerEntry(
            namespace=self.namespace, sku=self.sku, seq=self.last_seq, kind=kind, qty=qty,
            total_after=total_after, available_after=total_after - consumed_after,
            idempotency_key=idempotency_key))
        return agrees

    def _move(self, kind: rules.Kind, qty: int, idempotency_key: str | None) -> LedgerEntry:
        self.total, self.consumed = rules.apply(kind, self.total, self.consumed, qty)
        self.last_seq += 1
        entry = LedgerEntry(
            namespace=self.namespace, sku=self.sku, seq=self.last_seq, kind=kind, qty=qty,
            total_after=self.total, available_after=self.available,
            idempotency_key=idempotency_key,
        )
        self.new_entries.append(entry)
        return entry

    def __repr__(self) -> str:
        return (f"InventoryItem({self.namespace!r}, {self.sku!r}, total={self.total}, "
                f"consumed={self.consumed})")
