"""The ledger in tests: ledger workers run inline or as threads, and the database's view of an
item read directly (the items row and its ledger rows)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import text
from sqlalchemy.engine import Engine

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.entrypoints import ledger_worker
from allocation.entrypoints.ledger_worker import LedgerWorker
from tests.helpers.processes import wait_until


def drain(app: Application) -> None:
    """Write everything the outbox holds, in this thread (where no ledger worker runs)."""
    worker = LedgerWorker(app.outbox, app.uow_factory, app.ledger_progress)
    while worker.run_once():
        pass


def settle(app: Application, namespace: str, seconds: float = 30) -> None:
    """Wait until a running ledger worker has written (and acknowledged) every movement of
    ``namespace`` the outbox holds."""
    wait_until(lambda: not app.outbox.pending(namespace), seconds,
               f"the ledger worker to write the outbox of {namespace}")


@contextlib.contextmanager
def running_worker(app: Application) -> Iterator[LedgerWorker]:
    """A ledger worker thread of ``app``'s own while the block runs; stopped and joined after."""
    worker = ledger_worker.for_app(app)
    thread = worker.start_thread()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)


@contextlib.contextmanager
def ledger_threads(config: Config, count: int = 2) -> Iterator[None]:
    """Ledger workers as threads, each of an application of its own (as separate processes
    would be), as many as asked, while the block runs. Both durability modes need them: a sync
    movement answers once a worker has committed it."""
    apps = [bootstrap(config) for _ in range(count)]
    workers = [ledger_worker.for_app(app) for app in apps]
    threads = [worker.start_thread() for worker in workers]
    try:
        yield
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(timeout=30)
        for app in apps:
            if app.engine is not None:
                app.engine.dispose()


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
