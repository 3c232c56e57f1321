"""Intentions sent to the message bus; one handler each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    pass


@dataclass(frozen=True)
class InitInventory(Command):
    namespace: str
    sku: str
    total: int
    limit_per_buyer: int | None = None


@dataclass(frozen=True)
class InitMany(Command):
    """Initialise many items at once: all of them or none."""

    namespace: str
    items: tuple[tuple[str, int], ...]  # (sku, total)


@dataclass(frozen=True)
class AdjustTotal(Command):
    namespace: str
    sku: str
    delta: int
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Decrement(Command):
    namespace: str
    sku: str
    qty: int
    idempotency_key: str
    buyer: str | None = None
    sale_pass: str | None = None  # the Sale-Pass header: a gated sku's sale needs one


@dataclass(frozen=True)
class Refund(Command):
    namespace: str
    sku: str
    qty: int
    idempotency_key: str
    buyer: str | None = None


@dataclass(frozen=True)
class SetLimit(Command):
    """Set (or, with None, lift) an item's limit per buyer."""

    namespace: str
    sku: str
    limit_per_buyer: int | None


@dataclass(frozen=True)
class Reserve(Command):
    """Hold every line (sku, qty) for a buyer while they pay, or none."""

    namespace: str
    lines: tuple[tuple[str, int], ...]
    idempotency_key: str
    ttl_seconds: int = 600
    buyer: str | None = None
    sale_pass: str | None = None  # the Sale-Pass header: a line of a gated sku needs one


@dataclass(frozen=True)
class ConfirmReservation(Command):
    namespace: str
    reservation_id: str


@dataclass(frozen=True)
class ReleaseReservation(Command):
    namespace: str
    reservation_id: str


@dataclass(frozen=True)
class ExtendReservation(Command):
    namespace: str
    reservation_id: str
    ttl_seconds: int


@dataclass(frozen=True)
class Refresh(Command):
    namespace: str
    sku: str


@dataclass(frozen=True)
class CheckDrift(Command):
    """Compare a namespace's items in Redis with the record; with ``repair``, rebuild those that
    differ."""

    namespace: str
    repair: bool = False


@dataclass(frozen=True)
class RefreshAll(Command):
    namespace: str
    after: str | None = None
    batch_size: int = 1000
    batches: int | None = None  # None: to the end of the namespace


@dataclass(frozen=True)
class PutSale(Command):
    """Define a sale gating ``skus`` (the same terms again: the same sale)."""

    namespace: str
    sale: str
    skus: tuple[str, ...]
    opens_at_ms: int | None = None  # None: now
    admit_factor: float = 2.0
    pass_ttl_seconds: int = 300
    max_admitted: int | None = None


@dataclass(frozen=True)
class CloseSale(Command):
    namespace: str
    sale: str


@dataclass(frozen=True)
class JoinQueue(Command):
    namespace: str
    sale: str
    buyer: str
