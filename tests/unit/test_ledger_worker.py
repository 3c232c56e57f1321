from __future__ import annotations

import os
import signal
from collections.abc import Sequence

import pytest
from click.testing import CliRunner

from allocation.adapters.ledger_progress import InProcessLedgerProgress
from allocation.adapters.outbox import OutboxEntry
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_outbox import RedisOutbox
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from allocation.entrypoints import cli, ledger_worker
from allocation.entrypoints.ledger_worker import LedgerWorker
from allocation.service_layer.unit_of_work import AbstractUnitOfWork
from tests.helpers.embedded import embedded_counter
from tests.helpers.fakes import FakeStore, FakeUnitOfWork


def test_the_threads_of_one_worker_share_out_the_partitions() -> None:
    app = bootstrap(Config(), uow_factory=lambda: FakeUnitOfWork(FakeStore()),
                    counter=embedded_counter())
    app.outbox.partitions = 5
    workers = ledger_worker.split(app, 2)
    assert [w.partitions for w in workers] == [[0, 2, 4], [1, 3]]
    assert len({w.name for w in workers}) == 2
    assert all(w.progress is app.ledger_progress for w in workers)
    assert [w.partitions for w in ledger_worker.split(app, 8)] == [[0], [1], [2], [3], [4]]


def test_a_worker_that_fails_stops_the_process_instead_of_leaving_its_share() -> None:
    store = FakeStore()
    broken = False

    def uow() -> AbstractUnitOfWork:
        if broken:
            raise RuntimeError("the database driver broke")
        return FakeUnitOfWork(store)

    app = bootstrap(Config(), uow_factory=uow, counter=embedded_counter())
    app.bus.handle(commands.InitInventory("ns", "sku", 10))
    app.bus.handle(commands.Decrement("ns", "sku", 1, "k1"))
    broken = True
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(RuntimeError, match="driver broke"):
            ledger_worker.run(app, threads=2)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert store.items[("ns", "sku")].consumed == 0


class CountingOutbox(RedisOutbox):
    def __init__(self, counter: RedisCounter) -> None:
        super().__init__(counter.client, counter.keys)
        self.calls: list[str] = []

    def read_new(self, partitions: Sequence[int], consumer: str, count: int,
                 block_ms: int = 0) -> list[list[OutboxEntry]]:
        self.calls.append("read_new")  # one round trip, whatever it does underneath
        return super().read_new(partitions, consumer, count, block_ms)

    def read(self, partition: int, consumer: str, count: int) -> list[OutboxEntry]:
        self.calls.append("read")
        return super().read(partition, consumer, count)

    def claim_stale(self, partition: int, consumer: str, min_idle_ms: int,
                    count: int) -> list[OutboxEntry]:
        self.calls.append("claim_stale")
        return super().claim_stale(partition, consumer, min_idle_ms, count)


def test_an_idle_pass_costs_one_read_and_claims_wait_their_interval() -> None:
    store = FakeStore()
    counter = embedded_counter()
    app = bootstrap(Config(), uow_factory=lambda: FakeUnitOfWork(store), counter=counter)
    app.bus.handle(commands.InitInventory("ns", "sku", 10))
    app.bus.handle(commands.Decrement("ns", "sku", 1, "k1"))
    outbox = CountingOutbox(counter)
    progress = InProcessLedgerProgress()
    worker = LedgerWorker(outbox, app.uow_factory, progress, claim_idle_ms=60_000)
    assert worker.run_once() == 1  # the first pass also looks for its own and for stale ones
    gen = counter.read("ns", "sku").gen  # type: ignore[union-attr]
    assert gen and progress.marks.holds(("ns", "sku"), gen, 2)  # committed up to seq 2
    assert not progress.marks.holds(("ns", "sku"), gen, 3)
    assert set(outbox.calls) == {"read_new", "read", "claim_stale"}
    outbox.calls.clear()
    for _ in range(3):
        assert worker.run_once() == 0
    assert outbox.calls == ["read_new"] * 3
    app.bus.handle(commands.Decrement("ns", "sku", 1, "k2"))
    assert worker.run_once() == 1 and store.items[("ns", "sku")].consumed == 2


def test_idle_priority_is_refused_where_the_platform_lacks_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Refused before the worker touches any service.
    monkeypatch.delattr(os, "SCHED_IDLE")
    result = CliRunner().invoke(cli.main, ["ledger-worker", "--idle-priority"])
    assert result.exit_code == 2
    assert "--idle-priority: idle priority needs Linux" in result.output
