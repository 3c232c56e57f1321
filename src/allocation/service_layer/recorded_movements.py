"""Movements with asynchronous durability (write-behind): acknowledged after the Redis step.

One Lua script checks the rule, applies the movement, takes the item's next seq and appends the
movement to the partition's outbox, atomically. The ledger worker writes the outbox to
PostgreSQL in the order Redis applied it, so the two cannot disagree about an item's history.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from allocation.adapters.counter import Counter
from allocation.adapters.locks import ItemLocks
from allocation.adapters.outbox import Outbox
from allocation.domain import commands, errors, events
from allocation.domain.model import LedgerEntry
from allocation.domain.outcome import FENCED, NOT_FOUND, OK, Outcome
from allocation.domain.rules import Kind
from allocation.service_layer import rebuild
from allocation.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)
Publish = Callable[[events.Event], None]


class Deps:
    """What a recorded movement needs besides its command."""

    def __init__(self, uow: AbstractUnitOfWork, counter: Counter, outbox: Outbox,
                 publish: Publish, item_locks: ItemLocks, ledger_wait_seconds: float) -> None:
        self.uow, self.counter, self.outbox, self.publish = uow, counter, outbox, publish
        self.item_locks, self.ledger_wait_seconds = item_locks, ledger_wait_seconds


def adjust_total(cmd: commands.AdjustTotal, uow: AbstractUnitOfWork, counter: Counter,
                 outbox: Outbox, publish: Publish, item_locks: ItemLocks,
                 ledger_wait_seconds: float) -> Outcome:
    deps = Deps(uow, counter, outbox, publish, item_locks, ledger_wait_seconds)
    return _move(deps, cmd.namespace, cmd.sku, "adjust", cmd.delta, cmd.idempotency_key)


def decrement(cmd: commands.Decrement, uow: AbstractUnitOfWork, counter: Counter,
              outbox: Outbox, publish: Publish, item_locks: ItemLocks,
              ledger_wait_seconds: float) -> Outcome:
    deps = Deps(uow, counter, outbox, publish, item_locks, ledger_wait_seconds)
    return _move(deps, cmd.namespace, cmd.sku, "decrement", cmd.qty, cmd.idempotency_key)


def refund(cmd: commands.Refund, uow: AbstractUnitOfWork, counter: Counter,
           outbox: Outbox, publish: Publish, item_locks: ItemLocks,
           ledger_wait_seconds: float) -> Outcome:
    deps = Deps(uow, counter, outbox, publish, item_locks, ledger_wait_seconds)
    return _move(deps, cmd.namespace, cmd.sku, "refund", cmd.qty, cmd.idempotency_key)


def _written(uow: AbstractUnitOfWork, namespace: str, sku: str, key: str) -> LedgerEntry | None:
    with uow:
        entry = uow.items.entry_for_key(namespace, sku, key)
        return None if entry is None else dataclasses.replace(entry)


def _move(deps: Deps, namespace: str, sku: str, kind: Kind, qty: int,
          key: str | None) -> Outcome:
    counter, publish = deps.counter, deps.publish
    outcome = counter.apply(namespace, sku, kind, qty, key, record=True)
    if outcome.status == NOT_FOUND:
        # Redis lost it (or never had it): rebuild it from the database, under its lock.
        rebuild.refresh(commands.Refresh(namespace, sku), deps.uow, counter, deps.outbox,
                        deps.item_locks, deps.ledger_wait_seconds)
        if key is not None and (entry := _written(deps.uow, namespace, sku, key)):
            # Redis forgot this key with the rest of its data, but the ledger has it.
            return Outcome(OK, entry.total_after, entry.total_after - entry.available_after,
                           replayed=True, seq=entry.seq)
        outcome = counter.apply(namespace, sku, kind, qty, key, record=True)
    if outcome.status in (FENCED, NOT_FOUND):
        raise errors.Unavailable(f"{namespace}/{sku} is being rebuilt; retry", retry_after=1)
    if outcome.ok and not outcome.replayed and not counter.publishes_events:
        for event in events.of_movement(kind, namespace, sku, qty, key, outcome.total,
                                        outcome.consumed):
            try:
                publish(event)
            except Exception:
                logger.exception("could not publish %r", event)
    return outcome
