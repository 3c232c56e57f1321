"""Drift: where Redis disagrees with the database plus what the outbox has yet to write, or
lacks an item the database has (after a failover or a restore: what drift is run for)."""

from __future__ import annotations

from dataclasses import dataclass

from allocation.adapters.counter import Reading
from allocation.adapters.outbox import Outbox, OutboxEntry
from allocation.domain import commands
from allocation.domain.outcome import Figures
from allocation.service_layer.rebuild import rebuild_item
from allocation.service_layer.services import Services
from allocation.service_layer.unit_of_work import AbstractUnitOfWork


@dataclass(frozen=True)
class Drift:
    sku: str
    # The figures that must agree (total, consumed, held) per database + unwritten entries,
    # and as Redis has them (None: Redis lacks the item).
    expected: Figures | None
    redis: Figures | None

    @property
    def missing(self) -> bool:
        return self.redis is None


@dataclass(frozen=True)
class DriftReport:
    found: tuple[Drift, ...]
    repaired: int  # items rebuilt from the record


def check(cmd: commands.CheckDrift, services: Services) -> DriftReport:
    """Find a namespace's drift and keep its count for /metrics; with ``repair``, rebuild each
    item found from the record."""
    found = tuple(find(cmd.namespace, services.uow_factory(), services.counter,
                       services.outbox))
    services.record_drift(cmd.namespace, len(found))
    if not cmd.repair:
        return DriftReport(found, 0)
    for drifted in found:
        rebuild_item(services, cmd.namespace, drifted.sku)
    # Repaired, nothing drifts: the alert on this gauge must not outlive the repair.
    services.record_drift(cmd.namespace, 0)
    return DriftReport(found, len(found))


def find(namespace: str, uow: AbstractUnitOfWork, counter: Reading, outbox: Outbox,
         batch_size: int = 1000) -> list[Drift]:
    """Compare every item of a namespace; report, change nothing a read would not (a read ends
    the holds past their expiry that it meets, as every step touching an item does)."""
    suspects = [d.sku for d in _first_look(namespace, uow, counter, outbox, batch_size)]
    if not suspects:
        return []
    # The first look's read ended the due holds it met, after the outbox was read: an item
    # whose only difference is such an end (no sweeper ran) would show as drift, and a repair
    # or an alert would follow for nothing. Look at what differed again, the same way round
    # (its due holds ended first, then the outbox, the record, Redis): what differs still is
    # drift.
    chunks = [suspects[i:i + batch_size] for i in range(0, len(suspects), batch_size)]
    for skus in chunks:
        counter.read_many(namespace, skus)
    pending = outbox.pending(namespace)
    drifted: list[Drift] = []
    for skus in chunks:
        with uow:
            stored = uow.items.stock(namespace, skus)
        live = counter.read_many(namespace, skus)
        drifted += [found for sku, figures in zip(skus, live, strict=True) if sku in stored
                    and (found := _drift(sku, stored[sku], pending.get(sku), figures))]
    return drifted


def _first_look(namespace: str, uow: AbstractUnitOfWork, counter: Reading, outbox: Outbox,
                batch_size: int) -> list[Drift]:
    """Every item of the namespace compared once: the outbox first, then the record (an entry
    the ledger writer takes from the one meanwhile is in the other), then Redis."""
    pending = outbox.pending(namespace)
    drifted: list[Drift] = []
    after: str | None = None
    while True:
        with uow:
            batch = uow.items.stock_page(namespace, after, batch_size)
        if not batch:
            return drifted
        live = counter.read_many(namespace, [sku for sku, _ in batch])
        drifted += [found for (sku, stored), figures in zip(batch, live, strict=True)
                    if (found := _drift(sku, stored, pending.get(sku), figures))]
        after = batch[-1][0]


def _drift(sku: str, stored: Figures, unwritten: OutboxEntry | None,
           figures: Figures | None) -> Drift | None:
    """How Redis differs from the record plus its unwritten entry, if it does."""
    expected = (Figures(unwritten.total, unwritten.consumed, unwritten.held)
                if unwritten is not None and unwritten.seq > stored.seq
                else _compared(stored))
    actual = None if figures is None else _compared(figures)
    return None if actual == expected else Drift(sku, expected, actual)


def _compared(figures: Figures) -> Figures:
    """What of an item's figures the record and Redis must agree on: its limit, seq and
    generation are compared elsewhere (a rebuild)."""
    return Figures(figures.total, figures.consumed, figures.held)
