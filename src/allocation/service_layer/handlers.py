"""The handler of each command, and the handlers of events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from allocation.domain import commands, events
from allocation.service_layer import initialise, movements, rebuild, reservations

COMMAND_HANDLERS: dict[type[commands.Command], Callable[..., Any]] = {
    commands.InitInventory: initialise.init_inventory,
    commands.InitMany: initialise.init_many,
    commands.SetLimit: initialise.set_limit,
    commands.AdjustTotal: movements.adjust_total,
    commands.Decrement: movements.decrement,
    commands.Refund: movements.refund,
    commands.Reserve: reservations.reserve,
    commands.ConfirmReservation: reservations.confirm,
    commands.ReleaseReservation: reservations.release,
    commands.ExtendReservation: reservations.extend,
    commands.Refresh: rebuild.refresh,
    commands.RefreshAll: rebuild.refresh_all,
}


def publish_event(event: events.Event, publish: Callable[[events.Event], None]) -> None:
    publish(event)


EVENT_HANDLERS: dict[type[events.Event], list[Callable[..., None]]] = {
    event_type: [publish_event]
    for event_type in (events.InventoryInitialized, events.TotalAdjusted, events.Decremented,
                       events.Refunded, events.SoldOut, events.Reserved,
                       events.ReservationConfirmed, events.ReservationReleased,
                       events.ReservationExpired)
}
