"""Many buyers, one item: exactly the stock is sold; Redis, the items row and the ledger agree."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.engine import Engine

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands
from tests.helpers.ledger import ledger_rows, ledger_threads, stored
from tests.helpers.processes import wait_until
from tests.helpers.sales import ATTEMPTS, buy, sell_from_processes

STOCK = 1000


def assert_agrees(app: Application, engine: Engine, namespace: str, sold: int) -> None:
    assert sold == STOCK
    wait_until(lambda: stored(engine, namespace, "hot")[2] == STOCK + 1, 60,
               "the ledger worker to write every sale")
    live = app.counter.read(namespace, "hot")
    assert live is not None and live.consumed == STOCK
    assert stored(engine, namespace, "hot") == (STOCK, STOCK, STOCK + 1)
    rows = ledger_rows(engine, namespace, "hot")
    assert [seq for seq, *_ in rows] == list(range(1, STOCK + 2))
    assert sum(qty for _, kind, qty, _ in rows if kind == "decrement") == STOCK
    assert len({key for *_, key in rows if key}) == STOCK


@pytest.fixture(params=["sync", "async"])
def durable(request: pytest.FixtureRequest, service_config: Config) -> Iterator[Config]:
    """The configuration in each durability mode, with two ledger workers sharing the outbox."""
    config = dataclasses.replace(service_config, durability=request.param)
    with ledger_threads(config, 2):
        yield config


def test_32_threads_sell_exactly_the_stock(durable: Config, engine: Engine,
                                           namespace: str) -> None:
    app = bootstrap(durable)
    app.bus.handle(commands.InitInventory(namespace, "hot", STOCK))
    per_thread = ATTEMPTS // 32 + 1
    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(buy, app, namespace,
                               range(t * per_thread, min((t + 1) * per_thread, ATTEMPTS)))
                   for t in range(32)]
        sold = sum(f.result(timeout=120) for f in futures)
    assert_agrees(app, engine, namespace, sold)
    assert app.engine is not None
    app.engine.dispose()


def test_4_processes_sell_exactly_the_stock(durable: Config, engine: Engine,
                                            namespace: str) -> None:
    app = bootstrap(durable)
    app.bus.handle(commands.InitInventory(namespace, "hot", STOCK))
    assert_agrees(app, engine, namespace, sell_from_processes(durable, namespace))
    assert app.engine is not None
    app.engine.dispose()
