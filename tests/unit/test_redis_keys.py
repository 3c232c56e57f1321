"""The key names a rebuild builds for many items at once are the ones each item's own
functions name (every other script finds the item by those)."""

from __future__ import annotations

from allocation.adapters.redis_keys import KeySpace


def test_the_bulk_names_are_each_items_names() -> None:
    keys = KeySpace("p", 16)
    skus = [f"sku-{n}" for n in range(64)]
    partitions = keys.partitions_of("ns", skus)
    assert partitions == [keys.partition("ns", sku) for sku in skus]
    assert len(set(partitions)) > 1
    for partition in set(partitions):
        mine = [sku for sku, p in zip(skus, partitions, strict=True) if p == partition]
        assert keys.items_in(partition, "ns", mine) == [keys.item("ns", s) for s in mine]
        assert keys.parts_in(partition, "ns", mine) == (
            [keys.buyers("ns", s) for s in mine] + [keys.holds("ns", s) for s in mine]
            + [keys.expiries("ns", s) for s in mine])
        assert keys.idempotency_in(partition, "ns", mine[0], "k") == keys.idempotency(
            "ns", mine[0], "k")


def test_an_items_keys_at_once_are_its_own_functions_names() -> None:
    """What the counter caches per item (``of_item``) is what each key's function names, in the
    order move.lua takes them; an idempotency key completes the start it gives."""
    keys = KeySpace("p", 16)
    for sku in ("a", "b.c", "sku-7"):
        step, idempotency = keys.of_item("ns", sku)
        assert step == (keys.item("ns", sku), keys.outbox_of("ns", sku),
                        keys.buyers("ns", sku), keys.holds("ns", sku),
                        keys.expiries("ns", sku), keys.tally_of("ns", sku))
        assert idempotency + "k:1" == keys.idempotency("ns", sku, "k:1")
