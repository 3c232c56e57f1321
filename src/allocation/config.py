"""Settings from the environment. Reading them connects to nothing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    # Embedded defaults: an SQLite file and the in-process counter, one process, no services.
    database_url: str = "sqlite:///allocation.db"
    redis_url: str | None = None
    commands_channel: str = "inventory:commands"
    events_channel: str = "inventory:events"
    commands_stream: str = "inventory:commands:stream"  # the reliable command channel
    redis_key_prefix: str = "inv"
    partitions: int = 16
    idempotency_ttl_seconds: int = 48 * 3600
    db_pool_size: int = 20
    # async: acknowledge after the Redis step (the ledger is written behind by the worker);
    # sync: acknowledge after the ledger row is committed. One setting for the whole deployment.
    durability: str = "async"
    ledger_wait_seconds: float = 10.0  # how long a refresh waits for the worker to catch up
    ledger_lag_threshold_seconds: float = 30.0  # /readyz says "degraded" past this
    ledger_claim_idle_ms: int = 30_000  # entries held this long by a silent worker are taken

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        defaults = cls()
        return cls(
            database_url=env.get("DATABASE_URL") or defaults.database_url,
            redis_url=env.get("REDIS_URL") or None,
            commands_channel=env.get("COMMANDS_CHANNEL") or defaults.commands_channel,
            events_channel=env.get("EVENTS_CHANNEL") or defaults.events_channel,
            commands_stream=env.get("COMMANDS_STREAM") or defaults.commands_stream,
            redis_key_prefix=env.get("REDIS_KEY_PREFIX") or defaults.redis_key_prefix,
            partitions=int(env.get("REDIS_PARTITIONS") or defaults.partitions),
            idempotency_ttl_seconds=int(
                env.get("IDEMPOTENCY_TTL_SECONDS") or defaults.idempotency_ttl_seconds),
            db_pool_size=int(env.get("DB_POOL_SIZE") or defaults.db_pool_size),
            durability=durability(env.get("DURABILITY") or defaults.durability),
            ledger_wait_seconds=float(env.get("LEDGER_WAIT_SECONDS")
                                      or defaults.ledger_wait_seconds),
            ledger_lag_threshold_seconds=float(env.get("LEDGER_LAG_THRESHOLD_SECONDS")
                                               or defaults.ledger_lag_threshold_seconds),
            ledger_claim_idle_ms=int(env.get("LEDGER_CLAIM_IDLE_MS")
                                     or defaults.ledger_claim_idle_ms),
        )


def durability(value: str) -> str:
    if value not in ("async", "sync"):
        raise ValueError(f"DURABILITY must be 'async' or 'sync', not {value!r}")
    return value
