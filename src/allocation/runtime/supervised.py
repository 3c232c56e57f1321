"""One supervised loop: a step run again and again until a stop, outages waited out with a
capped exponential backoff, and the loop's health told to whoever asks (``/readyz``, a gauge).

Every long-running loop of the service is one of these: the ledger writers, the command stream,
pub/sub, the sweeper and the channels a process follows (ledger progress, the stock stream)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)


class Gauge(Protocol):
    def set(self, value: float) -> None: ...


class Backoff:
    """A capped exponential: ``first`` seconds, doubling up to ``most``; ``reset`` starts over.
    ``failures`` counts the failures since the last reset (1 for the first of a run)."""

    def __init__(self, first: float, most: float) -> None:
        self.first, self.most = first, most
        self.delay = first
        self.failures = 0

    def next(self) -> float:
        """The wait after one more failure."""
        delay = self.delay
        self.failures += 1
        self.delay = min(self.delay * 2, self.most)
        return delay

    def reset(self) -> None:
        self.delay = self.first
        self.failures = 0


class LoopHealth:
    """Whether one loop is connected and working: ``ready`` for ``/readyz``, an optional gauge
    for the metrics."""

    def __init__(self, name: str, gauge: Gauge | None = None) -> None:
        self.name = name
        self.ready = threading.Event()
        self._got_up = False
        self._gauge = gauge
        if gauge is not None:
            gauge.set(0)

    def up(self) -> None:
        self._got_up = True
        self.ready.set()
        if self._gauge is not None:
            self._gauge.set(1)

    def down(self) -> None:
        self.ready.clear()
        if self._gauge is not None:
            self._gauge.set(0)

    def recovered(self) -> bool:
        """Whether the loop got up since this was last asked (its backoff then starts over)."""
        recovered, self._got_up = self._got_up, False
        return recovered


def _every_failure(exc: BaseException) -> bool:
    return True


def supervise(step: Callable[[], float], stopping: threading.Event, backoff: Backoff, *,
              waited_out: Callable[[BaseException], bool] = _every_failure,
              failed: Callable[[BaseException, float, int], None] | None = None,
              health: LoopHealth | None = None) -> None:
    """Run ``step`` until ``stopping``; it answers how long to wait before the next step (0: at
    once). A step that returns starts the backoff over. A failure ``waited_out`` accepts is
    reported to ``failed`` (the exception, the wait before the next try, how many failed in a
    row), marks ``health`` down and is waited out; any other is raised. With ``health``, a
    step that got up (``health.up()``) before failing starts the backoff over too: a session
    that ran for a while is not retried as slowly as one that never connected."""
    while not stopping.is_set():
        try:
            pause = step()
        except Exception as exc:
            if not waited_out(exc):
                raise
            if health is not None:
                health.down()
                if health.recovered():
                    backoff.reset()
            delay = backoff.next()
            if failed is not None:
                failed(exc, delay, backoff.failures)
            stopping.wait(delay)
            continue
        backoff.reset()
        if pause > 0:
            stopping.wait(pause)
