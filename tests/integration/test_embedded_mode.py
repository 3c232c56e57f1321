"""The embedded mode: an SQLite file and the production scripts on the Redis the process starts
for itself, one process, no services."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from allocation import views
from allocation.adapters import migrate
from allocation.adapters.redis_counter import RedisCounter
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from allocation.entrypoints import ledger_worker
from tests.helpers.processes import wait_until


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_threads_sell_exactly_the_stock_on_sqlite(tmp_path: Path, durability: str) -> None:
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    migrate.upgrade(url)
    config = Config(database_url=url, durability=durability)
    app = bootstrap(config)
    worker = ledger_worker.for_app(app)  # as `make run` starts it, in a thread
    worker.start_thread()
    assert isinstance(app.counter, RedisCounter)
    app.bus.handle(commands.InitInventory("shop", "hot", 100))

    def buy(n: int) -> bool:
        return bool(app.bus.handle(commands.Decrement("shop", "hot", 1, f"k{n}")).ok)

    with ThreadPoolExecutor(8) as pool:
        sold = sum(pool.map(buy, range(300)))
    assert sold == 100
    assert views.item(app, "shop", "hot").available == 0
    if durability == "sync":  # answered once the ledger had each sale
        assert len(views.ledger(app, "shop", "hot", 0, 1000)) == 101
    wait_until(lambda: len(views.ledger(app, "shop", "hot", 0, 1000)) == 101, 30,
               "the ledger worker thread to write every sale")
    worker.stop()
    entries = views.ledger(app, "shop", "hot", 0, 1000)
    assert [e.seq for e in entries] == list(range(1, 102))
    # A new process (a fresh embedded Redis) rebuilds from the file.
    again = bootstrap(config)
    assert views.item(again, "shop", "hot").consumed == 100
