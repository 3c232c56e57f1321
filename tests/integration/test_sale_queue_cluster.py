"""A sale's queue on a real Redis Cluster (three masters): its keys in one slot, its skus'
items in others, read apart (docs/adr/0033)."""

from __future__ import annotations

import uuid

from redis.crc import key_slot

from allocation.adapters.redis_client import connect
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_sale import RedisSaleQueue
from allocation.domain.outcome import Figures
from allocation.domain.sale import Sale
from tests.helpers.counter_contract import set_clock
from tests.helpers.redis_cluster import LocalCluster

T0 = 1_900_000_000_000


def test_a_sale_over_skus_on_several_masters(redis_cluster: LocalCluster) -> None:
    client = connect(redis_cluster.url)
    keys = KeySpace(f"c{uuid.uuid4().hex[:6]}", 16)
    counter = RedisCounter(client, keys)
    queue = RedisSaleQueue(client, keys)
    skus = tuple(f"s{n}" for n in range(12))
    assert len({key_slot(keys.item("ns", sku).encode()) for sku in skus}) > 3
    set_clock(counter, T0)
    for sku in skus:
        counter.load("ns", sku, Figures(1, 0, seq=0))
    sale = Sale("ns", "drop", skus, T0, admit_factor=1)
    assert len({key_slot(k.encode()) for k in keys.sale("ns", "drop")}) == 1
    queue.gate(sale, True)
    queue.put(sale)
    for n in range(20):
        assert queue.join("ns", "drop", f"b{n}").number == n
    advanced = queue.advance(sale)
    assert advanced.figures is not None
    assert (advanced.available, advanced.figures.serving) == (12, 12)
    inc = advanced.figures.incarnation
    assert inc and queue.join("ns", "drop", "b3").incarnation == inc
    assert queue.claim("ns", "drop", 3, 1, incarnation=inc) == "ok"
    outcome = counter.apply("ns", "s3", "decrement", 1, "k1", buyer="b3", sale="drop")
    assert outcome.ok
    refused = counter.apply("ns", "s4", "decrement", 1, "k2", buyer="x")
    assert refused.status == "pass_required"  # the gate, in the item's own slot
    queue.resolve("ns", "drop", 3, used=True, incarnation=inc)
    assert queue.pass_at("ns", "drop", 3, incarnation=inc)[0] == "used"
    figures = queue.advance(sale).figures
    assert figures is not None and (figures.used, figures.outstanding) == (1, 11)
    assert queue.now_ms("ns", "drop") == T0
    client.close()
