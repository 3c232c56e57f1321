"""Counter generations: when the counter is rebuilt from the database (Redis lost its data), the
seqs the lost history handed out are handed out again, to other movements. The ledger then
never writes a movement of the lost history, and a sync request of it is never told "written"
on the strength of another movement's seq."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from allocation.adapters.counter import Restored
from allocation.adapters.ledger_progress import (
    REPLACED,
    TIMEOUT,
    WRITTEN,
    InProcessLedgerProgress,
    Marks,
    Waited,
)
from allocation.adapters.outbox import OutboxEntry
from allocation.domain import errors
from allocation.domain.model import InventoryItem
from allocation.domain.outcome import Figures
from allocation.service_layer.durability import Durability
from allocation.service_layer.ledger_writer import write_batch
from tests.helpers.embedded import embedded_counter
from tests.helpers.fakes import FakeStore, FakeUnitOfWork


def entry(seq: int, gen: str | None, key: str) -> OutboxEntry:
    return OutboxEntry(f"id-{key}", 0, "ns", "s", seq, "decrement", 1, key, 10, seq - 1, gen)


@pytest.fixture
def store() -> FakeStore:
    store = FakeStore()
    item = InventoryItem("ns", "s", 10, 0, 1)
    item.counter_gen = "new"
    store.items[("ns", "s")] = item
    return store


def test_the_writer_sets_aside_what_a_replaced_generation_recorded(store: FakeStore) -> None:
    result = write_batch([entry(2, "old", "lost-1"), entry(3, "old", "lost-2"),
                          entry(2, "new", "kept")], FakeUnitOfWork(store))
    assert [e.idempotency_key for e in result.stale] == ["lost-1", "lost-2"]
    assert result.written == 1 and result.done == ["id-kept"]
    assert [e.idempotency_key for e in store.ledger] == ["kept"]
    assert result.marks == {("ns", "s"): ("new", 2)}


def test_a_replay_of_a_written_seq_is_acknowledged_whatever_its_generation(
        store: FakeStore) -> None:
    first = write_batch([entry(2, "new", "a")], FakeUnitOfWork(store))
    assert first.written == 1
    again = write_batch([entry(2, "old", "a")], FakeUnitOfWork(store))
    assert again.done == ["id-a"] and not again.stale and again.written == 0


def test_entries_and_items_from_before_generations_are_written(store: FakeStore) -> None:
    store.items[("ns", "s")].counter_gen = None
    result = write_batch([entry(2, "any", "a"), entry(3, None, "b")], FakeUnitOfWork(store))
    assert result.written == 2 and not result.stale


def test_marks_of_another_generation_say_nothing_of_this_one() -> None:
    marks = Marks()
    marks.raise_to({("ns", "s"): ("old", 40)})
    assert marks.holds(("ns", "s"), "old", 40) and not marks.holds(("ns", "s"), "new", 3)
    marks.raise_to({("ns", "s"): ("new", 3)})  # a newer generation replaces the mark, lower
    assert marks.holds(("ns", "s"), "new", 3) and not marks.holds(("ns", "s"), "old", 40)
    marks.raise_to({("ns", "s"): ("new", 2)})  # within one, it never goes down
    assert marks.holds(("ns", "s"), "new", 3)


def test_a_waiter_hears_written_replaced_or_timeout() -> None:
    counter = embedded_counter()
    counter.load("ns", "s", Figures(10, 0, seq=1, gen="g1"))
    progress = InProcessLedgerProgress(
        lambda ns, sku: (o.gen if (o := counter.read(ns, sku)) else None))
    progress.RECHECK_SECONDS = 0.01
    threading.Timer(0.02, progress.mark, args=({("ns", "s"): ("g1", 2)},)).start()
    assert progress.wait("ns", "s", "g1", 2, 5) == WRITTEN
    assert progress.wait("ns", "s", "g1", 3, 0.03) == TIMEOUT
    counter.load("ns", "s", Figures(10, 0, seq=1, gen="g2"))  # rebuilt from the record meanwhile
    assert progress.wait("ns", "s", "g1", 3, 5) == REPLACED


class Progress(InProcessLedgerProgress):
    def __init__(self, answer: Waited) -> None:
        super().__init__()
        self.answer = answer

    def wait(self, namespace: str, sku: str, gen: str, seq: int, timeout: float) -> Waited:
        return self.answer


@pytest.mark.parametrize(("waited", "in_ledger", "acknowledged"), [
    (WRITTEN, False, True),
    (REPLACED, True, True),  # the ledger has it by its key: it was written before the reload
    (REPLACED, False, False),  # lost with Redis: outcome unknown, the same key again
    (TIMEOUT, True, False),
])
def test_sync_acknowledges_only_what_the_ledger_holds(waited: Waited, in_ledger: bool,
                                                       acknowledged: bool) -> None:
    sync = Durability("sync", Progress(waited), 1.0)
    outcome = Figures(10, 3, seq=4, gen="g")
    if acknowledged:
        sync.settle("ns", "s", outcome, lambda: in_ledger)
    else:
        with pytest.raises(errors.Unavailable):
            sync.settle("ns", "s", outcome, lambda: in_ledger)


def test_a_counter_told_the_ledger_s_keys_replays_them() -> None:
    counter = embedded_counter()
    now = int(datetime.now(UTC).timestamp() * 1_000_000)
    counter.restore_many("ns", Restored(  # the item and the ledger's keys of it
        ["s"], [10], [4], [0], [5], "g2", [None], [""],
        keyed=(["s"], ["sold-before"], ["decrement"], [2], [None], [10], [8], [0], [now])))
    replay = counter.apply("ns", "s", "decrement", 2, "sold-before", record=True)
    assert replay.replayed and replay.ok
    assert (replay.figures.total, replay.figures.consumed) == (10, 2)
    assert replay.figures.seq == 0  # in the ledger already: nothing to wait for
    assert counter.read("ns", "s") == Figures(10, 4, seq=5, gen="g2")  # nothing applied
    assert not any(counter.client.xlen(counter.keys.outbox(p))
                   for p in range(counter.keys.partitions))  # nothing recorded
    reused = counter.apply("ns", "s", "decrement", 3, "sold-before", record=True)
    assert reused.status == "idempotency_key_reused"
