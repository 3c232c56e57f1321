"""The handler of each command, by durability mode, and the handlers of events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from allocation.domain import commands, events
from allocation.service_layer import initialise, rebuild, recorded_movements, sync_movements

Durability = Literal["async", "sync"]


def command_handlers(durability: Durability) -> dict[type[commands.Command], Callable[..., Any]]:
    """``async``: acknowledge after the Redis step, the ledger is written behind.
    ``sync``: acknowledge after the ledger row is committed."""
    shared: dict[type[commands.Command], Callable[..., Any]] = {
        commands.InitInventory: initialise.init_inventory,
        commands.InitMany: initialise.init_many,
    }
    if durability == "sync":
        return {**shared,
                commands.AdjustTotal: sync_movements.adjust_total,
                commands.Decrement: sync_movements.decrement,
                commands.Refund: sync_movements.refund,
                commands.Refresh: sync_movements.refresh,
                commands.RefreshAll: sync_movements.refresh_all}
    return {**shared,
            commands.AdjustTotal: recorded_movements.adjust_total,
            commands.Decrement: recorded_movements.decrement,
            commands.Refund: recorded_movements.refund,
            commands.Refresh: rebuild.refresh,
            commands.RefreshAll: rebuild.refresh_all}


def publish_event(event: events.Event, publish: Callable[[events.Event], None]) -> None:
    publish(event)


EVENT_HANDLERS: dict[type[events.Event], list[Callable[..., None]]] = {
    event_type: [publish_event]
    for event_type in (events.InventoryInitialized, events.TotalAdjusted, events.Decremented,
                       events.Refunded, events.SoldOut)
}
