"""Things that happened to an item. Every event carries the item's figures after it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    namespace: str
    sku: str
    total: int
    consumed: int

    @property
    def available(self) -> int:
        return self.total - self.consumed


@dataclass(frozen=True)
class InventoryInitialized(Event):
    pass


@dataclass(frozen=True)
class TotalAdjusted(Event):
    delta: int
    idempotency_key: str | None


@dataclass(frozen=True)
class Decremented(Event):
    qty: int
    idempotency_key: str
    buyer: str | None = None


@dataclass(frozen=True)
class Refunded(Event):
    qty: int
    idempotency_key: str
    buyer: str | None = None


@dataclass(frozen=True)
class SoldOut(Event):
    pass


def of_movement(kind: str, namespace: str, sku: str, qty: int, idempotency_key: str | None,
                total: int, consumed: int, buyer: str | None = None) -> list[Event]:
    """The events an applied movement raises, from its figures after it."""
    raised: list[Event] = []
    if kind == "adjust":
        raised.append(TotalAdjusted(namespace, sku, total, consumed, qty, idempotency_key))
    elif kind == "decrement" and idempotency_key is not None:
        raised.append(Decremented(namespace, sku, total, consumed, qty, idempotency_key, buyer))
        if total == consumed:
            raised.append(SoldOut(namespace, sku, total, consumed))
    elif kind == "refund" and idempotency_key is not None:
        raised.append(Refunded(namespace, sku, total, consumed, qty, idempotency_key, buyer))
    return raised
