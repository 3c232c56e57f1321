"""The supervised loop every long-running loop runs on: the backoff it waits out failures with,
what it raises, and the health it reports. Its waits go through an Event whose clock the tests
hold (``Clock``): no test waits in real time."""

from __future__ import annotations

import signal
import threading

import pytest

from allocation.runtime import process
from allocation.runtime.process import Loop, ProcessLoops
from allocation.runtime.supervised import Backoff, LoopHealth, supervise


class Clock(threading.Event):
    """A stop Event whose waits are recorded and return at once; it stops the loop after
    ``most`` of them, so a loop that never stops fails its test rather than hanging it."""

    def __init__(self, most: int = 100) -> None:
        super().__init__()
        self.waits: list[float] = []
        self.most = most

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(0.0 if timeout is None else timeout)
        if len(self.waits) >= self.most:
            self.set()
        return self.is_set()


class Outage(Exception):
    pass


def test_failures_are_waited_out_doubling_up_to_the_cap_and_a_success_starts_over() -> None:
    clock = Clock()
    script: list[float | Exception] = [Outage(), Outage(), Outage(), Outage(), 0.0, Outage()]
    calls: list[int] = []

    def step() -> float:
        calls.append(1)
        if not script:
            clock.set()
            return 0.0
        answer = script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    seen: list[tuple[float, int]] = []
    supervise(step, clock, Backoff(0.1, 0.5), failed=lambda exc, delay, n: seen.append((delay, n)))
    assert seen == [(0.1, 1), (0.2, 2), (0.4, 3), (0.5, 4), (0.1, 1)]
    assert clock.waits == [0.1, 0.2, 0.4, 0.5, 0.1]  # the pause 0.0 waits for nothing
    assert len(calls) == 7


def test_a_step_says_how_long_to_wait_before_the_next() -> None:
    clock = Clock(most=3)
    supervise(lambda: 2.5, clock, Backoff(0.1, 5.0))
    assert clock.waits == [2.5, 2.5, 2.5]


def test_a_failure_not_waited_out_is_raised_at_once() -> None:
    clock = Clock()

    def step() -> float:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        supervise(step, clock, Backoff(0.1, 5.0), waited_out=lambda exc: isinstance(exc, Outage))
    assert clock.waits == []


def test_a_stopped_loop_runs_no_step() -> None:
    clock = Clock()
    clock.set()
    supervise(lambda: pytest.fail("a step ran after the stop"), clock, Backoff(0.1, 5.0))


def test_health_goes_down_on_a_failure_and_a_session_that_got_up_starts_the_backoff_over(
        ) -> None:
    clock = Clock()
    health = LoopHealth("test")
    sessions: list[bool] = [False, False, True, False]  # whether each got up before failing
    readiness: list[bool] = []

    def session() -> float:
        if not sessions:
            clock.set()
            return 0.0
        if sessions.pop(0):
            health.up()
            readiness.append(health.ready.is_set())
        raise Outage()

    supervise(session, clock, Backoff(0.1, 5.0), health=health)
    assert clock.waits == [0.1, 0.2, 0.1, 0.2]
    assert readiness == [True] and not health.ready.is_set()


def test_a_process_that_fails_a_loop_stops_the_others_and_raises() -> None:
    stopped = threading.Event()

    def waits() -> None:
        stopped.wait(30)

    def fails() -> None:
        raise RuntimeError("a loop's bug")

    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(RuntimeError, match="a loop's bug"):
            ProcessLoops([Loop("waits", waits, stopped.set), Loop("fails", fails, lambda: None)],
                         if_one_ends="fail").run()
    finally:
        signal.signal(signal.SIGTERM, before)
    assert stopped.is_set()


def test_a_process_that_restarts_its_loops_starts_an_ended_one_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "WATCH_SECONDS", 0.001)
    runs: list[int] = []

    def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise SystemExit("what a supervised loop does not catch")
        loops.stop()

    stopped = threading.Event()

    def deadline() -> None:  # a process that never restarts the loop fails, not hangs
        if not stopped.wait(10):
            loops.stop()

    loops = ProcessLoops([Loop("flaky", flaky, lambda: None),
                          Loop("deadline", deadline, stopped.set)], if_one_ends="restart")
    before = signal.getsignal(signal.SIGTERM)
    try:
        loops.run()
    finally:
        signal.signal(signal.SIGTERM, before)
    assert len(runs) == 2
