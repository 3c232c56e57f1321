from __future__ import annotations

import signal

import pytest

from allocation.adapters.memory_counter import InProcessCounter
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from allocation.entrypoints import ledger_worker
from allocation.service_layer.unit_of_work import AbstractUnitOfWork
from tests.fakes import FakeStore, FakeUnitOfWork


def test_the_threads_of_one_worker_share_out_the_partitions() -> None:
    bus = bootstrap(Config(), uow_factory=lambda: FakeUnitOfWork(FakeStore()),
                    counter=InProcessCounter())
    bus.dependencies["outbox"].partitions = 5
    workers = ledger_worker.split(bus, 2)
    assert [w.partitions for w in workers] == [[0, 2, 4], [1, 3]]
    assert len({w.name for w in workers}) == 2
    assert [w.partitions for w in ledger_worker.split(bus, 8)] == [[0], [1], [2], [3], [4]]


def test_a_worker_that_fails_stops_the_process_instead_of_leaving_its_share() -> None:
    store = FakeStore()
    broken = False

    def uow() -> AbstractUnitOfWork:
        if broken:
            raise RuntimeError("the database driver broke")
        return FakeUnitOfWork(store)

    bus = bootstrap(Config(), uow_factory=uow, counter=InProcessCounter())
    bus.handle(commands.InitInventory("ns", "sku", 10))
    bus.handle(commands.Decrement("ns", "sku", 1, "k1"))
    broken = True
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(RuntimeError, match="driver broke"):
            ledger_worker.run(bus, threads=2)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert store.items[("ns", "sku")].consumed == 0
