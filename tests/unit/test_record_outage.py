"""The record's outage (ADR 0025) in one process: readiness checks one at a time within a
deadline, a sync wait ends at once when the writers report the record away, and a deferred wait
(the RSGI bridge's, on its event loop) ends as the blocking one does."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2
import pytest

from allocation.adapters import health
from allocation.adapters.ledger_progress import InProcessLedgerProgress
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from allocation.domain.outcome import Figures
from allocation.entrypoints import ledger_worker
from allocation.entrypoints.ledger_worker import LedgerWorker
from allocation.service_layer.durability import Durability
from allocation.service_layer.unit_of_work import AbstractUnitOfWork
from tests.helpers.apps import FakeApp, body
from tests.helpers.embedded import embedded_counter
from tests.helpers.fakes import FakeStore, FakeUnitOfWork
from tests.helpers.processes import wait_until


@pytest.fixture
def hanging() -> Iterator[tuple[threading.Event, list[int]]]:
    """A check that hangs until released (a partition), and how many times it was started."""
    release, started = threading.Event(), [0]
    yield release, started
    release.set()


def hung(release: threading.Event, started: list[int]) -> Callable[[], None]:
    def check() -> None:
        started[0] += 1
        release.wait(30)
    return check


def test_concurrent_polls_share_one_check_and_answer_within_the_deadline(
        hanging: tuple[threading.Event, list[int]]) -> None:
    release, started = hanging
    probe = health.Probe("database", hung(release, started))
    began = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        states = list(pool.map(lambda _: probe.state(0.2), range(16)))
    assert states == [health.UNAVAILABLE] * 16
    assert time.monotonic() - began < 2
    assert started[0] == 1  # one check in flight, however many polls
    release.set()
    assert probe.future().result(timeout=5) == health.OK
    assert probe.state(1.0) == health.OK and started[0] == 2  # a new check once it ended


def test_a_poll_awaited_on_the_loop_answers_within_the_deadline(
        hanging: tuple[threading.Event, list[int]]) -> None:
    release, started = hanging
    probe = health.Probe("database", hung(release, started))

    async def polls() -> list[str]:
        return await asyncio.gather(*(probe.state_async(0.2) for _ in range(8)))

    began = time.monotonic()
    assert asyncio.run(polls()) == [health.UNAVAILABLE] * 8
    assert time.monotonic() - began < 2 and started[0] == 1


def test_readyz_answers_503_within_the_deadline_while_a_check_hangs(
        monkeypatch: pytest.MonkeyPatch, hanging: tuple[threading.Event, list[int]]) -> None:
    release, started = hanging
    app = FakeApp()
    monkeypatch.setattr(app.counter, "ping", hung(release, started))
    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: app.client.get("/readyz"), range(8)))
    assert time.monotonic() - began < 3
    assert {(r.status_code, body(r)["redis"], r.headers["Retry-After"]) for r in answers} == {
        (503, "unavailable", "1")}
    assert started[0] == 1


def sync(progress: InProcessLedgerProgress) -> Durability:
    return Durability("sync", progress, wait_seconds=5.0)


SOLD = Figures(10, 1, seq=1, gen="g")


def test_a_sync_wait_ends_at_once_when_the_writers_report_the_record_away() -> None:
    progress = InProcessLedgerProgress()
    progress.report(away=True)
    began = time.monotonic()
    with pytest.raises(errors.Unavailable) as raised:
        sync(progress).settle("ns", "s", SOLD, lambda: False)
    assert time.monotonic() - began < 1  # not the 5 s wait
    assert "outcome is unknown" in raised.value.message and raised.value.retry_after == 1
    progress.report(away=False)
    progress.mark({("ns", "s"): ("g", 1)})
    sync(progress).settle("ns", "s", SOLD, lambda: False)  # written: answered


async def offload(blocking: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, blocking)


def test_a_deferred_wait_frees_the_thread_and_ends_as_the_blocking_one() -> None:
    progress = InProcessLedgerProgress()
    durability = sync(progress)
    with durability.deferred() as pending:
        began = time.monotonic()
        durability.settle("ns", "s", SOLD, lambda: False)
        assert time.monotonic() - began < 0.5 and len(pending) == 1  # noted, not waited

    async def written_meanwhile() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, progress.mark, {("ns", "s"): ("g", 1)})
        await durability.settled(pending, offload)

    asyncio.run(written_meanwhile())

    away = InProcessLedgerProgress()
    with sync(away).deferred() as pending:
        sync(away).settle("ns", "s", SOLD, lambda: False)
    away.report(away=True)
    began = time.monotonic()
    with pytest.raises(errors.Unavailable):
        asyncio.run(sync(away).settled(pending, offload))
    assert time.monotonic() - began < 1


class Hung:
    """A writer's connection whose round trip has hung since ``since`` seconds ago."""

    def __init__(self, since: float) -> None:
        self.since = since

    def busy_for(self) -> float:
        return self.since

    def close(self) -> None:
        pass


def writer(uow: Callable[[], Any], progress: InProcessLedgerProgress,
           connection: Any = None) -> LedgerWorker:
    app = bootstrap(Config(), uow_factory=uow, counter=embedded_counter())
    app.bus.handle(commands.InitInventory("ns", "s", 10))
    app.bus.handle(commands.Decrement("ns", "s", 1, "k"))
    return LedgerWorker(app.outbox, uow, progress, connection=connection)


def test_a_writer_reports_the_record_away_while_it_is_down_and_back_once_it_writes() -> None:
    store, down = FakeStore(), [True]

    def uow() -> AbstractUnitOfWork:
        if down[0]:
            raise errors.Unavailable("database unavailable") from psycopg2.OperationalError(
                "connection refused")
        return FakeUnitOfWork(store)

    progress = InProcessLedgerProgress()
    worker = writer(lambda: FakeUnitOfWork(store), progress)
    worker.uow_factory = uow
    thread = worker.start_thread()
    try:
        wait_until(progress.away, 5, "the writer to report the record away")
        down[0] = False
        wait_until(lambda: not progress.away(), 5, "the writer to report the record back")
        assert store.items[("ns", "s")].consumed == 1
    finally:
        worker.stop()
        thread.join(timeout=10)


def test_a_writer_whose_round_trip_hangs_reports_the_record_away() -> None:
    progress = InProcessLedgerProgress()
    connection = Hung(since=0.0)
    worker = writer(lambda: FakeUnitOfWork(FakeStore()), progress, connection)
    thread = worker.start_thread()
    try:
        time.sleep(3 * ledger_worker.WATCH_SECONDS)  # idle round trips: no report (a negative)
        assert not progress.away()
        connection.since = ledger_worker.STUCK_SECONDS + 0.1
        wait_until(progress.away, 5, "the watchdog to report the record away")
    finally:
        worker.stop()
        thread.join(timeout=10)
