"""What readiness and metrics report about the dependencies. Answers name a state, never an
error's text (it can carry hosts and ports); the details go to the log."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine

from allocation.adapters.counter import Counter
from allocation.adapters.outbox import Outbox
from allocation.adapters.redis_client import RedisClient
from allocation.adapters.redis_keys import KeySpace
from allocation.domain import errors

logger = logging.getLogger(__name__)
OK = "ok"
UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class HealthChecks:
    engine: Engine | None
    counter: Counter
    outbox: Outbox
    redis: RedisClient | None
    keys: KeySpace

    def database(self) -> str:
        return _state("database", self._ping_database)

    def redis_state(self) -> str:
        return _state("redis", self.counter.ping)

    def ledger(self, threshold_seconds: float) -> str:
        """"ok", or "degraded: ..." when the ledger lags (the service still serves)."""
        backlog = self.backlog()
        if backlog is None:
            return UNAVAILABLE
        entries, age = backlog
        if entries and age > threshold_seconds:
            return f"degraded: {entries} movements not yet in the ledger, oldest {age:.0f}s"
        return OK

    def backlog(self) -> tuple[int, float] | None:
        """(entries not yet in the ledger, age of the oldest), or None if unknown."""
        try:
            return self.outbox.backlog()
        except errors.Unavailable:
            return None

    def hold_tally(self) -> dict[tuple[str, str], int] | None:
        """The counter's hold tally, or None while it cannot be read (a cluster mid-failover
        answers errors that are not lost connections: /metrics still answers)."""
        try:
            return self.counter.hold_tally()
        except (errors.Unavailable, redis.RedisError) as exc:
            logger.warning("hold tally unavailable: %s", exc)
            return None

    def drift(self) -> dict[str, int] | None:
        """The last drift check's findings per namespace, where Redis keeps them."""
        if self.redis is None:
            return None
        with contextlib.suppress(redis.RedisError):
            stored = self.redis.hgetall(self.keys.drift())
            return {k.decode(): int(v) for k, v in stored.items()}
        return None

    def redis_memory(self) -> dict[str, int] | None:
        """Redis's memory in use and its limit (0: none), in bytes; a cluster's summed."""
        if self.redis is None:
            return None
        with contextlib.suppress(redis.RedisError):
            info: Any = self.redis.info("memory")
            nodes = info.values() if "used_memory" not in info else [info]
            return {"used": sum(int(n.get("used_memory", 0)) for n in nodes),
                    "max": sum(int(n.get("maxmemory", 0)) for n in nodes)}
        return None

    def _ping_database(self) -> None:
        if self.engine is not None:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))


def _state(part: str, probe: Callable[[], None]) -> str:
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure, by state only
        logger.warning("%s is unavailable: %s", part, exc)
        return UNAVAILABLE
    return OK
