"""The production counter (``RedisCounter`` and its Lua scripts) on the embedded Redis: the same
contract suite and domain machine as the Python twin and the real Redis run (ADR 0028)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from allocation.adapters import embedded_redis
from allocation.adapters.counter import Counter
from allocation.adapters.outbox import Outbox
from allocation.adapters.redis_client import RedisClient
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_outbox import RedisOutbox
from allocation.bootstrap import bootstrap
from allocation.config import Config
from tests.helpers.counter_contract import (
    CounterContract,
    LimitContract,
    OutboxContract,
    RedisRecordTtls,
    ReservationContract,
    counter_machine,
    move_clock,
)
from tests.helpers.processes import wait_until


@functools.cache
def client() -> RedisClient:
    """One embedded Redis for this module's tests (each test keeps to its own namespace)."""
    return embedded_redis.start()


def make_counter() -> RedisCounter:
    return RedisCounter(client(), KeySpace(f"t{uuid.uuid4().hex[:6]}"))


class TestEmbeddedRedisCounter(RedisRecordTtls, ReservationContract, LimitContract,
                               CounterContract):
    def make_counter(self) -> Counter:
        return make_counter()

    def pass_time(self, ms: int) -> None:
        move_clock(self.counter, ms)

    def make_counter_with_ttls(self, ttl: int, refusal_ttl: int) -> Counter:
        return RedisCounter(client(), KeySpace(f"t{uuid.uuid4().hex[:6]}"), ttl,
                            refusal_ttl=refusal_ttl)


TestEmbeddedRedisCounterMatchesTheDomain = counter_machine(make_counter).TestCase


class TestEmbeddedRedisOutbox(OutboxContract):
    def make_pair(self) -> tuple[Counter, Outbox]:
        counter = make_counter()
        return counter, RedisOutbox(counter.client, counter.keys)


def test_it_is_the_redis_the_scripts_must_also_keep_to() -> None:
    """Production runs Redis 7.0, the embedded mode 6.2: this suite holds the scripts to 6.2."""
    assert str(client().info("server")["redis_version"]).startswith("6.2.")


def test_the_embedded_mode_runs_the_scripts_when_asked(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path}/a.db"
    lua = bootstrap(Config.from_env({"DATABASE_URL": database, "EMBEDDED_COUNTER": "lua"}))
    assert isinstance(lua.counter, RedisCounter) and lua.redis is lua.counter.client
    assert isinstance(lua.outbox, RedisOutbox)
    lua.counter.load("ns", "sku", 3, 0, 1)
    assert lua.counter.apply("ns", "sku", "decrement", 2, "k", record=True).ok
    assert [e.qty for p in range(lua.outbox.partitions)
            for e in lua.outbox.read(p, "w", 10)] == [2]
    python = bootstrap(Config.from_env({"DATABASE_URL": database}))  # the default, for now
    assert not isinstance(python.counter, RedisCounter) and python.redis is None
    with pytest.raises(ValueError, match="EMBEDDED_COUNTER"):
        Config.from_env({"EMBEDDED_COUNTER": "rust"})


def test_its_redis_ends_with_a_process_killed_outright() -> None:
    """No redis-server is left behind by a process that had no chance to stop it."""
    program = ("from allocation.adapters import embedded_redis; import sys, time; "
               "c = embedded_redis.start(); print(c.info('server')['process_id'], flush=True); "
               "time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)

    def ended() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{child}/stat") as stat:  # a zombie (init reaps it) has ended too
            return stat.read().split(") ", 1)[1].startswith("Z")

    wait_until(ended, 10, f"the embedded redis-server {child} to end with its parent")


def test_a_redis_that_cannot_start_is_a_clear_error_within_the_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded_redis, "server_binary", lambda: "/bin/false")
    with pytest.raises(embedded_redis.EmbeddedRedisError, match="did not start"):
        embedded_redis.start(timeout=5)
