"""Limits per buyer and holds on real PostgreSQL and Redis: checked in the sale's atomic step,
kept in the record, and rebuilt with the counter when Redis loses the item."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from allocation.adapters.redis_counter import RedisCounter
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from tests.helpers.counter_contract import pass_redis_time
from tests.helpers.ledger import drain, ledger_threads
from tests.helpers.processes import wait_until


def bought(engine: Engine, namespace: str, sku: str) -> dict[str, int]:
    """Each buyer's units as the ledger holds them."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT buyer, SUM(CASE kind WHEN 'decrement' THEN qty ELSE -qty END) "
            "FROM inventory_ledger WHERE namespace = :ns AND sku = :sku AND buyer IS NOT NULL "
            "GROUP BY buyer"), {"ns": namespace, "sku": sku})
        return {buyer: int(n) for buyer, n in rows}


def test_a_limit_survives_redis_losing_the_item(own_config: Config, engine: Engine,
                                                namespace: str) -> None:
    app = bootstrap(dataclasses.replace(own_config, durability="async"))
    app.bus.handle(commands.InitInventory(namespace, "cap", 20, limit_per_buyer=3))
    assert app.bus.handle(commands.Decrement(namespace, "cap", 2, "a1", "ann")).ok
    assert app.bus.handle(commands.Decrement(namespace, "cap", 3, "b1", "bob")).ok
    assert app.bus.handle(commands.Refund(namespace, "cap", 1, "b2", "bob")).ok
    drain(app)
    wait_until(lambda: bought(engine, namespace, "cap") == {"ann": 2, "bob": 2}, 30,
               "the ledger")

    keys = app.health.keys
    assert app.redis is not None
    app.redis.delete(keys.item(namespace, "cap"), keys.buyers(namespace, "cap"))  # lost

    over = app.bus.handle(commands.Decrement(namespace, "cap", 2, "a2", "ann"))
    assert (over.status, over.remaining, over.figures.limit) == ("limit_exceeded", 1, 3)
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
    wait_until(lambda: bought(engine, namespace, "hot") == {f"buyer-{n}": 2 for n in range(8)},
               30, "the ledger")


def test_a_rebuild_restores_open_holds_and_they_end_as_before(own_config: Config,
                                                              engine: Engine,
                                                              namespace: str) -> None:
    app = bootstrap(dataclasses.replace(own_config, durability="async"))
    app.bus.handle(commands.InitInventory(namespace, "cap", 10, limit_per_buyer=4))
    kept = app.bus.handle(commands.Reserve(namespace, (("cap", 3),), "r1", 600, "ann"))
    ended = app.bus.handle(commands.Reserve(namespace, (("cap", 2),), "r2", 600, "bob"))
    app.bus.handle(commands.ReleaseReservation(namespace, ended.id))
    drain(app)

    keys = app.health.keys
    assert app.redis is not None
    app.redis.delete(keys.item(namespace, "cap"), keys.buyers(namespace, "cap"),
                     keys.holds(namespace, "cap"), keys.expiries(namespace, "cap"))  # lost

    figures = app.bus.handle(commands.Refresh(namespace, "cap"))
    assert (figures.consumed, figures.held, figures.available) == (0, 3, 7)
    over = app.bus.handle(commands.Decrement(namespace, "cap", 2, "a1", "ann"))
    assert (over.status, over.remaining) == ("limit_exceeded", 1)  # her hold still counts
    assert app.bus.handle(commands.ConfirmReservation(namespace, kept.id)).state == "confirmed"
    after = app.counter.read(namespace, "cap")
    assert after is not None and (after.consumed, after.held) == (3, 0)
    drain(app)

    def recorded() -> tuple[int, int, int]:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT total, consumed, held FROM inventory_items WHERE "
                                    "namespace = :ns"), {"ns": namespace}).one()
            return row.total, row.consumed, row.held

    # Another test's writer may share this key space's outbox: wait for the row, not the drain.
    wait_until(lambda: recorded() == (10, 3, 0), 30, "the confirm in the items table")


def test_a_reservation_redis_lost_comes_back_from_the_ledger(own_config: Config,
                                                             namespace: str) -> None:
    app = bootstrap(dataclasses.replace(own_config, durability="async"))
    app.bus.handle(commands.InitInventory(namespace, "cap", 10))
    first = app.bus.handle(commands.Reserve(namespace, (("cap", 3),), "r1", 600, "ann"))
    second = app.bus.handle(commands.Reserve(namespace, (("cap", 2),), "r2", 600))
    drain(app)
    keys = app.health.keys
    partition = keys.partition(namespace, "cap")
    assert app.redis is not None
    app.redis.delete(keys.item(namespace, "cap"), keys.buyers(namespace, "cap"),
                     keys.holds(namespace, "cap"), keys.expiries(namespace, "cap"),
                     keys.reservation(namespace, partition, first.id),
                     keys.reservation(namespace, partition, second.id))  # Redis lost them

    again = app.bus.handle(commands.Reserve(namespace, (("cap", 3),), "r1", 600, "ann"))
    assert (again.id, again.state, again.replayed) == (first.id, "held", True)
    assert app.bus.handle(commands.ConfirmReservation(namespace, second.id)).state == (
        "confirmed")
    figures = app.counter.read(namespace, "cap")
    assert figures is not None and (figures.consumed, figures.held) == (2, 3)  # nothing twice
    released = app.bus.handle(commands.ReleaseReservation(namespace, first.id))
    assert (released.state, released.lines, released.buyer) == ("released", (("cap", 3),),
                                                                 "ann")


def test_a_refresh_keeps_the_extension_redis_holds(own_config: Config,
                                                   namespace: str) -> None:
    """A rebuild of an item Redis holds keeps Redis's holds, extended, rather than reload
    them."""
    app = bootstrap(dataclasses.replace(own_config, durability="async"))
    app.bus.handle(commands.InitInventory(namespace, "cap", 2))
    made = app.bus.handle(commands.Reserve(namespace, (("cap", 2),), "r", 1))
    app.bus.handle(commands.ExtendReservation(namespace, made.id, 600))
    drain(app)
    app.bus.handle(commands.Refresh(namespace, "cap"))
    assert isinstance(app.counter, RedisCounter)
    pass_redis_time(app.counter, 1100)  # past the first expiry
    assert app.bus.handle(commands.Decrement(namespace, "cap", 1, "k")).status == (
        "insufficient_stock")
    assert app.bus.handle(commands.ConfirmReservation(namespace, made.id)).state == "confirmed"


def test_in_sync_mode_a_retried_hold_of_an_ended_reservation_redis_lost_is_a_replay(
        service_config: Config, namespace: str) -> None:
    config = dataclasses.replace(service_config, durability="sync")
    app = bootstrap(config)
    app.bus.handle(commands.InitInventory(namespace, "cap", 5))
    with ledger_threads(config, 1):
        made = app.bus.handle(commands.Reserve(namespace, (("cap", 2),), "r", 600))
        app.bus.handle(commands.ConfirmReservation(namespace, made.id))
        keys = app.health.keys
        assert app.redis is not None
        app.redis.delete(keys.reservation(namespace, int(made.id.partition(".")[0]), made.id))
        other = bootstrap(config)  # another process: nothing of it in memory
        again = other.bus.handle(commands.Reserve(namespace, (("cap", 2),), "r", 600))
        with pytest.raises(errors.IdempotencyKeyReused):  # the ledger's lines are not these
            bootstrap(config).bus.handle(commands.Reserve(namespace, (("cap", 3),), "r", 600))
    # The first answer: held, until the first expiry, though it has been confirmed since.
    assert (again.id, again.state, again.expires_ms, again.replayed) == (
        made.id, "held", made.expires_ms, True)
    figures = app.counter.read(namespace, "cap")
    assert figures is not None and (figures.consumed, figures.held) == (2, 0)  # not held again
