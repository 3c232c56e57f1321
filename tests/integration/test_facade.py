"""The seed library's interface, rebuilt: its meaning kept, its measured defects gone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import scoped_session, sessionmaker

from allocation import InventoryManager
from allocation.adapters.redis_keys import KeySpace
from allocation.domain import errors


@pytest.fixture
def manager(database_url: str, redis_url: str, key_space: KeySpace,
            namespace: str) -> Iterator[InventoryManager]:
    engine = create_engine(database_url)
    db_session = scoped_session(sessionmaker(bind=engine))
    red = redis.Redis.from_url(redis_url, decode_responses=True)  # as the seed's demo has it
    mgr = InventoryManager(namespace, db_session, None, red, key_prefix=key_space.prefix)
    yield mgr
    db_session.remove()
    mgr.engine.dispose()
    engine.dispose()


def test_the_seed_demo_runs_with_its_meaning(manager: InventoryManager) -> None:
    assert manager.ping()
    manager.create_table()
    assert manager.table_initialized()
    for item_id, num in {"1": 10, "2": 20, "3": 30}.items():
        manager.inventory_init(item_id, num)
    manager.modification_adjust(item_id="1", delta=100)
    assert manager.get(item_id="1") == {"total": 110, "consumed": 0, "held": 0, "available": 110}
    assert manager.usage_decr(item_id="1", num=1)
    assert manager.usage_decr(item_id="1", num=3)
    assert not manager.usage_decr(item_id="1", num=999999999)
    assert manager.get(item_id="1") == {"total": 110, "consumed": 4, "held": 0, "available": 106}
    # The seed let this refund 1000 of 4 sold; here it is refused and nothing changes.
    assert not manager.usage_incr(item_id="1", num=1000)
    assert manager.usage_incr(item_id="1", num=4)
    assert manager.refresh(item_id="1") == {"total": 110, "consumed": 0, "held": 0,
                                            "available": 110}
    assert manager.refresh_all() == 3


def test_an_unknown_item_is_none_not_zero_stock(manager: InventoryManager) -> None:
    assert manager.get("never-made") is None
    with pytest.raises(errors.NotFound):
        manager.usage_decr("never-made", 1)


def test_a_refused_single_unit_decrement_leaves_the_counter_alone(
        manager: InventoryManager) -> None:
    manager.inventory_init("one", 1)
    assert manager.usage_decr("one", 1)
    for _ in range(3):
        assert not manager.usage_decr("one", 1)
    assert manager.get("one") == {"total": 1, "consumed": 1, "held": 0, "available": 0}


def test_concurrent_inits_do_not_double_the_stock(manager: InventoryManager) -> None:
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []

    def init() -> None:
        barrier.wait()
        try:
            manager.inventory_init("race", 10)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=init) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert manager.get("race") == {"total": 10, "consumed": 0, "held": 0, "available": 10}
    assert manager.refresh("race")["total"] == 10


def test_bad_item_ids_are_refused(manager: InventoryManager) -> None:
    with pytest.raises(ValueError, match="sku"):
        manager.inventory_init("no spaces", 1)


def test_a_database_error_does_not_poison_the_callers_session(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'caller.db'}")
    caller = scoped_session(sessionmaker(bind=engine))
    caller.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY)"))
    caller.commit()
    mgr = InventoryManager("shop", caller)  # its tables were never created
    with pytest.raises(OperationalError):
        mgr.inventory_init("x", 1)
    caller.execute(text("INSERT INTO orders (id) VALUES (1)"))
    caller.commit()
    assert caller.execute(text("SELECT count(*) FROM orders")).scalar_one() == 1
    mgr.create_table()
    assert mgr.inventory_init("x", 1)["available"] == 1
    caller.remove()
    engine.dispose()


def test_a_sale_through_the_facade_gates_its_skus(manager: InventoryManager) -> None:
    manager.inventory_init("tee", 2)
    made = manager.sale_create("drop", ["tee"], admit_factor=1)
    assert (made["state"], made["available"]) == ("open", 2)
    ticket = manager.sale_join("drop", "ann")
    assert manager.sale_join("drop", "ann")["ticket"] == ticket["ticket"]
    with pytest.raises(errors.PassRequired):
        manager.usage_decr("tee", 1)
    assert manager.get("tee")["available"] == 2  # type: ignore[index]
    assert manager.sale_close("drop")["state"] == "closed"
    assert manager.usage_decr("tee", 1)  # no longer gated
