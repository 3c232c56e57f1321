"""Refresh while 16 threads sell: no lost and no doubled updates, in both durability modes."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.engine import Engine

from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from allocation.entrypoints import ledger_worker
from tests.helpers.ledger import ledger_rows, stored
from tests.helpers.processes import wait_until

STOCK = 600


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_refresh_during_a_sale(service_config: Config, engine: Engine, namespace: str,
                               durability: str) -> None:
    config = dataclasses.replace(service_config, durability=durability)
    app = bootstrap(config)
    worker = ledger_worker.for_app(bootstrap(config))  # a worker of its own, as a process
    worker.start_thread()
    app.bus.handle(commands.InitInventory(namespace, "hot", STOCK))
    selling = threading.Event()
    selling.set()
    refreshes = [0]

    def refresher() -> None:
        while selling.is_set():
            try:
                app.bus.handle(commands.Refresh(namespace, "hot"))
                refreshes[0] += 1
            except errors.Unavailable:
                pass

    def buyer(n: int) -> int:
        sold = 0
        for attempt in range(60):
            key = f"b{n}-{attempt}"
            while True:  # a fenced item says "retry": the client retries with the same key
                try:
                    sold += app.bus.handle(commands.Decrement(namespace, "hot", 1, key)).ok
                    break
                except errors.Unavailable:
                    continue
        return sold

    refreshers = [threading.Thread(target=refresher) for _ in range(2)]  # they serialise
    for thread in refreshers:
        thread.start()
    with ThreadPoolExecutor(16) as pool:
        sold = sum(pool.map(buyer, range(16)))
    selling.clear()
    for thread in refreshers:
        thread.join(timeout=60)
    assert refreshes[0] > 0
    assert sold == STOCK  # 960 attempts for 600 units
    wait_until(lambda: stored(engine, namespace, "hot")[2] == STOCK + 1, 60,
               "the ledger to hold every sale")
    worker.stop()
    assert stored(engine, namespace, "hot") == (STOCK, STOCK, STOCK + 1)
    rows = ledger_rows(engine, namespace, "hot")
    assert [seq for seq, *_ in rows] == list(range(1, STOCK + 2))
    assert len({key for *_, key in rows if key}) == STOCK  # no sale twice
    live = app.counter.read(namespace, "hot")
    assert live is not None and live.consumed == STOCK
