"""Settings from the environment. Reading them connects to nothing; a value that cannot be read
raises ``ValueError`` naming its variable."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Config:
    # Embedded defaults: an SQLite file and a Redis the process starts, no services to run.
    database_url: str = "sqlite:///allocation.db"
    redis_url: str | None = None
    # A deployment's own names (``deployment_names``); these are the default deployment's.
    commands_channel: str = "inventory:commands"
    events_channel: str = "inventory:events"
    commands_stream: str = "inventory:commands:stream"  # the reliable command channel
    redis_key_prefix: str = "inv"
    partitions: int = 16
    idempotency_ttl_seconds: int = 48 * 3600
    # A refusal is remembered briefly: a sold-out item turned away thousands a second, and a
    # refusal's answer is cheap to give again.
    refusal_ttl_seconds: int = 300
    db_pool_size: int = 20
    # async: acknowledge after the Redis step (the ledger is written behind by the worker);
    # sync: acknowledge once the worker has committed the movement. One setting per deployment.
    durability: str = "async"
    sync_wait_seconds: float = 5.0  # past this a sync movement answers 503, outcome unknown
    ledger_wait_seconds: float = 10.0  # how long a refresh waits for the worker to catch up
    ledger_lag_threshold_seconds: float = 30.0  # /readyz says "degraded" past this
    ledger_claim_idle_ms: int = 3_000  # entries held this long by a silent worker are taken
    # A request's body must arrive whole within this; waiting for it takes no request thread.
    body_timeout_seconds: float = 10.0
    # "required": /v1/ needs a bearer token; "off" only suits the embedded mode on one machine.
    auth: str = "off"
    # Hoarding bounds (0: none). A buyer rarely needs more than a cart or two open at once; a
    # token is a shop's backend, holding every cart of its buyers: size it from the shop's
    # peak reservations a second times their ttl_seconds (the per-token cap is per process).
    max_open_reservations_per_buyer: int = 10
    max_open_reservations_per_token: int = 10_000
    # Stock streams one token may hold open in a server process (API.md, "Stock stream").
    streams_per_token: int = 1000
    # Signs a sale's tickets and passes: keys separated by spaces, newest last (rotation:
    # adapters/sale_signing.py). Servers that share it accept each other's.
    sale_secret: str | None = field(default=None, repr=False)

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        defaults = cls()
        with_services = bool(env.get("DATABASE_URL") or env.get("REDIS_URL"))
        channel, events, stream = deployment_names(
            env.get("REDIS_KEY_PREFIX") or defaults.redis_key_prefix, env.get("REDIS_URL"))
        return cls(
            database_url=env.get("DATABASE_URL") or defaults.database_url,
            redis_url=redis_url(env.get("REDIS_URL") or None),
            commands_channel=env.get("COMMANDS_CHANNEL") or channel,
            events_channel=env.get("EVENTS_CHANNEL") or events,
            commands_stream=env.get("COMMANDS_STREAM") or stream,
            redis_key_prefix=env.get("REDIS_KEY_PREFIX") or defaults.redis_key_prefix,
            partitions=number(env, "REDIS_PARTITIONS", defaults.partitions),
            idempotency_ttl_seconds=number(env, "IDEMPOTENCY_TTL_SECONDS",
                                           defaults.idempotency_ttl_seconds),
            refusal_ttl_seconds=number(env, "REFUSAL_TTL_SECONDS", defaults.refusal_ttl_seconds),
            db_pool_size=number(env, "DB_POOL_SIZE", defaults.db_pool_size),
            durability=durability(env.get("DURABILITY") or defaults.durability),
            sync_wait_seconds=number(env, "SYNC_WAIT_SECONDS", defaults.sync_wait_seconds),
            ledger_wait_seconds=number(env, "LEDGER_WAIT_SECONDS", defaults.ledger_wait_seconds),
            ledger_lag_threshold_seconds=number(env, "LEDGER_LAG_THRESHOLD_SECONDS",
                                                defaults.ledger_lag_threshold_seconds),
            ledger_claim_idle_ms=number(env, "LEDGER_CLAIM_IDLE_MS", defaults.ledger_claim_idle_ms),
            body_timeout_seconds=number(env, "BODY_TIMEOUT_SECONDS", defaults.body_timeout_seconds),
            max_open_reservations_per_buyer=number(env, "MAX_OPEN_RESERVATIONS_PER_BUYER",
                                                   defaults.max_open_reservations_per_buyer, 0),
            max_open_reservations_per_token=number(env, "MAX_OPEN_RESERVATIONS_PER_TOKEN",
                                                   defaults.max_open_reservations_per_token, 0),
            auth=choice("AUTH", env.get("AUTH") or ("required" if with_services else "off"),
                        ("required", "off")),
            streams_per_token=positive("STREAMS_PER_TOKEN", env.get("STREAMS_PER_TOKEN")
                                       or str(defaults.streams_per_token)),
            sale_secret=env.get("SALE_SECRET") or None,
        )


def deployment_names(prefix: str, redis_url: str | None) -> tuple[str, str, str]:
    """The commands channel, events channel and command stream of the deployment with this key
    prefix on this Redis database. Channels belong to the server, not to a database number,
    so theirs carry both, joined by ``@`` (the number, all digits, comes last: no other prefix
    and number spell the same name); the stream is a key, under the deployment's prefix. The
    default deployment (``inv`` on db 0) keeps the plain ``inventory:*`` names, so publishers
    and the entries waiting in its stream need no change."""
    db = redis_db(redis_url)
    if (prefix, db) == (Config.redis_key_prefix, 0):
        return Config.commands_channel, Config.events_channel, Config.commands_stream
    own = f"inventory:{prefix}@{db}"
    return f"{own}:commands", f"{own}:events", f"{prefix}:commands:stream"


def redis_db(url: str | None) -> int:
    """The database number a Redis URL selects, as redis-py reads it (``?db=`` before the
    path); 0 for a cluster, which has only that one."""
    if not url:
        return 0
    parts = urlsplit(url)
    if parts.scheme.endswith("+cluster"):
        return 0
    query = parse_qs(parts.query).get("db")
    path = parts.path.strip("/") if parts.scheme in ("redis", "rediss") else ""
    number = query[0] if query else path
    return int(number) if number.isdigit() else 0


# The schemes redis-py reads, and the cluster's (adapters/redis_client.CLUSTER_SCHEMES).
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def redis_url(value: str | None) -> str | None:
    if value is not None and urlsplit(value).scheme not in REDIS_SCHEMES:
        raise ValueError(f"REDIS_URL must be a URL of scheme "
                         f"{', '.join(s + '://' for s in REDIS_SCHEMES)}, not {value!r}")
    return value


N = TypeVar("N", int, float)


def number(env: Mapping[str, str], name: str, default: N, least: N | None = None) -> N:
    """``name``'s value as ``default``'s type (the default where unset or empty), finite and
    at least ``least`` (for a count or a time: above 0 where ``least`` is None). A TTL of 0
    failed every movement, 0 partitions divided by zero on every request, a negative body
    timeout timed every body out."""
    value = env.get(name)
    if not value:
        return default
    kind = "an integer" if isinstance(default, int) else "a number"
    try:
        read = type(default)(value)
    except ValueError:
        raise ValueError(f"{name} must be {kind}, not {value!r}") from None
    if least is None:
        if not (math.isfinite(read) and read > 0):
            raise ValueError(f"{name} must be {kind} above 0, not {value!r}")
    elif not (math.isfinite(read) and read >= least):
        raise ValueError(f"{name} must be {kind} of at least {least}, not {value!r}")
    return read


def durability(value: str) -> str:
    return choice("DURABILITY", value, ("async", "sync"))


def choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def positive(name: str, value: str) -> int:
    if not (value.isascii() and value.isdecimal()) or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return int(value)
