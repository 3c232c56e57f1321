"""The ledger writers' own PostgreSQL connection: a batch written in two round trips keeps the
unit of work's promises (all or nothing, one row per key, locks released, outages survived)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from allocation.adapters import ledger_connection
from allocation.adapters.ledger_connection import LedgerConnection
from allocation.adapters.outbox import OutboxEntry
from allocation.bootstrap import Application
from allocation.domain import commands, errors
from allocation.service_layer.ledger_writer import write_batch
from allocation.service_layer.unit_of_work import Conflict, LedgerBatchUnitOfWork
from tests.helpers.ledger import ledger_rows, stored


@pytest.fixture
def connection(app: Application) -> Iterator[LedgerConnection]:
    assert app.engine is not None
    own = LedgerConnection(app.engine)
    yield own
    own.close()


def sales(namespace: str, sku: str, first_seq: int, count: int, total: int = 10_000,
          key: str = "k") -> list[OutboxEntry]:
    """``count`` decrements of one unit, from seq ``first_seq`` (the item's init is seq 1)."""
    return [OutboxEntry(f"0-{seq}", 0, namespace, sku, seq, "decrement", 1, f"{key}{seq}", total,
                        seq - 1) for seq in range(first_seq, first_seq + count)]


def write(connection: LedgerConnection, entries: list[OutboxEntry]) -> None:
    write_batch(entries, LedgerBatchUnitOfWork(connection))


@pytest.mark.parametrize("app", ["async"], indirect=True)
@pytest.mark.parametrize("count", [3, ledger_connection.INLINE_ROWS + 50],
                         ids=["inline", "copy"])
def test_a_batch_writes_the_items_figures_and_rows(
        app: Application, engine: Engine, namespace: str, connection: LedgerConnection,
        count: int) -> None:
    for sku in ("a", "b"):
        app.bus.handle(commands.InitInventory(namespace, sku, 10_000))
    write(connection, sales(namespace, "a", 2, count) + sales(namespace, "b", 2, 2))
    assert stored(engine, namespace, "a") == (10_000, count, count + 1)
    assert stored(engine, namespace, "b") == (10_000, 2, 3)
    rows = ledger_rows(engine, namespace, "a")
    assert [r[0] for r in rows] == list(range(1, count + 2))  # gap-less
    assert rows[-1] == (count + 1, "decrement", 1, f"k{count + 1}")
    with engine.connect() as conn:  # what the ORM's writers check their reads against
        assert conn.execute(text("SELECT version FROM inventory_items WHERE namespace = :ns "
                                 "AND sku = 'a'"), {"ns": namespace}).scalar_one() > 1


@pytest.mark.parametrize("app", ["async"], indirect=True)
def test_a_key_used_before_refuses_the_whole_batch(
        app: Application, engine: Engine, namespace: str, connection: LedgerConnection) -> None:
    app.bus.handle(commands.InitInventory(namespace, "a", 10_000))
    write(connection, sales(namespace, "a", 2, 1, key="same"))
    clash = sales(namespace, "a", 3, 2, key="other")
    clash[1] = clash[1]._replace(idempotency_key="same2")  # the key seq 2 holds
    with pytest.raises(Conflict):
        write(connection, clash)
    assert stored(engine, namespace, "a") == (10_000, 1, 2)  # nothing of it
    write(connection, sales(namespace, "a", 3, 2, key="new"))  # the connection serves on
    assert stored(engine, namespace, "a") == (10_000, 3, 4)


@pytest.mark.parametrize("app", ["async"], indirect=True)
def test_a_batch_that_fails_before_its_commit_releases_its_locks(
        app: Application, engine: Engine, namespace: str, connection: LedgerConnection) -> None:
    app.bus.handle(commands.InitInventory(namespace, "a", 10_000))
    with pytest.raises(RuntimeError), LedgerBatchUnitOfWork(connection) as uow:
        uow.lock_many([(namespace, "a")])
        raise RuntimeError("the writer failed between its round trips")
    with engine.connect() as conn:  # NOWAIT: an error, not a wait, if still locked
        conn.execute(text("SELECT 1 FROM inventory_items WHERE namespace = :ns FOR UPDATE "
                          "NOWAIT"), {"ns": namespace})
        conn.rollback()


@pytest.mark.parametrize("app", ["async"], indirect=True)
def test_a_lost_connection_is_an_outage_and_the_next_batch_reconnects(
        app: Application, engine: Engine, namespace: str, connection: LedgerConnection) -> None:
    app.bus.handle(commands.InitInventory(namespace, "a", 10_000))
    write(connection, sales(namespace, "a", 2, 1))
    pid = connection._pooled.dbapi_connection.get_backend_pid()
    with engine.connect() as conn:  # the server ends the writer's session, as a restart would
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        conn.commit()
    with pytest.raises(errors.Unavailable):
        write(connection, sales(namespace, "a", 3, 1))
    write(connection, sales(namespace, "a", 3, 1))
    assert stored(engine, namespace, "a") == (10_000, 2, 3)
    assert [r[0] for r in ledger_rows(engine, namespace, "a")] == [1, 2, 3]
