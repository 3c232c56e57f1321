"""The ledger writers' own PostgreSQL connection: a batch written in two round trips keeps the
unit of work's promises (all or nothing, one row per key, locks released, outages survived)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2.extensions
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from allocation.adapters import ledger_connection
from allocation.adapters.ledger_connection import LedgerConnection
from allocation.adapters.outbox import OutboxEntry
from allocation.adapters.sql_unit_of_work import LedgerBatchUnitOfWork
from allocation.bootstrap import Application
from allocation.domain import commands, errors
from allocation.service_layer.ledger_writer import write_batch
from tests.helpers.ledger import ledger_rows, stored

# Every test here runs one mode's application (the writer is the same in both).
pytestmark = pytest.mark.parametrize("app", ["async"], indirect=True)
# A batch's rows go inline with its COMMIT, or by COPY first above INLINE_ROWS.
BOTH_WAYS = pytest.mark.parametrize("count", [3, ledger_connection.INLINE_ROWS + 50],
                                    ids=["inline", "copy"])


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


@BOTH_WAYS
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
                                 "AND sku = 'a'"), {"ns": namespace}).scalar_one() == 2


@BOTH_WAYS
def test_a_key_used_again_after_its_window_keeps_its_key(
        app: Application, engine: Engine, namespace: str, connection: LedgerConnection,
        count: int) -> None:
    """Redis forgot the key (its window passed, or Redis lost it) and sold again: the ledger
    writes the second movement with its key, as it was asked."""
    app.bus.handle(commands.InitInventory(namespace, "a", 10_000))
    write(connection, sales(namespace, "a", 2, 1, key="same"))
    again = sales(namespace, "a", 3, count, key="other")
    again[-1] = again[-1]._replace(idempotency_key="same2")  # the key seq 2 holds
    write(connection, again)
    assert stored(engine, namespace, "a") == (10_000, count + 1, count + 2)
    rows = ledger_rows(engine, namespace, "a")
    assert [(r[0], r[3]) for r in rows if r[3] == "same2"] == [(2, "same2"), (count + 2, "same2")]


def test_the_orm_unit_of_work_also_keeps_a_key_used_again_in_a_copied_batch(
        app: Application, engine: Engine, namespace: str) -> None:
    """Its COPY (batches of more than 8) goes by a raw cursor, past SQLAlchemy's mapping."""
    app.bus.handle(commands.InitInventory(namespace, "a", 10_000))
    write_batch(sales(namespace, "a", 2, 1, key="same"), app.uow_factory())
    again = sales(namespace, "a", 3, 12, key="other")
    again[-1] = again[-1]._replace(idempotency_key="same2")
    write_batch(again, app.uow_factory())
    assert stored(engine, namespace, "a") == (10_000, 13, 14)
    assert [r[3] for r in ledger_rows(engine, namespace, "a")].count("same2") == 2


def test_it_writes_what_the_orm_unit_of_work_writes(
        app: Application, engine: Engine, namespace: str, connection: LedgerConnection) -> None:
    """The same entries through both units of work: the same rows, column for column."""
    def movements(ns: str) -> list[OutboxEntry]:
        expires = 1_900_000_000_000
        return [
            OutboxEntry("0-2", 0, ns, "a", 2, "hold", 2, 'k"\\ \'é', 100, 0, None, "ann", 2,
                        "r1", expires),
            OutboxEntry("0-3", 0, ns, "a", 3, "confirm", 2, None, 100, 2, None, "ann", 0, "r1"),
            OutboxEntry("0-4", 0, ns, "a", 4, "decrement", 1, "k4", 100, 3, None, "bob"),
            OutboxEntry("0-5", 0, ns, "a", 5, "refund", 1, None, 100, 2)]

    orm_ns = f"{namespace}o"
    for ns in (namespace, orm_ns):
        app.bus.handle(commands.InitInventory(ns, "a", 100, limit_per_buyer=5))
    write(connection, movements(namespace))
    write_batch(movements(orm_ns), app.uow_factory())
    columns = ("seq, kind, qty, total_after, available_after, idempotency_key, buyer, "
               "reservation_id, held_after, expires_at")
    with engine.connect() as conn:
        rows, items = [
            [conn.execute(text(f"SELECT {what} WHERE namespace = :ns ORDER BY 1"),
                          {"ns": ns}).all() for ns in (namespace, orm_ns)]
            for what in (f"{columns} FROM inventory_ledger",
                         "sku, total, consumed, held, last_seq, version, "
                         "limit_per_buyer FROM inventory_items")]
    assert rows[0] == rows[1] and len(rows[0]) == 5
    assert items[0] == items[1] and items[0][0][1:5] == (100, 2, 0, 5)


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


def test_closing_mid_batch_hands_the_pool_a_clean_connection(
        app: Application, engine: Engine, namespace: str) -> None:
    assert app.engine is not None
    app.bus.handle(commands.InitInventory(namespace, "a", 10_000))
    own = LedgerConnection(app.engine)
    before = app.engine.pool.checkedout()  # type: ignore[attr-defined]
    own.lock([(namespace, "a")])
    own.close()  # as a worker stopped between its round trips
    assert app.engine.pool.checkedout() == before  # type: ignore[attr-defined]
    with engine.connect() as conn:  # its locks went with its transaction
        conn.execute(text("SELECT 1 FROM inventory_items WHERE namespace = :ns FOR UPDATE "
                          "NOWAIT"), {"ns": namespace})
        conn.rollback()
    lent = app.engine.raw_connection()  # what the pool lends next is as it lends them
    try:
        assert lent.dbapi_connection.autocommit is False  # type: ignore[union-attr]
        assert lent.dbapi_connection.get_transaction_status() == (  # type: ignore[union-attr]
            psycopg2.extensions.TRANSACTION_STATUS_IDLE)
    finally:
        lent.close()


def terminate(engine: Engine, connection: LedgerConnection) -> None:
    """End the writer's session from the server's side, as a restart or an idle timeout does."""
    pid = connection._pooled.dbapi_connection.get_backend_pid()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        conn.commit()


def test_a_connection_lost_while_idle_is_replaced_at_once(
        app: Application, engine: Engine, namespace: str, connection: LedgerConnection) -> None:
    app.bus.handle(commands.InitInventory(namespace, "a", 10_000))
    write(connection, sales(namespace, "a", 2, 1))
    terminate(engine, connection)
    write(connection, sales(namespace, "a", 3, 1))  # no outage to wait out
    assert stored(engine, namespace, "a") == (10_000, 2, 3)


def test_a_connection_lost_mid_batch_is_an_outage_and_the_next_batch_reconnects(
        app: Application, engine: Engine, namespace: str, connection: LedgerConnection) -> None:
    app.bus.handle(commands.InitInventory(namespace, "a", 10_000))
    write(connection, sales(namespace, "a", 2, 1))
    with pytest.raises(errors.Unavailable), LedgerBatchUnitOfWork(connection) as uow:
        locked = uow.lock_many([(namespace, "a")])
        locked[(namespace, "a")].record_many(sales(namespace, "a", 3, 1))
        terminate(engine, connection)
        uow.commit()
    assert stored(engine, namespace, "a") == (10_000, 1, 2)  # nothing of it
    write(connection, sales(namespace, "a", 3, 1))
    assert stored(engine, namespace, "a") == (10_000, 2, 3)
    assert [r[0] for r in ledger_rows(engine, namespace, "a")] == [1, 2, 3]
