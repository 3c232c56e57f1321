"""The embedded mode: an SQLite file and the production scripts on the Redis the process starts
for itself, one process, no services."""

from __future__ import annotations

import os
import subprocess
import sys
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


EXITING = """
import logging, sys
from allocation.adapters import migrate
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from allocation.entrypoints import ledger_worker
logging.basicConfig(level=logging.INFO)
migrate.upgrade(sys.argv[1])
app = bootstrap(Config(database_url=sys.argv[1], durability="sync"))
ledger_worker.for_app(app).start_thread()
app.bus.handle(commands.InitInventory("shop", "tee", 5))
assert app.bus.handle(commands.Decrement("shop", "tee", 1, "k1")).ok  # heard on the channel
"""


def test_an_embedded_process_exits_without_reporting_its_own_redis_lost(
        tmp_path: Path) -> None:
    """The process stops the Redis it started as it exits: the listeners on its channels end
    first, quietly, rather than warn an operator who pressed Ctrl-C that Redis went away."""
    done = subprocess.run([sys.executable, "-c", EXITING, f"sqlite:///{tmp_path / 'e.db'}"],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("REDIS_URL", "DATABASE_URL")})
    assert done.returncode == 0, done.stderr[-2000:]
    for news in ("channel", "resubscribing", "waiting for a dependency", "unavailable"):
        assert news not in done.stderr, done.stderr
