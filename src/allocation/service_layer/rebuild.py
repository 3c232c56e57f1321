"""Rebuilding counters from the database while movements go on (asynchronous durability).

Under the item's lock (two rebuilds serialise): fence the item so movements answer "retry" rather
than act on a half-built counter, wait until the ledger worker has written everything Redis
recorded for it (the database's seq reaches Redis's), load the database's figures, unfence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from allocation.adapters.counter import Counter
from allocation.adapters.locks import ItemLocks
from allocation.adapters.outbox import Outbox
from allocation.domain import commands, errors
from allocation.domain.model import Stock
from allocation.domain.outcome import OK, Outcome
from allocation.service_layer.results import RefreshProgress
from allocation.service_layer.unit_of_work import AbstractUnitOfWork


def refresh(cmd: commands.Refresh, uow: AbstractUnitOfWork, counter: Counter, outbox: Outbox,
            item_locks: ItemLocks, ledger_wait_seconds: float) -> Outcome:
    found = _rebuild(uow, counter, outbox, item_locks, ledger_wait_seconds, cmd.namespace,
                     [cmd.sku])
    item = found.get(cmd.sku)
    if item is None:
        raise errors.NotFound(f"no item {cmd.namespace}/{cmd.sku}")
    return Outcome(OK, item.total, item.consumed, seq=item.last_seq)


def refresh_all(cmd: commands.RefreshAll, uow: AbstractUnitOfWork, counter: Counter,
                outbox: Outbox, item_locks: ItemLocks,
                ledger_wait_seconds: float) -> RefreshProgress:
    done, after, batches = 0, cmd.after, 0
    while cmd.batches is None or batches < cmd.batches:
        with uow:
            skus = [s.sku for s in uow.items.stock_page(cmd.namespace, after, cmd.batch_size)]
        if not skus:
            return RefreshProgress(done, None)
        _rebuild(uow, counter, outbox, item_locks, ledger_wait_seconds, cmd.namespace, skus)
        done, after, batches = done + len(skus), skus[-1], batches + 1
    return RefreshProgress(done, after)


def _rebuild(uow: AbstractUnitOfWork, counter: Counter, outbox: Outbox, item_locks: ItemLocks,
             wait_seconds: float, namespace: str, skus: Sequence[str]
             ) -> dict[str, Stock]:
    with item_locks.hold(namespace, skus):
        fenced = dict(zip(skus, counter.fence_many(namespace, skus), strict=True))
        if len(skus) == 1 and fenced[skus[0]] is None:
            # Redis lost the item; movements it recorded may still wait in the outbox, and
            # then the latest of them is newer than the database.
            unwritten = outbox.latest(namespace, skus[0])
            if unwritten is not None:
                counter.load(namespace, unwritten.sku, unwritten.total, unwritten.consumed,
                             unwritten.seq)
                return {unwritten.sku: Stock(unwritten.sku, unwritten.total,
                                             unwritten.consumed, unwritten.seq)}
        try:
            found = _written_up_to(uow, namespace, fenced, wait_seconds)
        except BaseException:
            for sku, seq in fenced.items():
                if seq is not None:
                    counter.unfence(namespace, sku)
            raise
        for sku, seq in fenced.items():
            if sku not in found and seq is not None:
                counter.forget(namespace, sku)  # Redis holds an item the record does not
        counter.load_many((namespace, sku, i.total, i.consumed, i.last_seq)
                          for sku, i in found.items())
        return found


def _written_up_to(uow: AbstractUnitOfWork, namespace: str, seqs: dict[str, int | None],
                   wait_seconds: float) -> dict[str, Stock]:
    """The items once the database holds every movement Redis recorded for them."""
    deadline = time.monotonic() + wait_seconds
    while True:
        with uow:
            found = uow.items.stock(namespace, list(seqs))
        behind = [sku for sku, seq in seqs.items()
                  if seq is not None and sku in found and found[sku].last_seq < seq]
        if not behind:
            return found
        if time.monotonic() > deadline:
            raise errors.Unavailable(
                f"the ledger is behind on {len(behind)} items (e.g. {behind[0]}); is a ledger "
                "worker running? Retry the refresh later", retry_after=5)
        time.sleep(0.01)  # the worker writes in batches; poll until it has caught up
