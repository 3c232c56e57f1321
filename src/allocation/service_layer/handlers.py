"""One handler per command. Movements run on the counter (the fast path) and the database (the
record) in one order per item: the item's row lock is held across both.

Replays and refusals are answered by the counter alone, without touching the database: a sold-out
item turns buyers away at Redis speed. Only a movement the counter finds allowed takes the row lock,
is applied on the counter, checked by the aggregate and committed with its ledger row; if that
commit fails the counter change is reverted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from allocation.adapters.counter import Counter
from allocation.domain import commands, errors, events
from allocation.domain.model import InventoryItem
from allocation.domain.outcome import NOT_FOUND, OK, PENDING, Outcome
from allocation.domain.rules import Kind
from allocation.service_layer.unit_of_work import AbstractUnitOfWork, Conflict

logger = logging.getLogger(__name__)


def init_inventory(cmd: commands.InitInventory, uow: AbstractUnitOfWork,
                   counter: Counter) -> Outcome:
    try:
        return _init(cmd, uow, counter)
    except Conflict:
        return _init(cmd, uow, counter)  # a concurrent init won; now it is an existing item


def _init(cmd: commands.InitInventory, uow: AbstractUnitOfWork, counter: Counter) -> Outcome:
    with uow:
        item = uow.items.get(cmd.namespace, cmd.sku, lock=True)
        if item is not None:
            if item.total != cmd.total:
                raise errors.AlreadyExists(
                    f"{cmd.namespace}/{cmd.sku} exists with total {item.total}")
            if counter.read(cmd.namespace, cmd.sku) is None:
                counter.load(cmd.namespace, cmd.sku, item.total, item.consumed)
            return Outcome(OK, item.total, item.consumed)
        item = InventoryItem.initialise(cmd.namespace, cmd.sku, cmd.total)
        uow.items.add(item)
        # The insert waits here for any concurrent one; once it succeeds the row is ours and
        # invisible to others until the commit, so loading the counter now cannot overwrite
        # figures that sales have moved.
        uow.flush()
        counter.load(cmd.namespace, cmd.sku, item.total, item.consumed)
        try:
            uow.commit()
        except Exception:
            counter.forget(cmd.namespace, cmd.sku)
            raise
        return Outcome(OK, item.total, item.consumed, created=True)


def init_many(cmd: commands.InitMany, uow: AbstractUnitOfWork, counter: Counter) -> int:
    """Initialise every item in one transaction; any clash refuses the whole batch.
    Returns how many items were created (the rest already existed with the same total)."""
    with uow:
        fresh: list[InventoryItem] = []
        clashes: list[str] = []
        for sku, total in cmd.items:
            item = uow.items.get(cmd.namespace, sku, lock=True)
            if item is None:
                fresh.append(InventoryItem.initialise(cmd.namespace, sku, total))
                uow.items.add(fresh[-1])
            elif item.total != total:
                clashes.append(f"{sku} (exists with total {item.total})")
        if clashes:
            raise errors.AlreadyExists("refused, nothing imported: " + ", ".join(clashes[:20]))
        uow.flush()
        counter.load_many((i.namespace, i.sku, i.total, i.consumed) for i in fresh)
        try:
            uow.commit()
        except Exception:
            for i in fresh:
                counter.forget(i.namespace, i.sku)
            raise
        return len(fresh)


def adjust_total(cmd: commands.AdjustTotal, uow: AbstractUnitOfWork, counter: Counter) -> Outcome:
    return _move(uow, counter, cmd.namespace, cmd.sku, "adjust", cmd.delta, cmd.idempotency_key)


def decrement(cmd: commands.Decrement, uow: AbstractUnitOfWork, counter: Counter) -> Outcome:
    return _move(uow, counter, cmd.namespace, cmd.sku, "decrement", cmd.qty, cmd.idempotency_key)


def refund(cmd: commands.Refund, uow: AbstractUnitOfWork, counter: Counter) -> Outcome:
    return _move(uow, counter, cmd.namespace, cmd.sku, "refund", cmd.qty, cmd.idempotency_key)


def _move(uow: AbstractUnitOfWork, counter: Counter, namespace: str, sku: str, kind: Kind,
          qty: int, key: str | None) -> Outcome:
    probe = counter.apply(namespace, sku, kind, qty, key, probe=True)
    if probe.status not in (PENDING, NOT_FOUND):
        return probe  # a replay or a refusal: final, nothing to record
    with uow:
        item = uow.items.get(namespace, sku, lock=True)
        if item is None:
            raise errors.NotFound(f"no item {namespace}/{sku}")
        if key is not None and (entry := uow.items.entry_for_key(namespace, sku, key)):
            # The counter forgot this key (it lost its data) but the ledger has it.
            return Outcome(OK, entry.total_after, entry.total_after - entry.available_after,
                           replayed=True)
        outcome = counter.apply(namespace, sku, kind, qty, key)
        if outcome.status == NOT_FOUND:
            counter.load(namespace, sku, item.total, item.consumed)
            outcome = counter.apply(namespace, sku, kind, qty, key)
        if not outcome.ok or outcome.replayed:
            return outcome
        try:
            _apply(item, kind, qty, key)
        except errors.DomainError:
            # The counter drifted from the record; the record wins.
            logger.warning("counter drifted on %s/%s; rebuilding it", namespace, sku)
            counter.revert(namespace, sku, kind, qty, key)
            counter.load(namespace, sku, item.total, item.consumed)
            raise
        if (item.total, item.consumed) != (outcome.total, outcome.consumed):
            logger.warning("counter drifted on %s/%s; rebuilding it", namespace, sku)
            counter.load(namespace, sku, item.total, item.consumed)
        try:
            uow.commit()
        except BaseException:
            counter.revert(namespace, sku, kind, qty, key)  # the client hears an error
            raise
        return Outcome(OK, item.total, item.consumed)


def _apply(item: InventoryItem, kind: Kind, qty: int, key: str | None) -> None:
    if kind == "adjust":
        item.adjust(qty, key)
    elif kind == "decrement" and key is not None:
        item.decrement(qty, key)
    elif kind == "refund" and key is not None:
        item.refund(qty, key)
    else:
        raise ValueError(f"cannot apply {kind} without an idempotency key")


def refresh(cmd: commands.Refresh, uow: AbstractUnitOfWork, counter: Counter) -> Outcome:
    """Rebuild one item's counter from the database. The row lock keeps movements out meanwhile."""
    with uow:
        item = uow.items.get(cmd.namespace, cmd.sku, lock=True)
        if item is None:
            raise errors.NotFound(f"no item {cmd.namespace}/{cmd.sku}")
        counter.load(cmd.namespace, cmd.sku, item.total, item.consumed)
        uow.commit()
        return Outcome(OK, item.total, item.consumed)


def refresh_all(cmd: commands.RefreshAll, uow: AbstractUnitOfWork,
                counter: Counter) -> RefreshProgress:
    """Rebuild the counters of a namespace in SKU order, a locked batch at a time, pipelined.
    ``cmd.batches`` bounds the work so callers can show progress and resume from ``after``."""
    done, after, batches = 0, cmd.after, 0
    while cmd.batches is None or batches < cmd.batches:
        with uow:
            batch = uow.items.list(cmd.namespace, after, cmd.batch_size, lock=True)
            if not batch:
                return RefreshProgress(done, None)
            counter.load_many((i.namespace, i.sku, i.total, i.consumed) for i in batch)
            uow.commit()
            done, after, batches = done + len(batch), batch[-1].sku, batches + 1
    return RefreshProgress(done, after)


@dataclass(frozen=True)
class RefreshProgress:
    refreshed: int
    after: str | None  # resume here; None when the namespace is done


def publish_event(event: events.Event, publish: Callable[[events.Event], None]) -> None:
    publish(event)


COMMAND_HANDLERS: dict[type[commands.Command], Callable[..., Any]] = {
    commands.InitInventory: init_inventory,
    commands.InitMany: init_many,
    commands.AdjustTotal: adjust_total,
    commands.Decrement: decrement,
    commands.Refund: refund,
    commands.Refresh: refresh,
    commands.RefreshAll: refresh_all,
}

EVENT_HANDLERS: dict[type[events.Event], list[Callable[..., None]]] = {
    event_type: [publish_event]
    for event_type in (events.InventoryInitialized, events.TotalAdjusted, events.Decremented,
                       events.Refunded, events.SoldOut)
}
