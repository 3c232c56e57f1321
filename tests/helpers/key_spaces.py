"""A test's own key space: the run's services under a key prefix (and channels) of their own,
so that a test's writers, clock moves and counts meet nothing other tests left in the run's
shared one; its keys removed at the end."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import redis

from allocation.config import Config


def own_key_space(config: Config, redis_url: str, prefix: str) -> Iterator[Config]:
    """``config`` under ``prefix`` (keys, channels, command stream) while the generator runs."""
    yield dataclasses.replace(config, redis_key_prefix=prefix,
                              commands_channel=f"{prefix}:commands",
                              events_channel=f"{prefix}:events",
                              commands_stream=f"{prefix}:commands:stream")
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    while batch := list(itertools.islice(client.scan_iter(match=f"{prefix}:*", count=1000),
                                         1000)):
        client.unlink(*batch)
    client.close()
