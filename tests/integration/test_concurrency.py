"""Many buyers, one item: exactly the stock is sold; Redis, the items row and the ledger agree."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.engine import Engine

from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from allocation.service_layer.messagebus import MessageBus
from tests.e2e.conftest import wait_until
from tests.integration.conftest import ledger_rows, ledger_threads, stored

STOCK, ATTEMPTS = 1000, 3000


def buy(bus: MessageBus, namespace: str, keys: range) -> int:
    sold = 0
    for n in keys:
        if bus.handle(commands.Decrement(namespace, "hot", 1, f"buyer-{n}")).ok:
            sold += 1
    return sold


def assert_agrees(bus: MessageBus, engine: Engine, namespace: str, sold: int) -> None:
    assert sold == STOCK
    wait_until(lambda: stored(engine, namespace, "hot")[2] == STOCK + 1, 60,
               "the ledger worker to write every sale")
    assert bus.dependencies["counter"].read(namespace, "hot").consumed == STOCK
    assert stored(engine, namespace, "hot") == (STOCK, STOCK, STOCK + 1)
    rows = ledger_rows(engine, namespace, "hot")
    assert [seq for seq, *_ in rows] == list(range(1, STOCK + 2))
    assert sum(qty for _, kind, qty, _ in rows if kind == "decrement") == STOCK
    assert len({key for *_, key in rows if key}) == STOCK


@pytest.fixture(params=["sync", "async"])
def durable(request: pytest.FixtureRequest, service_config: Config) -> Iterator[Config]:
    """The configuration in each durability mode; in async mode two ledger workers run."""
    config = dataclasses.replace(service_config, durability=request.param)
    with ledger_threads(config, 2):  # two workers share the outbox
        yield config


def test_32_threads_sell_exactly_the_stock(durable: Config, engine: Engine,
                                           namespace: str) -> None:
    bus = bootstrap(durable)
    bus.handle(commands.InitInventory(namespace, "hot", STOCK))
    per_thread = ATTEMPTS // 32 + 1
    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(buy, bus, namespace,
                               range(t * per_thread, min((t + 1) * per_thread, ATTEMPTS)))
                   for t in range(32)]
        sold = sum(f.result(timeout=120) for f in futures)
    assert_agrees(bus, engine, namespace, sold)
    bus.dependencies["engine"].dispose()


def _buyer_process(config: Config, namespace: str, start: int, stop: int,
                   results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    bus = bootstrap(config)
    threads, sold, lock = [], [0], threading.Lock()

    def run(keys: range) -> None:
        n = buy(bus, namespace, keys)
        with lock:
            sold[0] += n

    step = (stop - start) // 8 + 1
    for t in range(8):
        th = threading.Thread(target=run, args=(range(start + t * step,
                                                      min(start + (t + 1) * step, stop)),))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    results.put(sold[0])


def sell_from_processes(config: Config, namespace: str, processes: int = 4) -> int:
    """ATTEMPTS purchases of the hot item from ``processes`` processes of 8 threads each."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    share = ATTEMPTS // processes
    procs = [ctx.Process(target=_buyer_process,
                         args=(config, namespace, p * share, (p + 1) * share, results))
             for p in range(processes)]
    for p in procs:
        p.start()
    sold = sum(results.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return int(sold)


def test_4_processes_sell_exactly_the_stock(durable: Config, engine: Engine,
                                            namespace: str) -> None:
    bus = bootstrap(durable)
    bus.handle(commands.InitInventory(namespace, "hot", STOCK))
    assert_agrees(bus, engine, namespace, sell_from_processes(durable, namespace))
    bus.dependencies["engine"].dispose()
