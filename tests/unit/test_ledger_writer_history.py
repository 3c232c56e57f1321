"""The ledger writer tells a replay from another history at a seq the ledger already holds."""

from __future__ import annotations

from allocation.adapters.outbox import OutboxEntry
from allocation.domain.model import InventoryItem, LedgerEntry
from allocation.service_layer.ledger_writer import write_batch
from tests.helpers.fakes import FakeStore, FakeUnitOfWork


def _store() -> FakeStore:
    """An item the ledger holds up to seq 3 (init 10, two keyed sales) under generation g."""
    store = FakeStore()
    item = InventoryItem("ns", "tee", 10, 3, 3)
    item.counter_gen = "g"
    store.items[("ns", "tee")] = item
    store.ledger = [LedgerEntry("ns", "tee", 1, "init", 10, 10, 10),
                    LedgerEntry("ns", "tee", 2, "decrement", 1, 10, 9, "a"),
                    LedgerEntry("ns", "tee", 3, "decrement", 2, 10, 7, "k")]
    return store


def _entry(seq: int, qty: int, key: str, consumed: int, gen: str = "g") -> OutboxEntry:
    return OutboxEntry(f"{seq}-0", 0, "ns", "tee", seq, "decrement", qty, key, 10, consumed,
                       gen)


def test_the_same_movement_at_a_written_seq_is_a_replay() -> None:
    store = _store()
    result = write_batch([_entry(3, 2, "k", 3), _entry(4, 1, "n", 4)], FakeUnitOfWork(store))
    assert (result.done, result.diverged, result.written) == (["3-0", "4-0"], {}, 1)
    assert [e.seq for e in store.ledger] == [1, 2, 3, 4]


def test_another_movement_at_a_written_seq_sets_the_items_entries_aside() -> None:
    store = _store()
    # Redis rolled back to seq 2 and sold j, then n, from there.
    result = write_batch([_entry(3, 3, "j", 4), _entry(4, 1, "n", 5)], FakeUnitOfWork(store))
    assert result.written == 0 and result.done == []
    assert [e.seq for e in result.diverged[("ns", "tee")]] == [3, 4]
    assert [e.seq for e in store.ledger] == [1, 2, 3]  # nothing written over the ledger's


def test_an_entry_of_a_replaced_generation_below_the_ledgers_seq_is_no_other_history() -> None:
    store = _store()
    result = write_batch([_entry(3, 3, "j", 4, gen="old")], FakeUnitOfWork(store))
    assert (result.diverged, [e.seq for e in result.stale]) == ({}, [])
    assert result.done == ["3-0"]  # below the ledger's seq, of another generation: a replay
