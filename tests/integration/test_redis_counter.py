from __future__ import annotations

import uuid

import pytest
import redis

from allocation.adapters.counter import Counter
from allocation.adapters.outbox import Outbox
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_outbox import RedisOutbox
from allocation.domain import errors
from tests.counter_contract import CounterContract, OutboxContract, counter_machine


@pytest.fixture(autouse=True, scope="module")
def _redis(request: pytest.FixtureRequest, redis_url: str, key_space: KeySpace) -> None:
    # The contract and machine classes build counters without fixtures; hand them the settings.
    request.module.REDIS = (redis_url, key_space)


REDIS: tuple[str, KeySpace] = ("", KeySpace())


def make_redis_counter() -> RedisCounter:
    url, keys = REDIS
    return RedisCounter(redis.Redis.from_url(url), keys)


class TestRedisCounter(CounterContract):
    def make_counter(self) -> Counter:
        return make_redis_counter()

    def test_every_key_of_a_movement_shares_one_hash_slot(self) -> None:
        counter = make_redis_counter()
        keys = counter.keys
        for sku in ("a", "b", "sku-99"):
            tags = {k[k.index("{"):k.index("}") + 1]
                    for k in (keys.item("ns", sku), keys.idempotency("ns", sku, "k{x}"),
                              keys.outbox_of("ns", sku))}
            assert len(tags) == 1

    def test_scripts_are_reloaded_after_script_flush(self) -> None:
        counter = make_redis_counter()
        counter.client.script_flush()
        assert counter.apply(self.ns, "sku", "decrement", 1, "k").ok

    def test_an_unreachable_redis_is_unavailable(self) -> None:
        down = RedisCounter(redis.Redis(port=1, socket_connect_timeout=0.5), KeySpace())
        with pytest.raises(errors.Unavailable):
            down.apply("ns", "sku", "decrement", 1, "k")


class TestRedisOutbox(OutboxContract):
    def make_pair(self) -> tuple[Counter, Outbox]:
        url, keys = REDIS
        # Streams of its own, so other tests' entries are not in the way (still under the run's
        # prefix, so the run's clean-up removes them).
        own = KeySpace(f"{keys.prefix}:o{uuid.uuid4().hex[:8]}", keys.partitions)
        counter = RedisCounter(redis.Redis.from_url(url), own)
        return counter, RedisOutbox(counter.client, own)


TestRedisCounterMatchesTheDomain = counter_machine(make_redis_counter).TestCase
