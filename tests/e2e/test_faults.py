"""Faults, with real processes and services. After recovery each test checks: no oversell, no
acknowledged sale missing from the ledger, none twice, seq gap-less, Redis equal to the database."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.engine import Engine

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from tests.helpers.ledger import stored
from tests.helpers.processes import (
    PrivateRedis,
    free_port,
    ledger_worker,
    serve,
    wait_until,
)


@pytest.fixture
def own_keys(service_config: Config) -> Config:
    """Streams of this test's own (so the session's ledger worker keeps out), quick claiming."""
    return dataclasses.replace(service_config, durability="async", ledger_claim_idle_ms=300,
                               redis_key_prefix=f"{service_config.redis_key_prefix}:"
                                                f"f{uuid.uuid4().hex[:8]}")


def assert_exact(app: Application, engine: Engine, namespace: str, sku: str, total: int,
                 sold: set[str]) -> None:
    """The record holds exactly the acknowledged sales (``sold``: their keys)."""
    assert len(sold) <= total
    wait_until(lambda: stored(engine, namespace, sku)[1] == len(sold), 60,
               f"the ledger to hold all {len(sold)} acknowledged sales")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT seq, kind, idempotency_key FROM inventory_ledger "
                                 "WHERE namespace = :ns AND sku = :sku ORDER BY seq"),
                            {"ns": namespace, "sku": sku}).all()
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    keys = [r.idempotency_key for r in rows if r.kind == "decrement"]
    assert sorted(keys) == sorted(sold)
    live = app.counter.read(namespace, sku)
    assert live is not None
    assert (live.total, live.consumed) == stored(engine, namespace, sku)[:2]


def sell(app: Application, namespace: str, sku: str, attempts: int, threads: int = 8,
         prefix: str = "") -> set[str]:
    sold: set[str] = set()
    lock = threading.Lock()

    def buyer(n: int) -> None:
        for attempt in range(attempts // threads):
            key = f"{prefix}{n}-{attempt}"
            try:
                ok = app.bus.handle(commands.Decrement(namespace, sku, 1, key)).ok
            except errors.Unavailable:
                continue
            if ok:
                with lock:
                    sold.add(key)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(buyer, range(threads)))
    return sold


def test_a_worker_killed_mid_batch_is_replaced(own_keys: Config, engine: Engine,
                                               namespace: str) -> None:
    app = bootstrap(own_keys)
    app.bus.handle(commands.InitInventory(namespace, "hot", 3000))
    first = ledger_worker(own_keys)
    sold: set[str] = set()
    sale = threading.Thread(target=lambda: sold.update(sell(app, namespace, "hot", 4000)))
    sale.start()
    wait_until(lambda: stored(engine, namespace, "hot")[2] > 300, 60,
               "the first worker to be writing")
    first.stop(kill=True)  # SIGKILL, in the middle of whatever it was doing
    sale.join(timeout=120)
    second = ledger_worker(own_keys)
    try:
        assert_exact(app, engine, namespace, "hot", 3000, sold)
        assert len(sold) == 3000
    finally:
        second.stop()


def test_the_database_away_lag_grows_then_drains(own_keys: Config, engine: Engine,
                                                 namespace: str) -> None:
    app = bootstrap(own_keys)
    app.bus.handle(commands.InitInventory(namespace, "hot", 500))
    cut_off = ledger_worker(dataclasses.replace(
        own_keys, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"))
    try:
        sold = sell(app, namespace, "hot", 400)
        assert len(sold) == 400  # decrements do not need the database in async mode
        entries, age = app.outbox.backlog()
        assert entries == 400 and age >= 0
        assert stored(engine, namespace, "hot")[1] == 0
        assert cut_off.alive()  # waiting for its database, not dead
    finally:
        cut_off.stop()
    back = ledger_worker(own_keys)
    try:
        assert_exact(app, engine, namespace, "hot", 500, sold)
        wait_until(lambda: app.outbox.backlog()[0] == 0, 30,
                   "the backlog to drain")
    finally:
        back.stop()


def test_redis_away_is_503_and_recovers_by_itself(service_config: Config, engine: Engine,
                                                  private_redis: PrivateRedis,
                                                  namespace: str) -> None:
    config = dataclasses.replace(service_config, redis_url=private_redis.url,
                                 durability="async")
    ledger = ledger_worker(config)
    api = serve(config)
    base = next(api)
    url = f"{base}/v1/{namespace}/items/hot"
    try:
        assert requests.put(url, json={"total": 10}, timeout=10).status_code == 201
        for n in range(3):
            assert requests.post(f"{url}/decrements", json={"qty": 1},
                                 headers={"Idempotency-Key": f"k{n}"}, timeout=10).ok
        wait_until(lambda: stored(engine, namespace, "hot")[1] == 3, 30, "the ledger")
        private_redis.stop()
        down = requests.post(f"{url}/decrements", json={"qty": 1},
                             headers={"Idempotency-Key": "while-down"}, timeout=30)
        assert down.status_code == 503 and down.headers["Retry-After"].isdigit()
        assert requests.get(url, timeout=30).status_code == 503
        assert requests.get(f"{base}/healthz", timeout=10).ok
        private_redis.start()  # back, and empty: it keeps nothing on disk

        def sells() -> bool:
            r = requests.post(f"{url}/decrements", json={"qty": 1},
                              headers={"Idempotency-Key": "after"}, timeout=10)
            return r.status_code == 200

        wait_until(sells, 30, "the service to sell again once Redis is back")
        assert requests.get(url, timeout=10).json()["consumed"] == 4  # rebuilt, exact
        wait_until(lambda: stored(engine, namespace, "hot")[1] == 4, 30, "the ledger")
    finally:
        next(api, None)
        ledger.stop()


def test_flushdb_mid_sale_never_oversells(service_config: Config, engine: Engine,
                                          private_redis: PrivateRedis, namespace: str) -> None:
    """Synchronous durability: every acknowledged sale is in the ledger before the answer, so
    losing Redis loses nothing. (Asynchronous durability acknowledges before the ledger has it:
    see the README on what Redis must keep for that.)"""
    config = dataclasses.replace(service_config, redis_url=private_redis.url,
                                 durability="sync")
    ledger = ledger_worker(config)  # a sync sale is answered once this has written it
    api = serve(config)
    base = next(api)
    url = f"{base}/v1/{namespace}/items/hot"
    try:
        requests.put(url, json={"total": 300}, timeout=10)
        sold: set[str] = set()
        lock = threading.Lock()
        halfway = threading.Event()

        def buyer(n: int) -> None:
            session = requests.Session()
            for attempt in range(60):
                key = f"{n}-{attempt}"
                for _ in range(20):  # a 503 is "outcome unknown": the same key again
                    r = session.post(f"{url}/decrements", json={"qty": 1},
                                     headers={"Idempotency-Key": key}, timeout=30)
                    assert r.status_code in (200, 409, 503), r.text
                    if r.status_code != 503:
                        break
                if r.status_code == 200:
                    with lock:
                        sold.add(key)
                        if len(sold) > 100:
                            halfway.set()

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(buyer, n) for n in range(8)]
            assert halfway.wait(timeout=60)
            private_redis.client().flushdb()
            for f in futures:
                f.result(timeout=120)
        assert ledger.alive(), ledger.stderr_tail()  # it rode out the loss of its streams
        assert len(sold) == 300  # 480 attempts for 300 units, none oversold
        assert requests.post(f"{url}/refresh", timeout=10).json()["consumed"] == 300
        app = bootstrap(config)
        assert_exact(app, engine, namespace, "hot", 300, sold)
    finally:
        next(api, None)
        ledger.stop()
