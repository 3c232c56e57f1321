"""Movements (adjust, decrement, refund): one pipeline for both durability modes.

One atomic step on the counter checks the rule, applies the movement, takes the item's next seq
and appends the movement to the outbox; the ledger writers commit the outbox to PostgreSQL in
the order the counter applied it, so the two cannot disagree about an item's history. The
durability mode only decides when the caller is answered (``durability.Durability``).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from allocation.adapters.counter import MovingStock, Reading
from allocation.domain import commands, errors
from allocation.domain.model import LedgerEntry
from allocation.domain.outcome import FENCED, NOT_FOUND, OK, Figures, Outcome
from allocation.domain.rules import Kind
from allocation.service_layer import rebuild, sale_passes
from allocation.service_layer.durability import Replaced
from allocation.service_layer.services import Services
from allocation.service_layer.unit_of_work import AbstractUnitOfWork


def adjust_total(cmd: commands.AdjustTotal, services: Services) -> Outcome:
    return _move(services, cmd.namespace, cmd.sku, "adjust", cmd.delta, cmd.idempotency_key)


def decrement(cmd: commands.Decrement, services: Services) -> Outcome:
    sale = services.sales.gated.get((cmd.namespace, cmd.sku))
    if sale is None:  # the common path: one look-up
        outcome = _move(services, cmd.namespace, cmd.sku, "decrement", cmd.qty,
                        cmd.idempotency_key, cmd.buyer)
        if outcome.status != "pass_required":
            return outcome
        # The script knows of a sale this process has not read yet: read it, then as below.
        sale = services.sales.gating(cmd.namespace, cmd.sku)
        if sale is None:
            return outcome
    with sale_passes.claimed(services, sale, cmd.buyer, cmd.sale_pass, cmd.qty,
                             cmd.idempotency_key) as claim:
        outcome = _move(services, cmd.namespace, cmd.sku, "decrement", cmd.qty,
                        cmd.idempotency_key, cmd.buyer, claim.sale_of)
        claim.used = outcome.ok and not outcome.replayed
    if claim.replay and outcome.status == "pass_required":
        raise sale_passes.spent(claim)
    if outcome.ok and not outcome.replayed:
        sale_passes.sold(services, sale, [outcome.figures])
    return outcome


def refund(cmd: commands.Refund, services: Services) -> Outcome:
    return _move(services, cmd.namespace, cmd.sku, "refund", cmd.qty, cmd.idempotency_key,
                 cmd.buyer)


def _written(uow: AbstractUnitOfWork, namespace: str, sku: str, key: str,
             since: datetime | None = None) -> LedgerEntry | None:
    with uow:
        entry = uow.items.entry_for_key(namespace, sku, key, since)
        return None if entry is None else dataclasses.replace(entry)


def _answered(counter: Reading, namespace: str, sku: str, kind: Kind, qty: int,
              buyer: str | None, entry: LedgerEntry) -> Outcome:
    """A retry of a movement the ledger holds: the first answer's figures, or a refusal where
    this request is not that one."""
    now = counter.read(namespace, sku)
    same = (entry.kind, entry.qty, entry.buyer) == (kind, qty, buyer)
    return Outcome(OK if same else "idempotency_key_reused", Figures(
        entry.total_after, entry.total_after - entry.available_after - entry.held_after,
        entry.held_after, now.limit if now else None, entry.seq), replayed=True)


def _move(services: Services, namespace: str, sku: str, kind: Kind, qty: int,
          key: str | None, buyer: str | None = None, sale: str = "") -> Outcome:
    counter: MovingStock = services.counter
    durability = services.durability
    # The ledger's mark before the movement: a seq it held then is no new movement's.
    before = durability.progress.known(namespace, sku) if durability.mode == "sync" else None
    outcome = counter.apply(namespace, sku, kind, qty, key, record=True, buyer=buyer, sale=sale)
    if outcome.status == NOT_FOUND:
        # Redis lost it (or never had it): rebuild it from the database, under its lock.
        rebuild.rebuild_item(services, namespace, sku)
        since = datetime.now(UTC) - timedelta(seconds=counter.idempotency_ttl)
        if key is not None and (
                entry := _written(services.uow_factory(), namespace, sku, key, since)):
            # Redis forgot this key with the rest of its data, but the ledger has it.
            return _answered(counter, namespace, sku, kind, qty, buyer, entry)
        outcome = counter.apply(namespace, sku, kind, qty, key, record=True, buyer=buyer,
                                sale=sale)
    if outcome.status in (FENCED, NOT_FOUND):
        raise errors.Unavailable(f"{namespace}/{sku} is being rebuilt; retry", retry_after=1)
    try:
        after = outcome.figures
        if (before is not None and outcome.ok and not outcome.replayed
                and before[0] == after.gen and before[1] >= after.seq):
            # Redis gave out a seq the ledger already held: it lost history while keeping the
            # item (a failover to a lagging replica). The ledger's history stands.
            rebuild.replace_history(services, namespace, sku, after.gen,
                                    [key] if key else [])
            raise Replaced(namespace, sku)
        if outcome.ok and durability.mode == "sync":  # async: the ledger is written behind
            durability.settle(namespace, sku, after, lambda: key is not None and getattr(
                _written(services.uow_factory(), namespace, sku, key), "seq", None) == after.seq)
    except Replaced:
        if key is None:
            raise
        # Rebuilt from the ledger (the counter's history was not the ledger's): the ledger
        # answers by the key; a movement it lacks is applied once more, on the rebuilt counter.
        since = datetime.now(UTC) - timedelta(seconds=counter.idempotency_ttl)
        if entry := _written(services.uow_factory(), namespace, sku, key, since):
            return _answered(counter, namespace, sku, kind, qty, buyer, entry)
        outcome = counter.apply(namespace, sku, kind, qty, key, record=True, buyer=buyer,
                                sale=sale)
        if outcome.status in (FENCED, NOT_FOUND):
            raise errors.Unavailable(f"{namespace}/{sku} is being rebuilt; retry",
                                     retry_after=1) from None
        if outcome.ok:
            durability.settle(namespace, sku, outcome.figures, lambda: False)
    if outcome.ok and not outcome.replayed and services.movement_events is not None:
        services.movement_events.moved(kind, namespace, sku, qty, key, outcome, buyer)
    return outcome
