"""Handlers are given one typed ``Services``: a unit of work is made only where a handler uses
one, and how a movement's events go out is decided once, in bootstrap."""

from __future__ import annotations

import inspect
import pathlib
import typing

import pytest

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands, events
from allocation.service_layer import handlers
from allocation.service_layer.services import Services
from allocation.service_layer.unit_of_work import AbstractUnitOfWork
from tests.helpers.embedded import embedded_counter
from tests.helpers.fakes import FakeStore, FakeUnitOfWork


class Units:
    """A unit-of-work factory over the fake store that counts the units it made."""

    def __init__(self) -> None:
        self.store = FakeStore()
        self.made = 0

    def __call__(self) -> AbstractUnitOfWork:
        self.made += 1
        return FakeUnitOfWork(self.store)


def build(units: Units, published: list[events.Event], *, counter_publishes: bool = False,
          durability: typing.Literal["async", "sync"] = "async") -> Application:
    counter = embedded_counter()
    counter.publishes_events = counter_publishes
    return bootstrap(Config(durability=durability), uow_factory=units, counter=counter,
                     publish=published.append)


def test_every_handler_takes_its_command_and_the_services() -> None:
    for kind, handler in handlers.COMMAND_HANDLERS.items():
        hints = typing.get_type_hints(handler)
        assert list(inspect.signature(handler).parameters) == ["cmd", "services"], handler
        assert (hints["cmd"], hints["services"]) == (kind, Services), handler


class TestUnitsOfWork:
    def test_an_async_movement_or_step_of_a_reservation_makes_none(self) -> None:
        units = Units()
        app = build(units, [])
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        made = units.made
        app.bus.handle(commands.Decrement("ns", "sku", 1, "k1"))
        app.bus.handle(commands.Refund("ns", "sku", 1, "k2"))
        app.bus.handle(commands.AdjustTotal("ns", "sku", 1, "k3"))
        held = app.bus.handle(commands.Reserve("ns", (("sku", 2),), "r1"))
        app.bus.handle(commands.ExtendReservation("ns", held.id, 60))
        app.bus.handle(commands.ConfirmReservation("ns", held.id))
        assert units.made == made

    def test_a_movement_on_an_item_the_counter_lost_reads_the_record(self) -> None:
        units = Units()
        app = build(units, [])
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.counter.forget("ns", "sku")
        made = units.made
        outcome = app.bus.handle(commands.Decrement("ns", "sku", 3, "k1"))
        assert (outcome.ok, outcome.figures.available) == (True, 7)
        assert units.made > made


class TestEvents:
    @pytest.mark.parametrize("counter_publishes", [False, True])
    def test_an_initialised_item_is_announced_either_way(self, counter_publishes: bool) -> None:
        published: list[events.Event] = []
        app = build(Units(), published, counter_publishes=counter_publishes)
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        assert published == [events.InventoryInitialized("ns", "sku", 10, 0)]

    def test_movements_and_holds_are_published_for_a_counter_that_does_not(self) -> None:
        published: list[events.Event] = []
        app = build(Units(), published)
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.bus.handle(commands.Decrement("ns", "sku", 1, "k1"))
        made = app.bus.handle(commands.Reserve("ns", (("sku", 2),), "r1"))
        assert published[1:] == [
            events.Decremented("ns", "sku", 10, 1, 1, "k1"),
            events.Reserved("ns", "sku", 10, 1, made.id, 2, held=2, idempotency_key="r1")]

    def test_nothing_is_published_twice_for_a_counter_that_publishes_them(self) -> None:
        published: list[events.Event] = []
        app = build(Units(), published, counter_publishes=True)
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.bus.handle(commands.Decrement("ns", "sku", 1, "k1"))
        made = app.bus.handle(commands.Reserve("ns", (("sku", 2),), "r1"))
        app.bus.handle(commands.ConfirmReservation("ns", made.id))
        assert published == [events.InventoryInitialized("ns", "sku", 10, 0)]

    def test_the_service_layer_asks_no_adapter_whether_it_publishes(self) -> None:
        """Bootstrap decides; a handler only publishes through what it is given."""
        layer = pathlib.Path(handlers.__file__).parent
        readers = [path.name for path in sorted(layer.glob("*.py"))
                   if "publishes_events" in path.read_text()]
        assert readers == []
