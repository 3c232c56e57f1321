"""The read side: stock figures from the counter (the fast path), listings from the database."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from allocation.domain import commands, errors
from allocation.domain.model import LedgerEntry
from allocation.domain.outcome import Figures

if TYPE_CHECKING:
    from allocation.bootstrap import Application


def item(app: Application, namespace: str, sku: str) -> Figures:
    figures = app.counter.read(namespace, sku)
    if figures is not None:
        return figures
    # The counter does not hold it (never loaded, or Redis lost it): rebuild from the record.
    rebuilt: Figures = app.bus.handle(commands.Refresh(namespace, sku))
    return rebuilt


def items(app: Application, namespace: str, after: str | None,
          limit: int) -> tuple[list[tuple[str, Figures]], str | None]:
    """A page of a namespace's items in SKU order, and the SKU to continue after (or None)."""
    with app.uow_factory() as uow:
        rows = uow.items.list(namespace, after, limit + 1)
        page = [(row.sku, row.figures()) for row in rows[:limit]]
    live = app.counter.read_many(namespace, [sku for sku, _ in page])
    merged = [(sku, fresh or stored) for (sku, stored), fresh in zip(page, live, strict=True)]
    return merged, (page[-1][0] if len(rows) > limit else None)


def ledger(app: Application, namespace: str, sku: str, after_seq: int,
           limit: int) -> Sequence[LedgerEntry]:
    with app.uow_factory() as uow:
        if uow.items.get(namespace, sku) is None:
            raise errors.NotFound(f"no item {namespace}/{sku}")
        # Copies, so they outlive the session.
        return [dataclasses.replace(e) for e in uow.items.ledger(namespace, sku, after_seq, limit)]
