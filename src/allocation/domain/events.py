"""Things that happened to an item. Every event carries the item's figures after it."""

from __future__ import annotations

from dataclasses import dataclass, field

from allocation.domain import outcome


@dataclass(frozen=True)
class Event:
    namespace: str
    sku: str
    total: int
    consumed: int
    held: int = field(default=0, kw_only=True)

    @property
    def available(self) -> int:
        return outcome.available(self.total, self.consumed, self.held)


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


@dataclass(frozen=True)
class HoldMoved(Event):
    """One line of a reservation, held or ended: the item's figures after it."""

    reservation_id: str
    qty: int


@dataclass(frozen=True)
class Reserved(HoldMoved):
    idempotency_key: str | None = None  # the request's that made the reservation


class ReservationConfirmed(HoldMoved):
    pass


class ReservationReleased(HoldMoved):
    pass


class ReservationExpired(HoldMoved):
    pass


HOLD_EVENTS: dict[str, type[HoldMoved]] = {
    "hold": Reserved, "confirm": ReservationConfirmed, "release": ReservationReleased,
    "expire": ReservationExpired}


def of_movement(kind: str, namespace: str, sku: str, qty: int, idempotency_key: str | None,
                total: int, consumed: int, buyer: str | None = None,
                held: int = 0) -> list[Event]:
    """The events an applied movement raises, from its figures after it."""
    raised: list[Event] = []
    if kind == "adjust":
        raised.append(TotalAdjusted(namespace, sku, total, consumed, qty, idempotency_key,
                                    held=held))
        if qty < 0 and total == consumed + held:  # taken down to nothing left
            raised.append(SoldOut(namespace, sku, total, consumed, held=held))
    elif kind == "decrement" and idempotency_key is not None:
        raised.append(Decremented(namespace, sku, total, consumed, qty, idempotency_key, buyer,
                                  held=held))
        if total == consumed + held:
            raised.append(SoldOut(namespace, sku, total, consumed, held=held))
    elif kind == "refund" and idempotency_key is not None:
        raised.append(Refunded(namespace, sku, total, consumed, qty, idempotency_key, buyer,
                               held=held))
    return raised
