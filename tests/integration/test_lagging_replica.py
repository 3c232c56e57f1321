"""A failover to a lagging replica, on real Redis and PostgreSQL: Redis keeps the item but loses
its last movements (its seq rolls back, their keys are gone). Simulated by DUMPing the item's
keys, selling, and RESTOREing the older snapshot. In sync mode the ledger's history stands: the
writer meets a seq the ledger holds under another movement, sets that movement aside, and
rebuilds the item from the ledger; the waiting request is answered by its key
(docs/adr/0036-a-counter-that-rolled-back-is-rebuilt-by-the-writer.md)."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy.engine import Engine

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands
from tests.helpers.ledger import ledger_rows, ledger_threads, stored

Snapshot = dict[bytes, tuple[bytes, int]]


def _item_keys(app: Application, namespace: str, sku: str) -> list[bytes]:
    """The item's keys and its keys' records (not its partition's outbox or tally)."""
    return list(app.redis.scan_iter(match=f"{app.health.keys.prefix}:*:{namespace}:{sku}*",
                                    count=1000))


def snapshot(app: Application, namespace: str, sku: str) -> Snapshot:
    taken: Snapshot = {}
    for key in _item_keys(app, namespace, sku):
        dumped = app.redis.dump(key)
        assert isinstance(dumped, bytes)
        taken[key] = (dumped, max(0, int(app.redis.pttl(key))))
    return taken


def restore(app: Application, namespace: str, sku: str, taken: Snapshot) -> None:
    """The replica's older state of the item replaces the current one."""
    app.redis.delete(*_item_keys(app, namespace, sku))
    for key, (dumped, ttl) in taken.items():
        app.redis.restore(key, ttl, dumped, replace=True)


@pytest.mark.parametrize("retried_by", ["the selling process", "a process that never waited"])
def test_in_sync_mode_the_ledgers_history_stands_after_redis_rolled_an_item_back(
        own_config: Config, engine: Engine, namespace: str, retried_by: str) -> None:
    """The process that sold knows the ledger's marks, and so that Redis gave out a seq the
    ledger held: it rebuilds the item at once. One that never waited on the item knows no
    marks: the ledger writer finds the seq taken and rebuilds it, and the waiter hears that."""
    # A generous wait: on a busy machine the writer's rebuild may take a while to be heard.
    config = dataclasses.replace(own_config, durability="sync", sync_wait_seconds=30)
    seller = bootstrap(config)
    app = seller if retried_by == "the selling process" else bootstrap(config)
    with ledger_threads(config, 1):
        seller.bus.handle(commands.InitInventory(namespace, "tee", 10))
        assert seller.bus.handle(commands.Decrement(namespace, "tee", 1, "a")).ok
        older = snapshot(seller, namespace, "tee")  # where the replica stopped following
        k = seller.bus.handle(commands.Decrement(namespace, "tee", 2, "k", "ann"))
        j = seller.bus.handle(commands.Decrement(namespace, "tee", 3, "j"))
        assert (k.figures.seq, j.figures.seq, j.figures.consumed) == (3, 4, 6)

        restore(app, namespace, "tee", older)  # the failover
        rolled_back = app.counter.read(namespace, "tee")
        assert rolled_back is not None and (rolled_back.seq, rolled_back.consumed) == (2, 1)

        # Redis sells j again at seq 3, which the ledger holds as k's: the writer sets it
        # aside and rebuilds the item; the retry is answered from the ledger by its key.
        again = app.bus.handle(commands.Decrement(namespace, "tee", 3, "j"))
        assert (again.status, again.replayed) == ("ok", True)
        assert (again.figures.seq, again.figures.total, again.figures.consumed) == (4, 10, 6)
        assert app.bus.handle(commands.Decrement(namespace, "tee", 2, "j")).status == (
            "idempotency_key_reused")
        # The rebuild gave the ledger's keys back to Redis.
        k_again = app.bus.handle(commands.Decrement(namespace, "tee", 2, "k", "ann"))
        assert (k_again.status, k_again.replayed, k_again.figures.consumed) == ("ok", True, 3)
        # A fresh key after the failover is sold once, after the ledger's last seq.
        fresh = app.bus.handle(commands.Decrement(namespace, "tee", 1, "n"))
        assert (fresh.status, fresh.replayed) == ("ok", False)
        assert (fresh.figures.seq, fresh.figures.consumed) == (5, 7)

    assert ledger_rows(engine, namespace, "tee") == [
        (1, "init", 10, None), (2, "decrement", 1, "a"), (3, "decrement", 2, "k"),
        (4, "decrement", 3, "j"), (5, "decrement", 1, "n")]
    assert stored(engine, namespace, "tee") == (10, 7, 5)
    figures = app.counter.read(namespace, "tee")
    assert figures is not None and (figures.consumed, figures.seq) == (7, 5)
    for made in {id(seller): seller, id(app): app}.values():
        assert made.engine is not None
        made.engine.dispose()
