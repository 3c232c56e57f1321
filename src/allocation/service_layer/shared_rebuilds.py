"""Refreshes of one item share rebuilds: while one rebuild runs, other refreshes of that item in
this process wait for it, and a refresh within ``window`` seconds of the last finished rebuild
answers the figures that rebuild left. Each rebuild fences the item for a moment, so a client
looping refresh on a hot item must not be able to fence it again and again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
Key = tuple[str, str]


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.failed = False


class SharedRebuilds:
    def __init__(self, window: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 remembered: int = 10_000) -> None:
        self.window = window
        self.clock = clock
        self.remembered = remembered
        self._lock = threading.Lock()
        self._flights: dict[Key, _Flight] = {}
        self._finished: dict[Key, float] = {}

    def run(self, key: Key, rebuild: Callable[[], T], wait_seconds: float) -> T | None:
        """``rebuild()``'s result, or None where a recent or concurrent rebuild stands for it
        (the caller then reads the figures it left)."""
        with self._lock:
            finished = self._finished.get(key)
            if finished is not None and self.clock() - finished < self.window:
                return None
            flight = self._flights.get(key)
            leading = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leading:
            if flight.done.wait(wait_seconds) and not flight.failed:
                return None
            return rebuild()  # the one it waited for failed: try for itself
        try:
            result = rebuild()
        except BaseException:
            flight.failed = True
            raise
        finally:
            with self._lock:
                del self._flights[key]
                if not flight.failed:
                    if len(self._finished) >= self.remembered:
                        self._finished.clear()
                    self._finished[key] = self.clock()
            flight.done.set()
        return result
