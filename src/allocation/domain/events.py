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


@dataclass(frozen=True)
class Refunded(Event):
    qty: int
    idempotency_key: str


@dataclass(frozen=True)
class SoldOut(Event):
    pass
