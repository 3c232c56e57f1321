"""Movements with synchronous durability: acknowledged once the ledger row is committed.

The counter and the database see every item's movements in one order: the item's row lock is held
across both. Replays and refusals are answered by the counter alone, without touching the
database, so a sold-out item turns buyers away at Redis speed. Only a movement the counter finds
allowed takes the row lock, is applied on the counter, checked by the aggregate and committed with
its ledger row; if that commit fails the counter change is reverted.
"""

from __future__ import annotations

import logging

from allocation.adapters.counter import Counter
from allocation.domain import commands, errors
from allocation.domain.model import InventoryItem, LedgerEntry
from allocation.domain.outcome import NOT_FOUND, OK, PENDING, Outcome
from allocation.domain.rules import Kind
from allocation.service_layer.results import RefreshProgress
from allocation.service_layer.unit_of_work import AbstractUnitOfWork, Conflict

logger = logging.getLogger(__name__)


def adjust_total(cmd: commands.AdjustTotal, uow: AbstractUnitOfWork, counter: Counter) -> Outcome:
    return _move(uow, counter, cmd.namespace, cmd.sku, "adjust", cmd.delta, cmd.idempotency_key)


def decrement(cmd: commands.Decrement, uow: AbstractUnitOfWork, counter: Counter) -> Outcome:
    return _move(uow, counter, cmd.namespace, cmd.sku, "decrement", cmd.qty, cmd.idempotency_key)


def refund(cmd: commands.Refund, uow: AbstractUnitOfWork, counter: Counter) -> Outcome:
    return _move(uow, counter, cmd.namespace, cmd.sku, "refund", cmd.qty, cmd.idempotency_key)


def _move(uow: AbstractUnitOfWork, counter: Counter, namespace: str, sku: str, kind: Kind,
          qty: int, key: str | None) -> Outcome:
    try:
        return _move_locked(uow, counter, namespace, sku, kind, qty, key)
    except Conflict:
        # The ledger's unique key has this one: Redis forgot it (it lost its data) and the
        # request is a retry. Answer it as the replay it is.
        if key is None:
            raise
        with uow:
            entry = uow.items.entry_for_key(namespace, sku, key)
        if entry is None:
            raise
        return _replay(entry)


def _replay(entry: LedgerEntry) -> Outcome:
    return Outcome(OK, entry.total_after, entry.total_after - entry.available_after,
                   replayed=True)


def _move_locked(uow: AbstractUnitOfWork, counter: Counter, namespace: str, sku: str,
                 kind: Kind, qty: int, key: str | None) -> Outcome:
    probe = counter.apply(namespace, sku, kind, qty, key, probe=True)
    unconfirmed = probe.ok and probe.replayed
    if unconfirmed and key is not None:
        # Redis remembers this success; make sure the ledger does too. (Redis can apply a
        # movement whose reply never arrived, and the commit after it never happened.)
        with uow:
            if uow.items.entry_for_key(namespace, sku, key) is not None:
                return probe
    elif probe.status not in (PENDING, NOT_FOUND):
        return probe  # a replay or a refusal: final, nothing to record
    with uow:
        item = uow.items.get(namespace, sku, lock=True)
        if item is None:
            raise errors.NotFound(f"no item {namespace}/{sku}")
        if unconfirmed and key is not None:
            if (entry := uow.items.entry_for_key(namespace, sku, key)) is not None:
                return _replay(entry)  # committed meanwhile by the first attempt
            logger.warning("%s/%s: Redis had applied %s %r without its ledger row; "
                           "rebuilding it from the record", namespace, sku, kind, key)
            counter.revert(namespace, sku, kind, qty, key)
            counter.load(namespace, sku, item.total, item.consumed, item.last_seq)
        outcome = counter.apply(namespace, sku, kind, qty, key)
        if outcome.status == NOT_FOUND:
            counter.load(namespace, sku, item.total, item.consumed, item.last_seq)
            outcome = counter.apply(namespace, sku, kind, qty, key)
        if not outcome.ok or outcome.replayed:
            return outcome
        try:
            _apply(item, kind, qty, key)
        except errors.DomainError:
            # The counter drifted from the record; the record wins.
            logger.warning("counter drifted on %s/%s; rebuilding it", namespace, sku)
            counter.revert(namespace, sku, kind, qty, key)
            counter.load(namespace, sku, item.total, item.consumed, item.last_seq)
            raise
        if (item.total, item.consumed) != (outcome.total, outcome.consumed):
            logger.warning("counter drifted on %s/%s; rebuilding it", namespace, sku)
            counter.load(namespace, sku, item.total, item.consumed, item.last_seq)
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
        counter.load(cmd.namespace, cmd.sku, item.total, item.consumed, item.last_seq)
        uow.commit()
        return Outcome(OK, item.total, item.consumed)


def refresh_all(cmd: commands.RefreshAll, uow: AbstractUnitOfWork,
                counter: Counter) -> RefreshProgress:
    """Rebuild the counters of a namespace in SKU order, a locked batch at a time, pipelined."""
    done, after, batches = 0, cmd.after, 0
    while cmd.batches is None or batches < cmd.batches:
        with uow:
            batch = uow.items.list(cmd.namespace, after, cmd.batch_size, lock=True)
            if not batch:
                return RefreshProgress(done, None)
            counter.load_many((i.namespace, i.sku, i.total, i.consumed, i.last_seq)
                              for i in batch)
            uow.commit()
            done, after, batches = done + len(batch), batch[-1].sku, batches + 1
    return RefreshProgress(done, after)
