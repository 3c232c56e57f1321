"""``CheckDrift``: the service layer finds where Redis disagrees with the record, keeps the count
where ``/metrics`` reads it and, asked to, rebuilds what differs; the CLI only prints."""

from __future__ import annotations

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands, events
from allocation.domain.outcome import Figures
from tests.helpers.counter_contract import set_clock
from tests.helpers.embedded import embedded_counter
from tests.helpers.fakes import FakeStore, FakeUnitOfWork
from tests.helpers.ledger import drain


def drifted() -> Application:
    """Items a, b and c of 10, written to the record; then Redis loses a and says 7 of b sold."""
    store, published = FakeStore(), list[events.Event]()
    app = bootstrap(Config(), uow_factory=lambda: FakeUnitOfWork(store),
                    counter=embedded_counter(), publish=published.append)
    for sku in ("a", "b", "c"):
        app.bus.handle(commands.InitInventory("ns", sku, 10))
    drain(app)
    app.counter.forget("ns", "a")
    app.counter.load("ns", "b", Figures(10, 7, seq=1))
    return app


def test_a_check_reports_and_records_the_count_and_changes_no_figures() -> None:
    app = drifted()
    report = app.bus.handle(commands.CheckDrift("ns"))
    assert [(d.sku, d.expected, d.redis) for d in report.found] == [
        ("a", Figures(10, 0), None), ("b", Figures(10, 0), Figures(10, 7))]
    assert report.repaired == 0 and app.health.drift() == {"ns": 2}
    b = app.counter.read("ns", "b")
    assert app.counter.read("ns", "a") is None and b is not None and b.consumed == 7


def test_a_repair_rebuilds_what_differs_or_is_missing_from_the_record() -> None:
    app = drifted()
    report = app.bus.handle(commands.CheckDrift("ns", repair=True))
    assert [d.sku for d in report.found] == ["a", "b"] and report.repaired == 2
    assert app.health.drift() == {"ns": 0}  # repaired: the drift alert clears with it
    assert app.bus.handle(commands.CheckDrift("ns")).found == ()
    assert app.health.drift() == {"ns": 0}
    for sku in ("a", "b"):
        live = app.counter.read("ns", sku)
        assert live is not None and (live.total, live.consumed) == (10, 0)


def test_a_hold_due_but_not_yet_ended_is_not_drift() -> None:
    """No sweeper ran: the check's own read ends the due hold (as every step touching an item
    does), after the check read the outbox. That end is not drift, on the first check or any."""
    store = FakeStore()
    app = bootstrap(Config(), uow_factory=lambda: FakeUnitOfWork(store),
                    counter=embedded_counter(), publish=lambda event: None)
    set_clock(app.counter, 1_000_000)
    app.bus.handle(commands.InitInventory("ns", "a", 10))
    app.bus.handle(commands.InitInventory("ns", "b", 10))
    drain(app)
    app.bus.handle(commands.Reserve("ns", (("a", 2),), "r", 60, None))  # in the outbox yet
    set_clock(app.counter, 1_000_000 + 61_000)  # due, and nothing has ended it
    report = app.bus.handle(commands.CheckDrift("ns"))
    assert report.found == () and app.health.drift() == {"ns": 0}
    a = app.counter.read("ns", "a")
    assert a is not None and (a.total, a.consumed, a.held) == (10, 0, 0)  # ended by the read
    assert app.bus.handle(commands.CheckDrift("ns")).found == ()
    drain(app)
    assert app.bus.handle(commands.CheckDrift("ns")).found == ()
    app.counter.load("ns", "b", Figures(10, 7, seq=1))  # and real drift is still found
    assert [d.sku for d in app.bus.handle(commands.CheckDrift("ns")).found] == ["b"]
