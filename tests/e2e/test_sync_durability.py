"""Sync durability on the one pipeline, with real processes: a sale is answered only once the
ledger worker has committed it; without a worker (stopped, killed, or cut off from its database)
a sale answers 503 within the wait, and the same key asked again once a worker runs answers 200,
with each sale in the ledger once; beside another worker, a killed one's sales are taken over
within the wait."""

from __future__ import annotations

import dataclasses
import functools
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.engine import Engine

from allocation.adapters.redis_outbox import GROUP, RedisOutbox
from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from tests.helpers.processes import (
    Process,
    allocation_command,
    free_port,
    ledger_worker,
    serve,
    service_env,
    wait_until,
)

WAIT = 1.0  # SYNC_WAIT_SECONDS for these tests


@pytest.fixture
def sync_config(service_config: Config) -> Config:
    """Streams of this test's own (the session's ledger worker keeps out), a short wait."""
    return dataclasses.replace(service_config, durability="sync", sync_wait_seconds=WAIT,
                               ledger_claim_idle_ms=300,
                               redis_key_prefix=f"{service_config.redis_key_prefix}:"
                                                f"s{uuid.uuid4().hex[:8]}")


def ledger_keys(engine: Engine, namespace: str, sku: str) -> list[str]:
    with engine.connect() as conn:
        return [r.idempotency_key for r in conn.execute(text(
            "SELECT idempotency_key FROM inventory_ledger WHERE namespace = :ns AND sku = :sku "
            "AND kind = 'decrement' ORDER BY seq"), {"ns": namespace, "sku": sku})]


def test_a_sync_sale_is_in_the_ledger_when_answered(sync_config: Config, engine: Engine,
                                                   namespace: str) -> None:
    ledger = ledger_worker(sync_config)
    api = serve(dataclasses.replace(sync_config))
    base = next(api)
    url = f"{base}/v1/{namespace}/items/hot"
    try:
        assert requests.put(url, json={"total": 50}, timeout=10).status_code == 201
        for n in range(20):
            r = requests.post(f"{url}/decrements", json={"qty": 1},
                              headers={"Idempotency-Key": f"k{n}"}, timeout=10)
            assert r.status_code == 200, r.text
            # No waiting here: the answer came after the commit.
            assert ledger_keys(engine, namespace, "hot")[-1] == f"k{n}"
    finally:
        next(api, None)
        ledger.stop()


@pytest.mark.parametrize("outage", ["worker-stopped", "database-away"])
def test_without_a_writer_sales_answer_503_then_the_same_keys_succeed_once(
        sync_config: Config, engine: Engine, namespace: str, outage: str) -> None:
    cut_off = (ledger_worker(dataclasses.replace(
        sync_config, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"))
        if outage == "database-away" else None)
    api = serve(sync_config)
    base = next(api)
    url = f"{base}/v1/{namespace}/items/hot"
    keys = [f"k{n}" for n in range(6)]
    back: Process | None = None
    try:
        assert requests.put(url, json={"total": 10}, timeout=10).status_code == 201
        for key in keys:
            started = time.monotonic()
            r = requests.post(f"{url}/decrements", json={"qty": 1},
                              headers={"Idempotency-Key": key}, timeout=30)
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"].isdigit()
            assert r.json()["error"] == "unavailable"
            assert time.monotonic() - started < WAIT + 2  # the wait, not a hang
        assert ledger_keys(engine, namespace, "hot") == []  # nothing acknowledged, nothing written
        if cut_off is not None:
            assert cut_off.alive(), cut_off.stderr_tail()
            cut_off.stop()
        back = ledger_worker(sync_config)
        answers: dict[str, requests.Response] = {}

        def answered(key: str) -> bool:
            r = requests.post(f"{url}/decrements", json={"qty": 1},
                              headers={"Idempotency-Key": key}, timeout=30)
            assert r.status_code in (200, 503), r.text
            answers[key] = r
            return r.status_code == 200

        for key in keys:  # the worker takes a moment to start: 503 until it writes
            wait_until(functools.partial(answered, key), 60, f"{key} to be answered 200")
            assert answers[key].headers.get("Idempotent-Replayed") == "true"  # applied before
        assert sorted(ledger_keys(engine, namespace, "hot")) == sorted(keys)
        assert requests.get(url, timeout=10).json()["consumed"] == len(keys)
    finally:
        next(api, None)
        for process in (cut_off, back):
            if process is not None:
                process.stop()


def buyer(app: Application, namespace: str, n: int, sold: set[str]) -> None:
    """Buyer ``n``'s 60 tries at a unit of "hot", each key asked again after a 503 (outcome
    unknown, as API.md says) for up to a minute; the keys answered sold go into ``sold``."""
    for attempt in range(60):
        key = f"{n}-{attempt}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                outcome = app.bus.handle(commands.Decrement(namespace, "hot", 1, key))
            except errors.Unavailable:
                continue
            if outcome.ok:
                sold.add(key)  # set.add is atomic under the GIL
            break


def test_a_worker_killed_mid_sale_loses_nothing_in_sync_mode(sync_config: Config,
                                                             engine: Engine,
                                                             namespace: str) -> None:
    """Buyers ask again with the same key after a 503, as API.md tells them to."""
    app = bootstrap(sync_config)
    app.bus.handle(commands.InitInventory(namespace, "hot", 400))
    first = ledger_worker(sync_config)
    sold: set[str] = set()
    replacement: list[Process] = []
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(buyer, app, namespace, n, sold) for n in range(8)]
            wait_until(lambda: len(sold) > 100, 60, "the sale to be under way")
            first.stop(kill=True)  # SIGKILL, in the middle of whatever it was doing
            replacement.append(ledger_worker(sync_config))
            for future in futures:
                future.result(timeout=180)
        assert len(sold) == 400  # 480 buyers' attempts for 400 units: sold out, not over
        written = ledger_keys(engine, namespace, "hot")
        assert sorted(written) == sorted(sold)  # every acknowledged sale, once
        live = app.counter.read(namespace, "hot")
        assert live is not None and live.consumed == 400
    finally:
        first.stop()
        for process in replacement:
            process.stop()
        if app.engine is not None:
            app.engine.dispose()


def _consumers(app: Application) -> dict[str, int]:
    """Every ledger consumer of the outbox, with how many entries it holds unacknowledged."""
    outbox = app.outbox
    assert isinstance(outbox, RedisOutbox)
    held: dict[str, int] = {}
    for partition in range(outbox.partitions):
        stream = outbox.keys.outbox(partition)
        for consumer in outbox.client.xinfo_consumers(stream, GROUP):  # type: ignore[no-untyped-call]
            name = consumer["name"]
            name = name.decode() if isinstance(name, bytes) else name
            held[name] = held.get(name, 0) + int(consumer["pending"])
    return held


def _held_by_doomed(app: Application) -> int:
    return sum(n for name, n in _consumers(app).items() if name.startswith("doomed-"))


def test_a_killed_workers_sales_are_taken_over_within_the_wait(service_config: Config,
                                                               engine: Engine,
                                                               namespace: str) -> None:
    """With the default LEDGER_CLAIM_IDLE_MS and SYNC_WAIT_SECONDS, and no restart: another
    worker takes over the entries the killed one held within the wait (ADR 0021)."""
    defaults = Config()
    config = dataclasses.replace(
        service_config, durability="sync", sync_wait_seconds=defaults.sync_wait_seconds,
        ledger_claim_idle_ms=defaults.ledger_claim_idle_ms,
        redis_key_prefix=f"{service_config.redis_key_prefix}:t{uuid.uuid4().hex[:8]}")
    app = bootstrap(config)
    app.bus.handle(commands.InitInventory(namespace, "hot", 300))
    doomed = Process(allocation_command("ledger-worker", "--name", "doomed"),
                     service_env(config))
    doomed.start()
    other: list[Process] = []
    sold: set[str] = set()

    def caught_holding() -> bool:
        """Stopped (SIGSTOP) while it holds entries read and not yet acknowledged."""
        assert doomed.proc is not None
        doomed.proc.send_signal(signal.SIGSTOP)
        if _held_by_doomed(app):
            return True
        doomed.proc.send_signal(signal.SIGCONT)
        return False

    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(buyer, app, namespace, n, sold) for n in range(8)]
            wait_until(lambda: len(sold) > 20, 60, "the sale to be under way")
            wait_until(caught_holding, 30, "the doomed worker to hold entries")
            other.append(ledger_worker(config))
            wait_until(lambda: any(not name.startswith("doomed-") for name in _consumers(app)),
                       60, "the other worker to read the outbox")
            doomed.stop(kill=True)  # SIGKILL, holding them
            wait_until(lambda: _held_by_doomed(app) == 0, config.sync_wait_seconds,
                       "the other worker to take the killed one's entries over")
            for future in futures:
                future.result(timeout=120)
        assert len(sold) == 300  # 480 buyers' attempts for 300 units: sold out, not over
        assert sorted(ledger_keys(engine, namespace, "hot")) == sorted(sold)
    finally:
        doomed.stop()
        for process in other:
            process.stop()
        if app.engine is not None:
            app.engine.dispose()
