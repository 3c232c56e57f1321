from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from allocation import views
from allocation.adapters import migrate
from allocation.adapters.ledger_rows import append
from allocation.bootstrap import Application
from allocation.domain import commands, errors
from allocation.domain.model import InventoryItem, LedgerEntry
from allocation.domain.outcome import Figures
from tests.helpers.ledger import ledger_rows, settle, stored


def test_migrations_build_the_schema_and_downgrade_cleanly(database_url: str) -> None:
    scratch = database_url.rsplit("/", 1)[0] + "/" + database_url.rsplit("/", 1)[1] + "_mig"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    name = scratch.rsplit("/", 1)[1]
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        migrate.upgrade(scratch)
        probe = create_engine(scratch)
        assert {"inventory_items", "inventory_ledger", "alembic_version"} <= set(
            inspect(probe).get_table_names())
        migrate.downgrade(scratch, "base")
        assert "inventory_items" not in inspect(probe).get_table_names()
        probe.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_movement_commits_the_item_and_its_ledger_row(
        app: Application, engine: Engine, namespace: str) -> None:
    app.bus.handle(commands.InitInventory(namespace, "sku", 10))
    app.bus.handle(commands.Decrement(namespace, "sku", 3, "k1"))
    app.bus.handle(commands.Refund(namespace, "sku", 1, "r1"))
    app.bus.handle(commands.AdjustTotal(namespace, "sku", 5, None))
    settle(app, namespace)
    assert stored(engine, namespace, "sku") == (15, 2, 4)
    assert ledger_rows(engine, namespace, "sku") == [
        (1, "init", 10, None), (2, "decrement", 3, "k1"), (3, "refund", 1, "r1"),
        (4, "adjust", 5, None)]
    entries = views.ledger(app, namespace, "sku", 1, 2)
    assert [(e.seq, e.total_after, e.available_after) for e in entries] == [(2, 10, 7),
                                                                            (3, 10, 8)]


@pytest.mark.parametrize("app", ["sync"], indirect=True)
def test_a_sync_movement_is_in_the_ledger_when_it_answers(
        app: Application, engine: Engine, namespace: str) -> None:
    app.bus.handle(commands.InitInventory(namespace, "sku", 10))
    for n in range(5):
        outcome = app.bus.handle(commands.Decrement(namespace, "sku", 1, f"k{n}"))
        assert outcome.ok and outcome.figures.seq == n + 2
        # No waiting: the answer came once the worker had committed it.
        assert ledger_rows(engine, namespace, "sku")[-1] == (outcome.figures.seq, "decrement", 1,
                                                             f"k{n}")
        assert stored(engine, namespace, "sku") == (10, n + 1, outcome.figures.seq)
    again = app.bus.handle(commands.Decrement(namespace, "sku", 1, "k0"))
    assert again.replayed and again.figures.seq == 2


def test_uncommitted_work_is_rolled_back(app: Application, engine: Engine,
                                         namespace: str) -> None:
    app.bus.handle(commands.InitInventory(namespace, "sku", 10))
    with app.uow_factory() as uow:
        item = uow.items.get(namespace, "sku", lock=True)
        assert item is not None
        item.decrement(5, "k")
    assert stored(engine, namespace, "sku") == (10, 0, 1)


def test_the_ledger_refuses_a_second_row_for_one_seq_but_keeps_a_key_used_again(
        engine: Engine, app: Application, namespace: str) -> None:
    """No movement is written twice (seq is unique); a key reused after its window is a new
    movement whose row keeps the key (API.md: the ledger never drops or changes a key)."""
    app.bus.handle(commands.InitInventory(namespace, "sku", 10))
    app.bus.handle(commands.Decrement(namespace, "sku", 1, "dup"))
    settle(app, namespace)
    row = ("INSERT INTO inventory_ledger (namespace, sku, seq, kind, qty, total_after, "
           "available_after, idempotency_key, created_at) VALUES "
           "(:ns, 'sku', :seq, 'decrement', 1, 10, 8, 'dup', now())")
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(row), {"ns": namespace, "seq": 2})
    with engine.begin() as conn:
        conn.execute(text(row), {"ns": namespace, "seq": 99})


def test_the_database_refuses_consumed_above_total(engine: Engine, app: Application,
                                                   namespace: str) -> None:
    app.bus.handle(commands.InitInventory(namespace, "sku", 1))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE inventory_items SET consumed = 2 WHERE namespace = :ns"),
                     {"ns": namespace})


def test_optimistic_version_guards_concurrent_unlocked_writes(
        app: Application, namespace: str) -> None:
    app.bus.handle(commands.InitInventory(namespace, "sku", 10))
    with app.uow_factory() as first, app.uow_factory() as second:
        a = first.items.get(namespace, "sku")
        b = second.items.get(namespace, "sku")
        assert isinstance(a, InventoryItem) and isinstance(b, InventoryItem)
        a.decrement(1, "a")
        b.decrement(1, "b")
        first.commit()
        with pytest.raises(Exception, match=r"(?i)stale|expected to update"):
            second.commit()


def test_refresh_rebuilds_redis_from_the_database(app: Application, namespace: str) -> None:
    app.bus.handle(commands.InitInventory(namespace, "sku", 10))
    app.bus.handle(commands.Decrement(namespace, "sku", 4, "k"))
    counter = app.counter
    counter.forget(namespace, "sku")
    # The read rebuilds it: from the outbox if its entry is not written yet, else the database.
    assert views.item(app, namespace, "sku").consumed == 4
    settle(app, namespace)
    counter.load(namespace, "sku", Figures(50, 0, seq=2))
    assert app.bus.handle(commands.Refresh(namespace, "sku")).available == 6
    live = counter.read(namespace, "sku")
    assert live is not None and live.available == 6


def test_refresh_all_rebuilds_a_namespace(app: Application, namespace: str) -> None:
    for n in range(25):
        app.bus.handle(commands.InitInventory(namespace, f"s{n:02}", n))
    counter = app.counter
    for n in range(25):
        counter.forget(namespace, f"s{n:02}")
    assert app.bus.handle(commands.RefreshAll(namespace, batch_size=10)).refreshed == 25
    live = counter.read_many(namespace, [f"s{n:02}" for n in range(25)])
    assert [None if o is None else o.total for o in live] == list(range(25))
    with pytest.raises(errors.NotFound):
        app.bus.handle(commands.Refresh(namespace, "missing"))


def test_a_page_larger_than_the_lock_table_is_refreshed(app: Application, engine: Engine,
                                                       namespace: str) -> None:
    """A page of 20,000 SKUs, locked a batch at a time: an advisory lock each, all at once,
    ran out of PostgreSQL's shared lock table (about 6,400 on a default server) and the
    refresh failed with "out of shared memory"."""
    items = 20_000
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO inventory_items (namespace, sku, total, consumed, held, last_seq, "
            "version) SELECT :ns, 's' || lpad(g::text, 5, '0'), 3, 1, 0, 1, 1 "
            "FROM generate_series(1, :n) g"), {"ns": namespace, "n": items})
    done = app.bus.handle(commands.RefreshAll(namespace, batch_size=items))
    assert (done.refreshed, done.after) == (items, None)
    live = app.counter.read_many(namespace, ["s00001", "s20000"])
    assert [None if o is None else o.available for o in live] == [2, 2]


def test_namespaces_refreshed_at_once_take_turns_for_the_lock_table(
        app: Application, engine: Engine, namespace: str) -> None:
    """Four namespaces refreshed at once, four batches of 1,000 each in flight: 16,000
    advisory locks, past a default server's lock table, if each refresh held its own four."""
    spaces, items = [f"{namespace}{n}" for n in range(4)], 8_000
    with engine.begin() as conn:
        for space in spaces:
            conn.execute(text(
                "INSERT INTO inventory_items (namespace, sku, total, consumed, held, last_seq, "
                "version) SELECT :ns, 's' || lpad(g::text, 5, '0'), 3, 1, 0, 1, 1 "
                "FROM generate_series(1, :n) g"), {"ns": space, "n": items})
    with ThreadPoolExecutor(len(spaces)) as pool:
        done = list(pool.map(lambda space: app.bus.handle(commands.RefreshAll(space)), spaces))
    assert [d.refreshed for d in done] == [items] * len(spaces)
    for space in spaces:
        live = app.counter.read_many(space, ["s00001", "s08000"])
        assert [None if o is None else o.available for o in live] == [2, 2]


def test_namespaces_stay_apart_in_rows_and_keys(app: Application, engine: Engine,
                                                namespace: str) -> None:
    other = namespace + "x"
    app.bus.handle(commands.InitInventory(namespace, "sku", 1))
    app.bus.handle(commands.InitInventory(other, "sku", 5))
    app.bus.handle(commands.Decrement(namespace, "sku", 1, "k"))
    settle(app, namespace)
    assert stored(engine, other, "sku") == (5, 0, 1)
    assert views.item(app, other, "sku").available == 5


def test_copy_writes_every_field_as_given(app: Application, engine: Engine,
                                          namespace: str) -> None:
    """COPY (more than 8 rows) with keys that CSV must quote and two moments interleaved."""
    app.bus.handle(commands.InitInventory(namespace, "sku", 100))
    settle(app, namespace)
    moments = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 1, 5, tzinfo=UTC)]
    keys = ['a,b', 'say "hi"', "two\nlines", " edge ", None, "k\\", "x" * 128, "é", None, "z"]
    entries = [LedgerEntry(namespace, "sku", 2 + n, "decrement", 1, 100, 99 - n, key,
                           moments[n % 2]) for n, key in enumerate(keys)]
    with engine.begin() as conn:
        append(conn, entries)
        rows = conn.execute(text(
            "SELECT namespace, sku, seq, kind, qty, total_after, available_after, "
            "idempotency_key, created_at FROM inventory_ledger WHERE namespace = :ns AND seq > 1 "
            "ORDER BY seq"), {"ns": namespace}).all()
        conn.rollback()  # the items row still says seq 1: leave the ledger as it was
    assert [LedgerEntry(*row) for row in rows] == entries
