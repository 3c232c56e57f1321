from __future__ import annotations

from collections.abc import Iterator

import pytest

from allocation import views
from allocation.adapters.redis_counter import RedisCounter
from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands, errors, events
from allocation.domain.outcome import Figures
from allocation.entrypoints import ledger_worker
from allocation.entrypoints.ledger_worker import LedgerWorker
from allocation.service_layer.messagebus import MessageBus
from tests.helpers.embedded import embedded_counter
from tests.helpers.fakes import FakeStore, FakeUnitOfWork
from tests.helpers.ledger import drain
from tests.helpers.processes import wait_until


class App:
    """The application over fakes. In sync mode a ledger worker thread runs (a sync movement
    answers once it is written); in async mode none does, and ``drain`` writes the outbox."""

    def __init__(self, durability: str = "async", *, worker: bool = True,
                 **settings: float) -> None:
        self.store = FakeStore()
        self.counter = embedded_counter()
        self.published: list[events.Event] = []
        self.durability = durability
        self.settings = settings
        self.worker: LedgerWorker | None = None
        self.app = self.build(self.counter, worker=worker)

    def build(self, counter: RedisCounter, *, worker: bool = True) -> Application:
        """(Re)build the application over ``counter`` (a restarted Redis: a fresh one)."""
        self.stop()
        self.counter = counter
        self.app = bootstrap(
            Config(durability=self.durability, **self.settings),  # type: ignore[arg-type]
            uow_factory=lambda: FakeUnitOfWork(self.store), counter=counter,
            publish=self.published.append)
        if self.durability == "sync" and worker:
            self.worker = ledger_worker.for_app(self.app)
            self.worker.start_thread()
        return self.app

    @property
    def bus(self) -> MessageBus:
        return self.app.bus

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def drain(self) -> None:
        """Let the ledger catch up: the worker thread (sync), or a pass in this thread."""
        if self.worker is None:
            drain(self.app)
        else:
            wait_until(lambda: self.app.outbox.backlog()[0] == 0, 10, "the ledger worker")

    def figures(self, sku: str = "sku") -> tuple[int, int]:
        self.drain()
        stored = self.store.items[("ns", sku)]
        return stored.total, stored.consumed

    def live(self, sku: str = "sku", namespace: str = "ns") -> Figures:
        figures = self.app.counter.read(namespace, sku)
        assert figures is not None, f"the counter does not hold {namespace}/{sku}"
        return figures

    def kinds(self, sku: str = "sku") -> list[tuple[int, str, int]]:
        self.drain()
        return [(e.seq, e.kind, e.qty) for e in self.store.ledger if e.sku == sku]


@pytest.fixture(params=["sync", "async"])
def app(request: pytest.FixtureRequest) -> Iterator[App]:
    app = App(request.param)
    yield app
    app.stop()


sync_only = pytest.mark.parametrize("app", ["sync"], indirect=True)
async_only = pytest.mark.parametrize("app", ["async"], indirect=True)


class TestInitInventory:
    def test_creates_the_item_its_counter_and_an_init_entry(self, app: App) -> None:
        outcome = app.bus.handle(commands.InitInventory("ns", "sku", 10))
        assert (outcome.created, outcome.figures.total, outcome.figures.available) == (True, 10, 10)
        assert app.figures() == (10, 0)
        assert app.kinds() == [(1, "init", 10)]
        assert app.live() is not None
        assert app.published == [events.InventoryInitialized("ns", "sku", 10, 0)]

    def test_again_with_the_same_total_changes_nothing(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        again = app.bus.handle(commands.InitInventory("ns", "sku", 10))
        assert not again.created
        assert app.kinds() == [(1, "init", 10)]

    def test_again_answers_the_figures_as_they_are(self, app: App) -> None:
        """Not the row's: the ledger is written behind, and a hold is not a sale."""
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        app.bus.handle(commands.Reserve("ns", (("sku", 2),), "r1"))
        app.bus.handle(commands.AdjustTotal("ns", "sku", 2, "a1"))
        with pytest.raises(errors.AlreadyExists):  # the total is 12 now, written or not
            app.bus.handle(commands.InitInventory("ns", "sku", 10))
        again = app.bus.handle(commands.InitInventory("ns", "sku", 12))
        assert again.figures == Figures(12, 4, 2) and again.figures.available == 6

    def test_again_with_another_total_is_refused(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        with pytest.raises(errors.AlreadyExists):
            app.bus.handle(commands.InitInventory("ns", "sku", 11))
        assert app.figures() == (10, 0)


class TestDecrement:
    def test_records_the_sale_everywhere(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        outcome = app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        assert (outcome.ok, outcome.figures.available, outcome.replayed) == (True, 6, False)
        assert app.figures() == (10, 4)
        assert app.kinds() == [(1, "init", 10), (2, "decrement", 4)]
        assert app.live().consumed == 4

    def test_a_retry_replays_the_first_outcome_and_changes_nothing(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        first = app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        again = app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        assert again.replayed and (again.figures.total, again.figures.consumed) == (
            first.figures.total, first.figures.consumed)
        assert app.figures() == (10, 4) and len(app.kinds()) == 2

    def test_a_key_reused_for_another_request_is_refused(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        outcome = app.bus.handle(commands.Decrement("ns", "sku", 5, "k1"))
        assert outcome.status == "idempotency_key_reused"
        assert app.figures() == (10, 4)

    def test_insufficient_stock_is_refused_without_a_database_commit(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 2))
        commits = app.store.commits
        outcome = app.bus.handle(commands.Decrement("ns", "sku", 3, "k1"))
        assert (outcome.status, outcome.figures.available) == ("insufficient_stock", 2)
        assert app.store.commits == commits and app.figures() == (2, 0)
        with pytest.raises(errors.InsufficientStock):
            outcome.raise_for_status()

    def test_selling_the_last_unit_announces_sold_out(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 1))
        app.bus.handle(commands.Decrement("ns", "sku", 1, "k1"))
        assert app.published[-1] == events.SoldOut("ns", "sku", 1, 1)

    def test_unknown_item_is_not_found(self, app: App) -> None:
        with pytest.raises(errors.NotFound):
            app.bus.handle(commands.Decrement("ns", "nope", 1, "k1"))

    @sync_only
    def test_a_sync_movement_is_in_the_ledger_when_it_answers(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        outcome = app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        # Read straight from the store, without draining: the worker had committed it.
        assert [(e.seq, e.kind, e.idempotency_key) for e in app.store.ledger] == [
            (1, "init", None), (2, "decrement", "k1")]
        assert outcome.figures.seq == 2 and app.store.items[("ns", "sku")].consumed == 4

    def test_a_sync_movement_the_ledger_does_not_take_in_time_is_unavailable(self) -> None:
        app = App("sync", worker=False, sync_wait_seconds=0.05)  # no ledger worker runs
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        with pytest.raises(errors.Unavailable, match="not in the ledger yet"):
            app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        # Applied and recorded: its outcome is unknown to the client, not undone.
        assert app.live().consumed == 4 and app.store.items[("ns", "sku")].consumed == 0
        drain(app.app)  # the worker comes back
        retried = app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        assert retried.ok and retried.replayed and retried.figures.seq == 2
        assert app.figures() == (10, 4) and app.kinds() == [(1, "init", 10), (2, "decrement", 4)]

    def test_a_counter_that_lost_the_item_is_rebuilt_from_the_record(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        app.counter.forget("ns", "sku")
        outcome = app.bus.handle(commands.Decrement("ns", "sku", 1, "k2"))
        assert (outcome.ok, outcome.figures.consumed) == (True, 5)
        assert app.live().consumed == 5

    def test_a_retry_after_the_counter_lost_its_keys_is_answered_from_the_ledger(
            self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        app.drain()
        app.build(embedded_counter())  # Redis restarted without persistence
        again = app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        assert again.replayed and again.figures.consumed == 4
        assert app.figures() == (10, 4) and len(app.kinds()) == 2

    def test_the_ledger_answers_a_retry_as_the_counter_did(self, app: App) -> None:
        """Its figures with the units held apart, and a different request refused."""
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.bus.handle(commands.Reserve("ns", (("sku", 2),), "r1"))
        first = app.bus.handle(commands.Decrement("ns", "sku", 3, "k1"))
        app.drain()
        app.build(embedded_counter())  # Redis restarted without persistence
        again = app.bus.handle(commands.Decrement("ns", "sku", 3, "k1"))
        assert again.replayed and (again.figures.consumed, again.figures.held) == (
            first.figures.consumed, first.figures.held) == (3, 2)
        assert again.figures.available == first.figures.available == 5
        other = app.bus.handle(commands.Decrement("ns", "sku", 1, "k1"))
        assert (other.ok, other.status) == (False, "idempotency_key_reused")
        assert app.figures() == (10, 3)

    def test_a_movement_redis_applied_but_whose_reply_was_lost_is_recorded_on_retry(
            self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        # The first attempt reached Redis; its reply did not.
        app.counter.apply("ns", "sku", "decrement", 3, "k1", record=True)
        retry = app.bus.handle(commands.Decrement("ns", "sku", 3, "k1"))
        assert retry.ok and retry.replayed
        assert (retry.figures.consumed, retry.figures.seq) == (3, 2)
        assert app.figures() == (10, 3)  # the acknowledged sale is in the record, once
        assert [k for k in app.kinds() if k[1] == "decrement"] == [(2, "decrement", 3)]
        assert app.live().consumed == 3


class TestRefundAndAdjust:
    def test_refund_returns_stock(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        outcome = app.bus.handle(commands.Refund("ns", "sku", 3, "r1"))
        assert (outcome.ok, outcome.figures.available) == (True, 9)
        assert app.kinds()[-1] == (3, "refund", 3)

    def test_refund_beyond_consumed_is_refused(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        outcome = app.bus.handle(commands.Refund("ns", "sku", 1, "r1"))
        assert outcome.status == "refund_exceeds_consumed"
        assert app.figures() == (10, 0)

    def test_adjust_moves_the_total(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        outcome = app.bus.handle(commands.AdjustTotal("ns", "sku", 5))
        assert (outcome.figures.total, app.figures()) == (15, (15, 0))

    def test_adjust_below_consumed_is_refused(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.bus.handle(commands.Decrement("ns", "sku", 6, "k"))
        outcome = app.bus.handle(commands.AdjustTotal("ns", "sku", -5, "a1"))
        assert outcome.status == "below_consumed" and app.figures() == (10, 6)


class TestRefresh:
    def test_rebuilds_a_drifted_counter(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        app.drain()
        app.counter.load("ns", "sku", Figures(999, 0, seq=2))
        outcome = app.bus.handle(commands.Refresh("ns", "sku"))
        assert (outcome.total, outcome.consumed) == (10, 4)
        assert app.live().total == 10

    def test_refresh_all_walks_the_namespace_in_batches(self, app: App) -> None:
        for n in range(7):
            app.bus.handle(commands.InitInventory("ns", f"s{n}", n))
        app.bus.handle(commands.InitInventory("other", "s0", 5))
        app.counter.forget("ns", "s3")
        progress = app.bus.handle(commands.RefreshAll("ns", batch_size=3, batches=1))
        assert (progress.refreshed, progress.after) == (3, "s2")
        rest = app.bus.handle(commands.RefreshAll("ns", after=progress.after, batch_size=3))
        assert (rest.refreshed, rest.after) == (4, None)
        assert app.live("s3").total == 3

    def test_get_rebuilds_an_item_the_counter_lost(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.counter.forget("ns", "sku")
        assert views.item(app.app, "ns", "sku").total == 10
        with pytest.raises(errors.NotFound):
            views.item(app.app, "ns", "missing")


def test_namespaces_are_kept_apart(app: App) -> None:
    app.bus.handle(commands.InitInventory("a", "sku", 1))
    app.bus.handle(commands.InitInventory("b", "sku", 1))
    app.bus.handle(commands.Decrement("a", "sku", 1, "k"))
    assert app.bus.handle(commands.Decrement("b", "sku", 1, "k")).ok
    page, after = views.items(app.app, "a", None, 10)
    assert [(sku, o.available) for sku, o in page] == [("sku", 0)] and after is None


@async_only
class TestWriteBehind:
    def test_a_sale_is_acknowledged_before_the_ledger_has_it(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        outcome = app.bus.handle(commands.Decrement("ns", "sku", 4, "k1"))
        assert outcome.ok and outcome.figures.seq == 2
        assert app.store.items[("ns", "sku")].consumed == 0  # not written yet
        assert app.published[-1] == events.Decremented("ns", "sku", 10, 4, 4, "k1")
        assert app.figures() == (10, 4) and app.kinds()[-1] == (2, "decrement", 4)

    def test_the_worker_writes_each_entry_once(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.bus.handle(commands.Decrement("ns", "sku", 1, "k1"))
        entries = app.app.outbox.read(app.counter.keys.partition("ns", "sku"), "w", 100)
        from allocation.service_layer.ledger_writer import write_batch
        assert write_batch(entries, app.app.uow_factory()).written == 1
        again = write_batch(entries, app.app.uow_factory())  # a crash before the ack
        assert (again.written, len(again.done)) == (0, 1)
        assert app.kinds() == [(1, "init", 10), (2, "decrement", 1)]

    def test_an_entry_waits_for_the_ones_before_it(self, app: App) -> None:
        from allocation.service_layer.ledger_writer import write_batch
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.bus.handle(commands.Decrement("ns", "sku", 1, "k1"))
        app.bus.handle(commands.Decrement("ns", "sku", 1, "k2"))
        first, second = app.app.outbox.read(app.counter.keys.partition("ns", "sku"), "w", 100)
        early = write_batch([second], app.app.uow_factory())
        assert (early.written, early.waiting, early.done) == (0, 1, [])
        assert write_batch([first, second], app.app.uow_factory()).written == 2

    def test_a_fenced_item_is_unavailable(self, app: App) -> None:
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.counter.fence_many("ns", ["sku"])
        with pytest.raises(errors.Unavailable):
            app.bus.handle(commands.Decrement("ns", "sku", 1, "k1"))
        app.bus.handle(commands.Refresh("ns", "sku"))
        assert app.bus.handle(commands.Decrement("ns", "sku", 1, "k1")).ok

    def test_refresh_gives_up_when_the_ledger_does_not_catch_up(self, app: App) -> None:
        app.settings = {"ledger_wait_seconds": 0.05}
        app.build(app.counter)
        app.bus.handle(commands.InitInventory("ns", "sku", 10))
        app.bus.handle(commands.Decrement("ns", "sku", 1, "k1"))  # nobody drains it
        with pytest.raises(errors.Unavailable, match="ledger is behind"):
            app.bus.handle(commands.Refresh("ns", "sku"))
        assert app.bus.handle(commands.Decrement("ns", "sku", 1, "k2")).ok  # unfenced
