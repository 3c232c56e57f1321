"""The ``InventoryItem`` aggregate: one SKU's stock in one namespace, and its ledger."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from allocation.domain import errors, events, rules
from allocation.domain.outcome import Figures, available


@dataclass(slots=True)
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
    buyer: str | None = None  # who bought or was refunded, where the request named them
    reservation_id: str | None = None  # the reservation a hold's movement belongs to
    held_after: int = 0
    expires_at: datetime | None = None  # a hold's expiry (a rebuild restores open holds)


class Decided(Protocol):
    """A movement the fast path decided: what it did and the item's figures after it."""

    @property
    def kind(self) -> str: ...
    @property
    def qty(self) -> int: ...
    @property
    def idempotency_key(self) -> str | None: ...
    @property
    def buyer(self) -> str | None: ...
    @property
    def total(self) -> int: ...
    @property
    def consumed(self) -> int: ...
    @property
    def held(self) -> int: ...
    @property
    def reservation_id(self) -> str | None: ...
    @property
    def expires_ms(self) -> int: ...


class InventoryItem:
    def __init__(
        self, namespace: str, sku: str, total: int = 0, consumed: int = 0, last_seq: int = 0
    ) -> None:
        self.namespace = namespace
        self.sku = sku
        self.total = total
        self.consumed = consumed
        self.held = 0
        self.last_seq = last_seq
        # Each buyer's units (bought and held) may not exceed it; None: no limit.
        self.limit_per_buyer: int | None = None
        # The generation of the fast path's counter whose movements the ledger now follows: a
        # movement recorded under another (a history Redis lost) is never written.
        self.counter_gen: str | None = None
        self.events: list[events.Event] = []
        self.new_entries: list[LedgerEntry] = []

    @classmethod
    def initialise(cls, namespace: str, sku: str, total: int,
                   limit_per_buyer: int | None = None) -> InventoryItem:
        item = cls(namespace, sku)
        item.limit_per_buyer = limit_per_buyer
        item._move("init", total, None)
        item.events.append(events.InventoryInitialized(namespace, sku, item.total, item.consumed))
        return item

    @property
    def available(self) -> int:
        return available(self.total, self.consumed, self.held)

    def figures(self) -> Figures:
        """Its figures as the record holds them (no generation: the counter's own)."""
        return Figures(self.total, self.consumed, self.held, self.limit_per_buyer, self.last_seq)

    def adjust(self, delta: int, idempotency_key: str | None = None) -> LedgerEntry:
        entry = self._move("adjust", delta, idempotency_key)
        self.events.append(events.TotalAdjusted(
            self.namespace, self.sku, self.total, self.consumed, delta, idempotency_key))
        if delta < 0 and self.available == 0:
            self.events.append(events.SoldOut(self.namespace, self.sku, self.total, self.consumed))
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

    def record_many(self, movements: Iterable[Decided]) -> list[int]:
        """Write down movements the fast path already decided and acknowledged, in seq order.

        The figures after each are the fast path's: what a client was told succeeded is never
        lost. Returns the seqs where the rules, applied here, disagree (the two had drifted).
        """
        # Runs for every movement the ledger writes: locals, not the mapped attributes, and
        # one timestamp for the lot.
        namespace, sku, now = self.namespace, self.sku, datetime.now(UTC)
        total, consumed, held, seq = self.total, self.consumed, self.held, self.last_seq
        entries, drifted = self.new_entries, []
        for m in movements:
            after = m.total, m.consumed, m.held
            try:
                agrees = rules.apply(m.kind, total, consumed, m.qty, held) == after
            except (errors.DomainError, ValueError):
                agrees = False
            seq += 1
            if not agrees:
                drifted.append(seq)
            total, consumed, held = after
            entries.append(LedgerEntry(
                namespace, sku, seq, m.kind, m.qty, total, available(total, consumed, held),
                m.idempotency_key, now, m.buyer, m.reservation_id, held,
                datetime.fromtimestamp(m.expires_ms / 1000, UTC) if m.expires_ms else None))
        self.total, self.consumed, self.held, self.last_seq = total, consumed, held, seq
        return drifted

    def _move(self, kind: rules.Kind, qty: int, idempotency_key: str | None) -> LedgerEntry:
        self.total, self.consumed, self.held = rules.apply(kind, self.total, self.consumed, qty,
                                                           self.held)
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
