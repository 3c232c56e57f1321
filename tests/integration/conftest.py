from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.entrypoints import ledger_worker
from allocation.entrypoints.ledger_worker import LedgerWorker
from allocation.service_layer.messagebus import MessageBus


@pytest.fixture(params=["sync", "async"])
def bus(request: pytest.FixtureRequest, service_config: Config) -> Iterator[MessageBus]:
    bus = bootstrap(dataclasses.replace(service_config, durability=request.param))
    yield bus
    bus.dependencies["engine"].dispose()


def settle(bus: MessageBus) -> None:
    """Write everything the outbox holds (async durability); a no-op in sync mode."""
    worker = LedgerWorker(bus.dependencies["outbox"], bus.uow_factory)
    while worker.run_once():
        pass


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def stored(engine: Engine, namespace: str, sku: str) -> tuple[int, int, int]:
    """(total, consumed, last_seq) as the items table holds them."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT total, consumed, last_seq FROM inventory_items "
                                "WHERE namespace = :ns AND sku = :sku"),
                           {"ns": namespace, "sku": sku}).one()
    return row.total, row.consumed, row.last_seq


def ledger_rows(engine: Engine, namespace: str, sku: str) -> list[tuple[int, str, int, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT seq, kind, qty, idempotency_key FROM inventory_ledger "
            "WHERE namespace = :ns AND sku = :sku ORDER BY seq"),
            {"ns": namespace, "sku": sku})]


@contextlib.contextmanager
def ledger_threads(config: Config, count: int = 2) -> Iterator[None]:
    """Ledger workers as threads, as many as asked, while the block runs (async durability)."""
    workers = ([ledger_worker.from_bus(bootstrap(config)) for _ in range(count)]
               if config.durability == "async" else [])
    for worker in workers:
        worker.start_thread()
    try:
        yield
    finally:
        for worker in workers:
            worker.stop()
