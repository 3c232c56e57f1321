"""Limits per buyer on real PostgreSQL and Redis: checked in the sale's atomic step, kept in the
record, and rebuilt with the counter when Redis loses the item."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text
from sqlalchemy.engine import Engine

from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from tests.helpers.ledger import drain


def bought(engine: Engine, namespace: str, sku: str) -> dict[str, int]:
    """Each buyer's units as the ledger holds them."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT buyer, SUM(CASE kind WHEN 'decrement' THEN qty ELSE -qty END) "
            "FROM inventory_ledger WHERE namespace = :ns AND sku = :sku AND buyer IS NOT NULL "
            "GROUP BY buyer"), {"ns": namespace, "sku": sku})
        return {buyer: int(n) for buyer, n in rows}


def test_a_limit_survives_redis_losing_the_item(service_config: Config, engine: Engine,
                                                namespace: str) -> None:
    app = bootstrap(dataclasses.replace(service_config, durability="async"))
    app.bus.handle(commands.InitInventory(namespace, "cap", 20, limit_per_buyer=3))
    assert app.bus.handle(commands.Decrement(namespace, "cap", 2, "a1", "ann")).ok
    assert app.bus.handle(commands.Decrement(namespace, "cap", 3, "b1", "bob")).ok
    assert app.bus.handle(commands.Refund(namespace, "cap", 1, "b2", "bob")).ok
    drain(app)
    assert bought(engine, namespace, "cap") == {"ann": 2, "bob": 2}

    keys = app.health.keys
    assert app.redis is not None
    app.redis.delete(keys.item(namespace, "cap"), keys.buyers(namespace, "cap"))  # lost

    over = app.bus.handle(commands.Decrement(namespace, "cap", 2, "a2", "ann"))
    assert (over.status, over.remaining, over.limit) == ("limit_exceeded", 1, 3)
    assert app.bus.handle(commands.Decrement(namespace, "cap", 1, "n1")).status == (
        "buyer_required")
    assert app.bus.handle(commands.Decrement(namespace, "cap", 1, "b3", "bob")).ok
    assert app.bus.handle(commands.Decrement(namespace, "cap", 1, "a1", "ann")).replayed


def test_a_limit_change_is_kept_in_the_record_and_the_counter(service_config: Config,
                                                              engine: Engine,
                                                              namespace: str) -> None:
    app = bootstrap(service_config)
    app.bus.handle(commands.InitInventory(namespace, "cap", 10))
    assert app.bus.handle(commands.SetLimit(namespace, "cap", 1)).limit == 1
    assert app.bus.handle(commands.Decrement(namespace, "cap", 2, "k", "ann")).status == (
        "limit_exceeded")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT limit_per_buyer FROM inventory_items WHERE "
                                 "namespace = :ns AND sku = 'cap'"), {"ns": namespace}
                            ).scalar_one() == 1
    assert app.bus.handle(commands.SetLimit(namespace, "cap", None)).limit is None
    assert app.bus.handle(commands.Decrement(namespace, "cap", 2, "k2")).ok


def test_concurrent_buyers_never_pass_their_limit(service_config: Config, engine: Engine,
                                                  namespace: str) -> None:
    app = bootstrap(service_config)
    app.bus.handle(commands.InitInventory(namespace, "hot", 1000, limit_per_buyer=2))

    def buyer(n: int) -> int:
        # Each buyer tries 6 times from 2 "tabs" at once; only 2 units may ever be theirs.
        return sum(app.bus.handle(commands.Decrement(namespace, "hot", 1, f"{n}-{i}",
                                                     f"buyer-{n % 8}")).ok for i in range(6))

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(buyer, range(16))) == 16  # 8 buyers, 2 units each
    drain(app)
    assert bought(engine, namespace, "hot") == {f"buyer-{n}": 2 for n in range(8)}
