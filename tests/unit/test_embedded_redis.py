"""The production counter (``RedisCounter`` and its Lua scripts) on the embedded Redis: the same
contract suite and domain machine as the real Redis runs (ADR 0028), and the clock the tests
stop and move for the scripts (ADR 0031)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from allocation.adapters import embedded_redis
from allocation.adapters.counter import Counter
from allocation.adapters.outbox import Outbox
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_outbox import RedisOutbox
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain.outcome import Figures
from tests.helpers.counter_contract import (
    CounterContract,
    LimitContract,
    OutboxContract,
    RedisRecordTtls,
    ReservationContract,
    counter_machine,
    move_clock,
    redis_time_ms,
    set_clock,
)
from tests.helpers.embedded import embedded_client, embedded_counter
from tests.helpers.processes import wait_until


def make_counter() -> RedisCounter:
    return embedded_counter()


class TestEmbeddedRedisCounter(RedisRecordTtls, ReservationContract, LimitContract,
                               CounterContract):
    def make_counter(self) -> Counter:
        return make_counter()

    def pass_time(self, ms: int) -> None:
        move_clock(self.counter, ms)

    def make_counter_with_ttls(self, ttl: int, refusal_ttl: int) -> Counter:
        return embedded_counter(ttl, refusal_ttl)


TestEmbeddedRedisCounterMatchesTheDomain = counter_machine(make_counter).TestCase


class TestEmbeddedRedisOutbox(OutboxContract):
    def make_pair(self) -> tuple[Counter, Outbox]:
        counter = make_counter()
        return counter, RedisOutbox(counter.client, counter.keys)


def test_it_is_the_redis_the_scripts_must_also_keep_to() -> None:
    """Production runs Redis 7.0, the embedded mode 6.2: this suite holds the scripts to 6.2."""
    assert str(embedded_client().info("server")["redis_version"]).startswith("6.2.")


def test_the_embedded_mode_runs_the_scripts(tmp_path: Path) -> None:
    app = bootstrap(Config.from_env({"DATABASE_URL": f"sqlite:///{tmp_path}/a.db"}))
    assert isinstance(app.counter, RedisCounter) and app.redis is app.counter.client
    assert isinstance(app.outbox, RedisOutbox)
    app.counter.load("ns", "sku", Figures(3, 0, seq=1))
    assert app.counter.apply("ns", "sku", "decrement", 2, "k", record=True).ok
    assert [e.qty for p in range(app.outbox.partitions)
            for e in app.outbox.read(p, "w", 10)] == [2]


def test_the_scripts_read_redis_s_clock_unless_a_test_stops_it() -> None:
    counter = make_counter()
    counter.load("ns", "sku", Figures(10, 0, seq=1))
    before = redis_time_ms(counter)
    held = counter.reservation_step("hold", "ns", counter.reservation_id("ns", "a"),
                                    [("sku", 1)], ttl_ms=1000, fingerprint="f")
    assert before <= held.created_ms <= redis_time_ms(counter)
    moment = held.created_ms + 10_000
    set_clock(counter, moment)
    stopped = counter.reservation_step("hold", "ns", counter.reservation_id("ns", "b"),
                                       [("sku", 1)], ttl_ms=1000, fingerprint="f")
    assert (stopped.created_ms, stopped.expires_ms) == (moment, moment + 1000)
    assert counter.read("ns", "sku") == Figures(10, 0, seq=4, held=1)  # a expired
    move_clock(counter, 1000)  # b's expiry, at once
    assert counter.read("ns", "sku") == Figures(10, 0, seq=5, held=0)
    assert counter.hold_tally()[("ns", "holds:expire")] == 2


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
