"""The one place a process starts its loops: each on a thread of its own, until SIGTERM (or
Ctrl-C). A loop is supervised inside (``supervised.supervise``); what to do if one ends anyway
is the process's policy: start it again, or stop the others and exit with its error so that the
process's own supervisor restarts it."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

WATCH_SECONDS = 0.5


@dataclass
class Loop:
    name: str
    run: Callable[[], None]
    stop: Callable[[], None]


def start_thread(name: str, run: Callable[[], None]) -> threading.Thread:
    """One loop on a daemon thread (a process that runs it beside its own work)."""
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


class ProcessLoops:
    """The loops of one process. ``if_one_ends``: "restart" it (a loop that should never end:
    only a BaseException gets out of a supervised loop), or "fail": stop them all and raise what
    ended it."""

    def __init__(self, loops: list[Loop], if_one_ends: Literal["restart", "fail"]) -> None:
        self.loops = loops
        self.if_one_ends = if_one_ends
        self.stopping = threading.Event()
        self.failed: list[BaseException] = []

    def stop(self, *_: Any) -> None:
        self.stopping.set()
        for loop in self.loops:
            loop.stop()

    def _guarded(self, loop: Loop) -> Callable[[], None]:
        def run() -> None:
            try:
                loop.run()
            except BaseException as exc:
                if self.if_one_ends == "restart":
                    logger.exception("%s failed", loop.name)  # the watch starts it again
                    return
                logger.exception("%s failed; stopping the others", loop.name)
                self.failed.append(exc)
                self.stop()
        return run

    def run(self) -> None:
        """Run every loop until SIGTERM (or Ctrl-C); raise the error that ended one, if the
        policy is to fail."""
        signal.signal(signal.SIGTERM, self.stop)
        threads = [start_thread(loop.name, self._guarded(loop)) for loop in self.loops]
        try:
            while not self.stopping.wait(WATCH_SECONDS):
                for i, loop in enumerate(self.loops):
                    if not threads[i].is_alive() and self.if_one_ends == "restart":
                        logger.error("%s's thread ended; starting it again", loop.name)
                        threads[i] = start_thread(loop.name, self._guarded(loop))
        except KeyboardInterrupt:
            self.stop()
        finally:
            for thread in threads:
                thread.join(timeout=None if self.if_one_ends == "fail" else 10)
        if self.failed:
            raise self.failed[0]
