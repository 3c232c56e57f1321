"""The ledger on real PostgreSQL and Redis: it never drops or changes a key, a sync retry whose
key Redis lost is answered from it, and a reservation's extension is in it, so that a rebuild
after Redis lost the item gives the hold back with its extended expiry."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from allocation.service_layer import reservations
from tests.helpers.counter_contract import pass_redis_time
from tests.helpers.ledger import drain, ledger_rows, ledger_threads, settle


def flush(app: Application, namespace: str) -> None:
    """What a FLUSHDB does to a namespace, done to this run's keys of it only (the Redis is
    shared): its items, holds, buyers, reservations and remembered keys are gone."""
    assert app.redis is not None
    keys = list(app.redis.scan_iter(match=f"{app.health.keys.prefix}:*:{namespace}:*",
                                    count=1000))
    assert keys
    app.redis.delete(*keys)


def forget_key(app: Application, namespace: str, sku: str, key: str) -> None:
    """Redis no longer holds the key: its window passed, or Redis lost it (a failover)."""
    assert app.redis is not None
    assert app.redis.delete(app.health.keys.idempotency(namespace, sku, key)) == 1


def written(app: Application, namespace: str) -> None:
    """Everything the outbox holds of ``namespace`` in the ledger, whoever writes it: another
    test's worker on this run's key space may have read an entry first."""
    drain(app)
    settle(app, namespace)


def keyed(engine: Engine, namespace: str, sku: str, key: str) -> list[tuple[int, str, int]]:
    return [(seq, kind, qty) for seq, kind, qty, k in ledger_rows(engine, namespace, sku)
            if k == key]


def test_a_key_redis_forgot_sells_again_and_the_ledger_keeps_the_key(
        service_config: Config, engine: Engine, namespace: str) -> None:
    """Async mode answers from Redis alone: once Redis forgot the key, the retry is a new sale,
    and its ledger entry keeps the key it was asked under (not null)."""
    app = bootstrap(dataclasses.replace(service_config, durability="async"))
    app.bus.handle(commands.InitInventory(namespace, "tee", 10))
    assert app.bus.handle(commands.Decrement(namespace, "tee", 2, "k")).ok
    written(app, namespace)
    forget_key(app, namespace, "tee", "k")
    again = app.bus.handle(commands.Decrement(namespace, "tee", 2, "k"))
    assert (again.ok, again.replayed, again.figures.consumed) == (True, False, 4)
    written(app, namespace)
    assert keyed(engine, namespace, "tee", "k") == [(2, "decrement", 2), (3, "decrement", 2)]


def test_in_sync_mode_a_retry_of_an_item_redis_lost_is_answered_from_the_ledger(
        service_config: Config, engine: Engine, namespace: str) -> None:
    config = dataclasses.replace(service_config, durability="sync")
    app = bootstrap(config)
    with ledger_threads(config, 1):
        app.bus.handle(commands.InitInventory(namespace, "tee", 10))
        first = app.bus.handle(commands.Decrement(namespace, "tee", 2, "k", "ann"))
        app.bus.handle(commands.Decrement(namespace, "tee", 1, "other"))
        flush(app, namespace)  # a FLUSHDB, or a failover to an empty replica
        again = app.bus.handle(commands.Decrement(namespace, "tee", 2, "k", "ann"))
        assert (again.status, again.replayed, again.figures.total, again.figures.consumed) == (
            "ok", True, first.figures.total, first.figures.consumed)
        unlike = app.bus.handle(commands.Decrement(namespace, "tee", 3, "k", "ann"))
        assert unlike.status == "idempotency_key_reused"
        # Given back to Redis: the next retry is its to answer.
        assert app.bus.handle(commands.Decrement(namespace, "tee", 2, "k", "ann")).replayed
    figures = app.counter.read(namespace, "tee")
    assert figures is not None and figures.consumed == 3  # sold once
    assert keyed(engine, namespace, "tee", "k") == [(2, "decrement", 2)]


def test_in_sync_mode_a_key_reused_after_its_window_is_a_new_movement_that_keeps_its_key(
        service_config: Config, engine: Engine, namespace: str) -> None:
    config = dataclasses.replace(service_config, durability="sync")
    app = bootstrap(config)
    with ledger_threads(config, 1):
        app.bus.handle(commands.InitInventory(namespace, "tee", 10))
        app.bus.handle(commands.Decrement(namespace, "tee", 2, "k"))
        # The window passes: the first use is older than it, in the ledger and in Redis.
        with engine.begin() as conn:
            conn.execute(text(
                "UPDATE inventory_ledger SET created_at = created_at - make_interval("
                "secs => :s) WHERE namespace = :ns AND idempotency_key = 'k'"),
                {"s": app.counter.idempotency_ttl + 3600, "ns": namespace})
        forget_key(app, namespace, "tee", "k")
        again = app.bus.handle(commands.Decrement(namespace, "tee", 2, "k"))
    assert (again.ok, again.replayed, again.figures.consumed) == (True, False, 4)
    assert keyed(engine, namespace, "tee", "k") == [(2, "decrement", 2), (3, "decrement", 2)]


def test_an_extension_is_in_the_ledger_and_a_rebuild_gives_the_hold_back_extended(
        service_config: Config, engine: Engine, namespace: str) -> None:
    config = dataclasses.replace(service_config, durability="sync")
    app = bootstrap(config)
    with ledger_threads(config, 1):
        app.bus.handle(commands.InitInventory(namespace, "cap", 10, limit_per_buyer=4))
        app.bus.handle(commands.InitInventory(namespace, "mug", 5))
        made = app.bus.handle(commands.Reserve(namespace, (("cap", 3), ("mug", 1)), "r", 60,
                                               "ann"))
        extended = app.bus.handle(commands.ExtendReservation(namespace, made.id, 900))
        assert extended.expires_ms > made.expires_ms + 800_000
        for sku, qty in (("cap", 3), ("mug", 1)):
            with engine.connect() as conn:
                kind, n, expires, rid = conn.execute(text(
                    "SELECT kind, qty, expires_at, reservation_id FROM inventory_ledger "
                    "WHERE namespace = :ns AND sku = :sku ORDER BY seq DESC LIMIT 1"),
                    {"ns": namespace, "sku": sku}).one()
            assert (kind, n, rid) == ("extend", qty, made.id)
            assert int(expires.timestamp() * 1000) == extended.expires_ms

        flush(app, namespace)  # Redis lost the namespace
        assert app.bus.handle(commands.RefreshAll(namespace)).refreshed == 2
        figures = app.counter.read(namespace, "cap")
        assert figures is not None and (figures.held, figures.available) == (3, 7)
        assert app.redis is not None
        keys = app.health.keys
        assert app.redis.hget(keys.holds(namespace, "cap"), made.id) == (
            f"3|{extended.expires_ms}|ann".encode())
        assert app.redis.zscore(keys.expiries(namespace, "cap"), made.id) == (
            extended.expires_ms)
        for reader in (app, bootstrap(config)):  # this process, and one that never knew it
            shown = reservations.reservation(reader.counter, reader.uow_factory(), namespace,
                                             made.id)
            assert (shown.state, shown.expires_ms) == ("held", extended.expires_ms)
        over = app.bus.handle(commands.Decrement(namespace, "cap", 2, "k", "ann"))
        assert (over.status, over.remaining) == ("limit_exceeded", 1)  # her hold still counts
        assert app.bus.handle(commands.ConfirmReservation(namespace, made.id)).state == (
            "confirmed")


def test_an_extension_past_a_day_from_creation_is_refused_and_writes_nothing(
        service_config: Config, engine: Engine, namespace: str) -> None:
    app = bootstrap(dataclasses.replace(service_config, durability="async"))
    app.bus.handle(commands.InitInventory(namespace, "cap", 10))
    made = app.bus.handle(commands.Reserve(namespace, (("cap", 3),), "r", 86_400))
    pass_redis_time(app.counter, 5)  # a day from now is past a day from its creation
    with pytest.raises(errors.ReservationLifetimeExceeded):
        app.bus.handle(commands.ExtendReservation(namespace, made.id, 86_400))
    shown = reservations.reservation(app.counter, app.uow_factory(), namespace, made.id)
    assert shown.expires_ms == made.expires_ms
    written(app, namespace)
    assert [kind for _, kind, _, _ in ledger_rows(engine, namespace, "cap")] == [
        "init", "hold"]
    assert app.bus.handle(commands.ExtendReservation(namespace, made.id, 600)).expires_ms < (
        made.expires_ms)
