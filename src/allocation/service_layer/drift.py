"""Drift: where Redis disagrees with the database plus what the outbox has yet to write, or
lacks an item the database has (after a failover or a restore: what drift is run for)."""

from __future__ import annotations

from dataclasses import dataclass

from allocation.adapters.counter import Reading
from allocation.adapters.outbox import Outbox
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
    """Compare every item of a namespace; report, change nothing."""
    pending = outbox.pending(namespace)
    drifted: list[Drift] = []
    after: str | None = None
    while True:
        with uow:
            batch = uow.items.stock_page(namespace, after, batch_size)
        if not batch:
            return drifted
        live = counter.read_many(namespace, [sku for sku, _ in batch])
        for (sku, stored), figures in zip(batch, live, strict=True):
            unwritten = pending.get(sku)
            expected = (Figures(unwritten.total, unwritten.consumed, unwritten.held)
                        if unwritten is not None and unwritten.seq > stored.seq
                        else _compared(stored))
            actual = None if figures is None else _compared(figures)
            if actual != expected:
                drifted.append(Drift(sku, expected, actual))
        after = batch[-1][0]


def _compared(figures: Figures) -> Figures:
    """What of an item's figures the record and Redis must agree on: its limit, seq and
    generation are compared elsewhere (a rebuild)."""
    return Figures(figures.total, figures.consumed, figures.held)
