"""What readiness and metrics report about the dependencies. Answers name a state, never an
error's text (it can carry hosts and ports); the details go to the log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
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
# The database answers but lacks the schema this code expects: every /v1 request would fail.
UNMIGRATED = "unmigrated"
# A readiness poll answers within this: an orchestrator's probe (1-2 s) must never time out on
# a dependency that does not answer (a partition drops packets: nothing fails, all waits).
READY_DEADLINE_SECONDS = 0.4


class Probe:
    """One dependency's check, at most one in flight per process, on a thread of its own.

    Concurrent polls share the check under way (and one finished within ``fresh_for``, where
    that is set); a poll waits at most its deadline for it, then reports the part unavailable. A
    check that hangs (a partition) thus holds one thread, never a request thread, and never a
    poll past its deadline."""

    def __init__(self, name: str, check: Callable[[], str | None],
                 fresh_for: float = 0.0) -> None:
        self.name = name
        self.check = check
        self.fresh_for = fresh_for
        self._lock = threading.Lock()
        self._current: Future[str] | None = None
        self._finished_at = 0.0

    def future(self) -> Future[str]:
        with self._lock:
            current = self._current
            if current is None or (current.done()
                                   and time.monotonic() - self._finished_at >= self.fresh_for):
                current = self._current = Future()
                threading.Thread(target=self._run, args=(current,), daemon=True,
                                 name=f"probe-{self.name}").start()
            return current

    def state(self, deadline: float = READY_DEADLINE_SECONDS) -> str:
        """The check's answer, waiting at most ``deadline`` (from a request thread)."""
        return _result(self.future(), deadline)

    async def state_async(self, deadline: float = READY_DEADLINE_SECONDS) -> str:
        """The same, awaited on an event loop (no thread waits)."""
        try:
            async with asyncio.timeout(deadline):
                return await asyncio.shield(asyncio.wrap_future(self.future()))
        except TimeoutError:
            return UNAVAILABLE

    def _run(self, future: Future[str]) -> None:
        state = _state(self.name, self.check)
        self._finished_at = time.monotonic()
        future.set_result(state)


@dataclass(frozen=True)
class HealthChecks:
    engine: Engine | None
    counter: Counter
    outbox: Outbox
    redis: RedisClient | None
    keys: KeySpace
    probes: dict[str, Probe] = field(default_factory=dict, compare=False)
    # The schema, once found current, stays so (migrations only move it on): later polls ping
    # and no more. Until then the warning is logged once, not at every poll of every worker.
    _schema: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.probes.update(database=Probe("database", self._ping_database),
                           redis=Probe("redis", lambda: self.counter.ping()))

    def warm_up(self) -> None:
        """Start the first database check now (a server process, as it starts): its first
        run imports Alembic to read the schema's revision, longer than a poll waits."""
        self.probes["database"].future()

    def readiness(self, lag_threshold: float) -> dict[str, str]:
        """The parts /readyz reports, each within the readiness deadline (a request thread
        waits at most that)."""
        futures = {name: probe.future() for name, probe
                   in self._readiness_probes(lag_threshold).items()}
        until = time.monotonic() + READY_DEADLINE_SECONDS
        return self._parts({name: _result(future, until - time.monotonic())
                            for name, future in futures.items()})

    async def readiness_async(self, lag_threshold: float) -> dict[str, str]:
        """The same from an event loop: the parts are checked at once, within one deadline."""
        probes = self._readiness_probes(lag_threshold)
        states = await asyncio.gather(*(p.state_async() for p in probes.values()))
        return self._parts(dict(zip(probes, states, strict=True)))

    def _readiness_probes(self, lag_threshold: float) -> dict[str, Probe]:
        if "ledger" not in self.probes:
            self.probes["ledger"] = Probe("ledger", lambda: self.ledger(lag_threshold))
        return {name: self.probes[name] for name in ("database", "redis", "ledger")}

    @staticmethod
    def _parts(states: dict[str, str]) -> dict[str, str]:
        ledger = states.pop("ledger")
        if states["redis"] == OK and ledger != OK:
            # Named only when it lags: the healthy body stays as API.md gives it.
            states["ledger"] = ledger
        return states

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

    def record_drift(self, namespace: str, items: int) -> None:
        """Keep a drift check's findings where ``drift`` reads them."""
        if self.redis is not None:
            self.redis.hset(self.keys.drift(), namespace, items)

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

    def _ping_database(self) -> str | None:
        # Imported here: Alembic would double the start-up of every command that bootstraps.
        from allocation.adapters import migrate

        if self.engine is not None:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                if self._schema.get("state") == OK:
                    return None
                if migrate.is_current(conn):
                    self._schema["state"] = OK
                    return None
                if self._schema.get("state") != UNMIGRATED:
                    logger.warning("the database's schema is missing or behind this release's: "
                                   "run `allocation migrate` (with this DATABASE_URL)")
                self._schema["state"] = UNMIGRATED
                return UNMIGRATED
        return None


def _result(future: Future[str], timeout: float) -> str:
    try:
        return future.result(timeout=max(0.0, timeout))
    except FutureTimeout:
        return UNAVAILABLE


def _state(part: str, probe: Callable[[], str | None]) -> str:
    try:
        found = probe()
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure, by state only
        logger.warning("%s is unavailable: %s", part, exc)
        return UNAVAILABLE
    return OK if found is None else found
