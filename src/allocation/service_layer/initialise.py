"""Initialising items: the same in both durability modes. The row is inserted first and the
counter loaded once the row is ours, so concurrent inits can neither double the stock nor
overwrite figures that sales have moved. The events of items created are published once
they are committed."""

from __future__ import annotations

from allocation.adapters.counter import Rebuilding, new_generation
from allocation.domain import commands, errors
from allocation.domain.model import InventoryItem
from allocation.domain.outcome import OK, Figures, Outcome
from allocation.service_layer.services import Services, announce
from allocation.service_layer.unit_of_work import AbstractUnitOfWork, Conflict


def init_inventory(cmd: commands.InitInventory, services: Services) -> Outcome:
    try:
        return _init(cmd, services)
    except Conflict:
        return _init(cmd, services)  # a concurrent init won; now it is an existing item


def _init(cmd: commands.InitInventory, services: Services) -> Outcome:
    counter: Rebuilding = services.counter
    with services.uow_factory() as uow:
        item = uow.items.get(cmd.namespace, cmd.sku, lock=True)
        if item is not None:
            # The counter's figures where it holds the item: the row lags behind movements
            # acknowledged and not yet in the ledger, and holds are not sales. Where it lacks
            # the item, the row's (the next movement or read rebuilds it).
            now = counter.read(cmd.namespace, cmd.sku) or item.figures()
            if (now.total, item.limit_per_buyer) != (cmd.total, cmd.limit_per_buyer):
                limit = ("no limit per buyer" if item.limit_per_buyer is None
                         else f"limit per buyer {item.limit_per_buyer}")
                raise errors.AlreadyExists(
                    f"{cmd.namespace}/{cmd.sku} exists with total {now.total} and {limit}")
            return Outcome(OK, Figures(now.total, now.consumed, now.held, item.limit_per_buyer))
        item = InventoryItem.initialise(cmd.namespace, cmd.sku, cmd.total, cmd.limit_per_buyer)
        item.counter_gen = new_generation()
        uow.items.add(item)
        # The insert waits here for any concurrent one; once it succeeds the row is ours and
        # invisible to others until the commit, so loading the counter now cannot overwrite
        # figures that sales have moved.
        uow.flush()
        if cmd.limit_per_buyer is not None:  # before the figures: no sale without the limit
            counter.load_allowances(cmd.namespace, {cmd.sku: (cmd.limit_per_buyer, {})})
        counter.load(cmd.namespace, cmd.sku, Figures(
            item.total, item.consumed, seq=item.last_seq, gen=item.counter_gen))
        _commit(uow, counter, [item])
    announce(services.publish, uow.collect_new_events())
    return Outcome(OK, Figures(item.total, item.consumed, limit=item.limit_per_buyer),
                   created=True)


def init_many(cmd: commands.InitMany, services: Services) -> int:
    """Initialise every item in one transaction; any clash refuses the whole batch.
    Returns how many items were created (the rest already existed with the same total)."""
    counter: Rebuilding = services.counter
    with services.uow_factory() as uow:
        fresh: list[InventoryItem] = []
        clashes: list[str] = []
        gen = new_generation()
        for sku, total in cmd.items:
            item = uow.items.get(cmd.namespace, sku, lock=True)
            if item is None:
                fresh.append(InventoryItem.initialise(cmd.namespace, sku, total))
                fresh[-1].counter_gen = gen
                uow.items.add(fresh[-1])
            elif item.total != total:
                clashes.append(f"{sku} (exists with total {item.total})")
        if clashes:
            raise errors.AlreadyExists("refused, nothing imported: " + ", ".join(clashes[:20]))
        uow.flush()
        counter.load_many(cmd.namespace, (
            (i.sku, Figures(i.total, i.consumed, seq=i.last_seq, gen=gen)) for i in fresh))
        _commit(uow, counter, fresh)
    announce(services.publish, uow.collect_new_events())
    return len(fresh)


def _commit(uow: AbstractUnitOfWork, counter: Rebuilding, fresh: list[InventoryItem]) -> None:
    """Commit items the counter was loaded with, or drop them from the counter."""
    try:
        uow.commit()
    except Exception:
        for i in fresh:
            counter.forget(i.namespace, i.sku)
        raise


def set_limit(cmd: commands.SetLimit, services: Services) -> Figures:
    """The record first, under the row's lock, then the counter (where it holds the item; a
    rebuild loads the limit from the record): two changes of one item land in one order."""
    counter: Rebuilding = services.counter
    with services.uow_factory() as uow:
        item = uow.items.get(cmd.namespace, cmd.sku, lock=True)
        if item is None:
            raise errors.NotFound(f"no item {cmd.namespace}/{cmd.sku}")
        before, item.limit_per_buyer = item.limit_per_buyer, cmd.limit_per_buyer
        uow.flush()
        counter.set_limit(cmd.namespace, cmd.sku, cmd.limit_per_buyer)
        try:
            uow.commit()
        except Exception:
            counter.set_limit(cmd.namespace, cmd.sku, before)
            raise
    figures = counter.read(cmd.namespace, cmd.sku)
    if figures is None:  # Redis lost it meanwhile: the record's figures
        with services.uow_factory() as uow:
            return uow.items.stock(cmd.namespace, [cmd.sku])[cmd.sku]  # the limit committed
    return figures
