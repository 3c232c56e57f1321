"""The sweeper's loop (``allocation sweep``): it waits out outages and stops when told."""

from __future__ import annotations

import threading

import pytest
import redis

from allocation.domain import errors
from allocation.entrypoints import sweeper


class FlakyCounter:
    """Answers ``sweep`` from a script: an exception is raised, a number returned; once the
    script runs out it stops the loop."""

    def __init__(self, script: list[int | Exception], stopping: threading.Event) -> None:
        self.script, self.stopping = script, stopping
        self.calls = 0

    def sweep(self, most: int = 1000) -> int:
        self.calls += 1
        if not self.script:
            self.stopping.set()
            return 0
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweeper, "SWEEP_BACKOFF_MIN", 0.001)


def test_outages_and_redis_errors_are_waited_out(caplog: pytest.LogCaptureFixture) -> None:
    stopping = threading.Event()
    counter = FlakyCounter([errors.Unavailable("redis unavailable"), 3,
                            redis.ConnectionError("refused"), redis.ResponseError("WRONGTYPE"),
                            redis.exceptions.BusyLoadingError("LOADING"), 0], stopping)
    sweeper.sweep_loop(counter, 0.001, stopping)  # type: ignore[arg-type]
    assert counter.calls == 7  # every failure was followed by another pass
    warned = [r for r in caplog.records if "sweeper waiting for redis" in r.getMessage()]
    assert len(warned) == 4


def test_any_other_error_is_a_bug_and_raised() -> None:
    stopping = threading.Event()
    counter = FlakyCounter([1, ValueError("bug")], stopping)
    with pytest.raises(ValueError, match="bug"):
        sweeper.sweep_loop(counter, 0.001, stopping)  # type: ignore[arg-type]


def test_a_stop_ends_the_wait_between_passes() -> None:
    stopping = threading.Event()
    counter = FlakyCounter([0] * 1000, stopping)
    loop = threading.Thread(target=sweeper.sweep_loop, args=(counter, 3600, stopping))
    loop.start()
    stopping.set()
    loop.join(timeout=5)
    assert not loop.is_alive() and counter.calls <= 1
