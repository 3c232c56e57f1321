"""Rebuilding counters from the database while movements go on.

First, unfenced, wait until the ledger holds what the counter had applied when the refresh came
(the writers' progress marks say so; nothing polls the database). Then, under the item's lock
(two rebuilds serialise), fence the item so movements answer "retry" rather than act on a
half-built counter, wait a moment at most for the few movements applied meanwhile, load the
database's figures and unfence. The fence is so held for about one ledger write, never for the
ledger's lag: where the ledger is further behind, the refresh answers "unavailable" instead.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from allocation.adapters.counter import Rebuilding, Restored, new_generation
from allocation.adapters.ledger_progress import WRITTEN, LedgerProgress
from allocation.adapters.outbox import OutboxEntry
from allocation.domain import commands, errors
from allocation.domain.outcome import Figures
from allocation.service_layer.results import RefreshProgress
from allocation.service_layer.services import Services
from allocation.service_layer.unit_of_work import AbstractUnitOfWork


def refresh(cmd: commands.Refresh, services: Services) -> Figures:
    """Rebuild one item, on request. Where Redis holds it, a rebuild of it that is running or
    has just finished stands for this one; where Redis lost it, it is always rebuilt."""
    counter = services.counter
    if counter.read(cmd.namespace, cmd.sku) is None:
        return rebuild_item(services, cmd.namespace, cmd.sku)
    figures = services.rebuilds.run(
        (cmd.namespace, cmd.sku), lambda: rebuild_item(services, cmd.namespace, cmd.sku),
        services.ledger_wait_seconds)
    if figures is None:
        figures = counter.read(cmd.namespace, cmd.sku)
        if figures is None:  # lost since: rebuild after all
            return rebuild_item(services, cmd.namespace, cmd.sku)
    return figures


def rebuild_item(services: Services, namespace: str, sku: str) -> Figures:
    """Rebuild one item now (``NotFound`` where the database has no such item)."""
    found = _rebuild(services, services.uow_factory(), namespace, [sku])
    figures = found.get(sku)
    if figures is None:
        raise errors.NotFound(f"no item {namespace}/{sku}")
    return figures


def replace_history(services: Services, namespace: str, sku: str, gen: str,
                    keys: Sequence[str] = ()) -> Figures:
    """The item's counter parted from the ledger's history (Redis lost some while keeping the
    item, and sold again from an older state; the ledger writer found out): the ledger's
    stands. Under the item's lock, drop the counter's item and the records of ``keys`` (the
    movements set aside), then load it from the ledger under a new generation, its keys, limit,
    buyers and holds with it. What the dropped history still has in the outbox is then stale;
    sync requests waiting on it hear that their generation was replaced. Where the counter no
    longer holds the item under ``gen`` (the generation that parted), another rebuild came
    first and stands."""
    figures = _rebuild(services, services.uow_factory(), namespace, [sku],
                       drop=(gen, keys)).get(sku)
    if figures is None:
        raise errors.NotFound(f"no item {namespace}/{sku}")
    return figures


# Batches of a namespace refresh in flight at once: one's database reads and writes overlap
# another's Redis round trips (a namespace Redis lost is down until every item is back).
REFRESH_WORKERS = 4
# Items one batch locks at once. Each is a PostgreSQL advisory lock, and a default server's
# shared lock table holds about 6,400 for all its sessions (64 per connection): a page of 20,000
# SKUs failed with "out of shared memory". A page is split into batches of this many; the
# locks' slots (postgres_locks.BATCH_SLOTS) bound how many hold them at once, in all (ADR 0045).
LOCKED_AT_ONCE = 1000


def refresh_all(cmd: commands.RefreshAll, services: Services) -> RefreshProgress:
    """Rebuild a namespace's items, page by page in SKU order, each page in batches of at most
    LOCKED_AT_ONCE (each under its items' locks, with a unit of work of its own), several
    batches at a time."""
    done, after, pages, finished = 0, cmd.after, 0, False
    in_flight: collections.deque[tuple[Future[dict[str, Figures]], int]] = collections.deque()
    with _heap_frozen(), ThreadPoolExecutor(REFRESH_WORKERS,
                                            thread_name_prefix="refresh") as pool:
        try:
            while cmd.batches is None or pages < cmd.batches:
                with services.uow_factory() as uow:
                    skus = uow.items.sku_page(cmd.namespace, after, cmd.batch_size)
                if not skus:
                    finished = True
                    break
                for start in range(0, len(skus), LOCKED_AT_ONCE):
                    for pending, _ in in_flight:  # one failed: begin no more (each fences)
                        if pending.done() and pending.exception() is not None:
                            pending.result()
                    locked = skus[start:start + LOCKED_AT_ONCE]
                    in_flight.append((pool.submit(
                        _rebuild, services, services.uow_factory(), cmd.namespace, locked),
                        len(locked)))
                    if len(in_flight) >= REFRESH_WORKERS:
                        done += _finished(in_flight.popleft())
                after, pages = skus[-1], pages + 1
            while in_flight:
                done += _finished(in_flight.popleft())
        finally:
            for pending, _ in in_flight:  # a batch failed: let those begun end, then raise
                pending.cancel()
    return RefreshProgress(done, None if finished else after)


def _finished(batch: tuple[Future[dict[str, Figures]], int]) -> int:
    batch[0].result()
    return batch[1]


@contextlib.contextmanager
def _heap_frozen() -> Iterator[None]:
    """The objects the process had before a namespace refresh, kept out of its garbage
    collections while it runs: its batches allocate hundreds of thousands of objects, and each
    full collection they set off scanned the whole heap besides (a third of the refresh's
    CPU, ADR 0037). Garbage the process makes meanwhile is collected as ever; cycles among the
    older objects wait for the end."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


FENCED_WAIT_SECONDS = 0.05
Seqs = dict[str, tuple[str, int] | None]  # sku -> (generation, seq) Redis holds, or None


def _rebuild(services: Services, uow: AbstractUnitOfWork, namespace: str, skus: Sequence[str],
             *, drop: tuple[str, Sequence[str]] | None = None) -> dict[str, Figures]:
    """Rebuild the items. ``drop`` (generation, keys): where the (one) item's counter holds it
    under that generation, forget it and those keys' records first, under its lock, and load
    it from the ledger alone (its counter's history is not the ledger's)."""
    counter: Rebuilding = services.counter
    progress = services.durability.progress
    deadline = time.monotonic() + services.ledger_wait_seconds
    live: Seqs = dict.fromkeys(skus) if drop is not None else dict(
        zip(skus, counter.seqs_many(namespace, skus), strict=True))
    if any(held is not None for held in live.values()):  # else nothing to wait for
        with contextlib.suppress(errors.Unavailable):  # the fenced wait below decides
            _wait_written(uow, progress, namespace, live, deadline)
    with services.item_locks.hold(namespace, skus):
        present = list(skus)
        if drop is not None or all(held is None for held in live.values()):
            # Redis lacked them all; if another rebuild loaded them while this one waited for
            # the lock, that one stands (a second would fence them again, for nothing).
            again = counter.seqs_many(namespace, skus)
            if drop is not None and again[0] is not None and again[0][0] == drop[0]:
                counter.forget(namespace, skus[0], drop[1])
                again = [None]
            if all(held is not None for held in again):
                now = counter.read_many(namespace, skus)
                return {sku: o for sku, o in zip(skus, now, strict=True) if o is not None}
            # Under the items' lock a lost item stays lost: only those back are fenced.
            present = [sku for sku, held in zip(skus, again, strict=True) if held is not None]
        fenced: Seqs = dict.fromkeys(skus)
        for sku, seq in zip(present, counter.fence_many(namespace, present) if present else [],
                            strict=True):
            if seq is not None:
                fenced[sku] = ((live.get(sku) or ("", 0))[0], seq)
        if len(skus) == 1 and fenced[skus[0]] is None and drop is None:
            # Redis lost the item; movements it recorded may still wait in the outbox, and
            # then the latest of them is newer than the database: that history goes on.
            unwritten = services.outbox.latest(namespace, skus[0])
            with uow:
                if unwritten is not None and _in_ledger(uow, unwritten):
                    # Written, not yet acknowledged (a writer descheduled between the two):
                    # the ledger has it all. Waiting for its mark here would wait in vain in a
                    # process that was not listening when it came (issue 25, item 11).
                    unwritten = None
                holds = uow.items.open_holds(namespace, skus) if unwritten else {}
            if unwritten is not None and (unwritten.held or holds.get(skus[0])):
                # Holds: the outbox's figures and the ledger's open holds are of different
                # moments, and together they would end a hold twice or never. Let the writer
                # catch up, then rebuild from the ledger alone.
                if progress.wait(namespace, skus[0], unwritten.gen or "", unwritten.seq,
                                 max(0.0, deadline - time.monotonic())) != WRITTEN:
                    raise errors.Unavailable(
                        f"{namespace}/{skus[0]}: the ledger is behind on an item Redis lost; "
                        "retry", retry_after=1)
                unwritten = None
            if unwritten is not None:
                # The limit, and buyers' units as far as the ledger has them (async mode's
                # lag may miss some: see the README on what Redis must keep), and its gate,
                # loaded with the outbox's figures (no holds: those waited above).
                with uow:
                    limit, buyers = uow.items.allowances(namespace, skus).get(
                        skus[0], (None, {}))
                    gate = uow.sales.gating(namespace, skus).get(skus[0], "")
                counter.restore_many(namespace, Restored(
                    [unwritten.sku], [unwritten.total], [unwritten.consumed], [unwritten.held],
                    [unwritten.seq], unwritten.gen or "", [limit], [gate],
                    units=([unwritten.sku] * len(buyers), list(buyers), list(buyers.values()))))
                _gates_again(services, uow, namespace, {skus[0]: gate} if gate else {})
                return {unwritten.sku: Figures(unwritten.total, unwritten.consumed,
                                               unwritten.held, limit, unwritten.seq)}
        gen = new_generation()
        try:
            # Fenced, sales are refused: wait only a moment for the movements applied since the
            # unfenced wait. A ledger further behind than that (a worker at idle priority under
            # full load, say) fails the refresh, not the sale.
            if any(held is not None for held in fenced.values()):
                _wait_written(uow, progress, namespace, fenced,
                              min(deadline, time.monotonic() + FENCED_WAIT_SECONDS))
            found, gens, lost = _rebase(uow, namespace, fenced, gen, counter.idempotency_ttl)
        except BaseException:
            for sku, held in fenced.items():
                if held is not None:
                    counter.unfence(namespace, sku)
            raise
        held_by_redis = [sku for sku, held in fenced.items() if held is not None]
        for sku in held_by_redis:
            if sku not in found:
                counter.forget(namespace, sku)  # Redis holds an item the record does not
        # Those Redis lost come back whole: limits, buyers' units and open holds with the
        # figures, and the keys it had seen (given back before any can be used again). Where
        # Redis holds the item (fenced, caught up), its own are the truth.
        if lost is not None:
            counter.restore_many(namespace, lost)
            _gates_again(services, uow, namespace,
                         {sku: gate for sku, gate in zip(lost.skus, lost.gates, strict=True)
                          if gate})
        if held_by_redis:
            counter.load_many(namespace, (
                (sku, i._replace(gen=gens[sku]))
                for sku in held_by_redis if (i := found.get(sku)) is not None))
        return found


def _gates_again(services: Services, uow: AbstractUnitOfWork, namespace: str,
                 loaded: dict[str, str]) -> None:
    """The gates a rebuild loaded (sku -> sale), read from the record again: a sale that closed
    (or gave its sku to another) after the rebuild read it dropped its gate before the load
    set it back. Gate steps after their commit, so what the record says now stands."""
    if not loaded:
        return
    with uow:
        now = uow.sales.gating(namespace, list(loaded))
        moved = {sale for sku, sale in loaded.items() if now.get(sku) != sale}
        sales = [uow.sales.get(namespace, name) for name in sorted(
            moved | {now[sku] for sku in loaded if sku in now and now[sku] != loaded[sku]})]
    for sale in sorted((s for s in sales if s is not None), key=lambda s: not s.closed):
        services.sale_queue.gate(sale, not sale.closed)  # the closed ones' first


def _in_ledger(uow: AbstractUnitOfWork, entry: OutboxEntry) -> bool:
    """Whether the ledger holds the outbox entry: its seq, in the generation it follows."""
    stock = uow.items.stock(entry.namespace, [entry.sku]).get(entry.sku)
    followed = uow.items.generations(entry.namespace, [entry.sku]).get(entry.sku)
    return (stock is not None and stock.seq >= entry.seq
            and (followed or "") == (entry.gen or ""))


def _wait_written(uow: AbstractUnitOfWork, progress: LedgerProgress, namespace: str,
                  seqs: Seqs, deadline: float) -> None:
    """Wait (until ``deadline``) for the writers' marks on the items the database is behind
    on: one read of the database, then no polling of it."""
    with uow:
        found = uow.items.stock(namespace, list(seqs))
    for sku in _behind(found, seqs):
        held = seqs[sku]
        left = deadline - time.monotonic()
        if held is None or left <= 0 or (
                progress.wait(namespace, sku, *held, left) != WRITTEN):
            return


class Rebased(NamedTuple):
    found: dict[str, Figures]
    gens: dict[str, str]
    lost: Restored | None  # the items Redis lost, all a load needs of them (None: none)


def _rebase(uow: AbstractUnitOfWork, namespace: str, seqs: Seqs, gen: str,
            idempotency_ttl: float) -> Rebased:
    """The items' figures, once the database holds every movement Redis recorded for them, and
    the generation to load each under. An item Redis holds, whose history the ledger follows,
    keeps its generation: nothing of it is unwritten (it is fenced and caught up). One Redis
    lost (or whose generation the ledger no longer follows) takes the new ``gen``, committed
    first: from then on the writers refuse anything recorded under the old one. With those
    Redis lost, each one's buyers' units, open holds and the movements whose keys are still
    remembered, and the open sale that gates it. Raises ``Unavailable`` if the ledger is
    behind."""
    held_by_redis = [sku for sku, held in seqs.items() if held is not None]
    with uow:
        found = uow.items.stock(namespace, held_by_redis) if held_by_redis else {}
        if behind := _behind(found, seqs):
            raise errors.Unavailable(
                f"the ledger is behind on {len(behind)} items (e.g. {behind[0]}); is a ledger "
                "worker running? Retry the refresh later", retry_after=5)
        followed = uow.items.generations(namespace, list(found)) if found else {}
        gens = {sku: held[0] for sku, held in seqs.items() if held is not None}
        renew = [sku for sku in found if gens[sku] and followed.get(sku)
                 and followed[sku] != gens[sku]]
        if renew:
            found.update(uow.items.rebase(namespace, renew, gen))
        lost = [sku for sku, held in seqs.items() if held is None]
        restored = None
        if lost:
            # Those Redis lost come from here, with what Redis lost with them: the statement
            # that gives them the new generation returns it all, a column at a time.
            since = datetime.now(UTC) - timedelta(seconds=idempotency_ttl)
            gates = uow.sales.gating(namespace, lost)
            restored = uow.items.rebase_lost(namespace, lost, gen, since)
            if gates:
                restored = restored._replace(gates=[gates.get(sku, "") for sku in restored.skus])
            found.update(zip(restored.skus, map(
                Figures, restored.totals, restored.consumed, restored.held, restored.limits,
                restored.seqs), strict=True))
        if renew or lost:
            uow.commit()
        renewed = set(renew).union(restored.skus if restored else ())
        return Rebased(found, {sku: gen if sku in renewed else gens[sku] for sku in found},
                       restored)


def _behind(found: dict[str, Figures], seqs: Seqs) -> list[str]:
    return [sku for sku, held in seqs.items()
            if held is not None and sku in found and found[sku].seq < held[1]]
