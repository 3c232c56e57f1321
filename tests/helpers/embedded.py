"""One embedded Redis (ADR 0028) per test process, each test on a key prefix of its own: the unit
tests run the production scripts, as the embedded mode does."""

from __future__ import annotations

import functools
import uuid

from allocation.adapters import embedded_redis
from allocation.adapters.redis_client import RedisClient
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace


@functools.cache
def embedded_client() -> RedisClient:
    """Started once, by the first test that asks (pytest's main thread: it ends with the
    process, as the child's parent-death signal needs)."""
    return embedded_redis.start()


def fresh_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def embedded_counter(idempotency_ttl: int = 48 * 3600, refusal_ttl: int = 300) -> RedisCounter:
    """A counter on the embedded Redis, in a key space of its own."""
    return RedisCounter(embedded_client(), KeySpace(fresh_prefix()), idempotency_ttl,
                        refusal_ttl=refusal_ttl)
