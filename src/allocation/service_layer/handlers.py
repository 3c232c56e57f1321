"""The handler of each command: ``handler(command, services)``."""

from __future__ import annotations

from allocation.domain import commands
from allocation.service_layer import drift, initialise, movements, rebuild, reservations, sales
from allocation.service_layer.messagebus import CommandHandler

COMMAND_HANDLERS: dict[type[commands.Command], CommandHandler] = {
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
    commands.CheckDrift: drift.check,
    commands.PutSale: sales.put_sale,
    commands.CloseSale: sales.close_sale,
    commands.JoinQueue: sales.join_queue,
}
