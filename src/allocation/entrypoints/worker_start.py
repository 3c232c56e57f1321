"""Readiness of a server with several worker processes: ready once every worker has loaded the
app, not as soon as the first one answers.

Clients that connect while the other workers still load (a load balancer's keep-alive pool, a
sale's first buyers) are all accepted by the one worker that is up, and a kept-alive connection
stays where it was accepted: the server then runs on one core until those connections close
(docs/adr on worker readiness has the measurement).

`allocation serve` names a directory and the number of workers; each worker leaves a marker
there once its app is built (granian starts accepting right after), and ``/readyz`` counts
them. Once every worker has started, the server stays ready: a worker that dies and is
replaced leaves its marker, so a respawn does not take a single-server deployment out of its
load balancer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DIR_ENV = "ALLOCATION_WORKERS_DIR"
COUNT_ENV = "ALLOCATION_WORKERS"


def announce(env: Mapping[str, str] | None = None) -> None:
    """Say that this worker process has built its app (a worker's factory calls it last)."""
    directory = (os.environ if env is None else env).get(DIR_ENV)
    if directory:
        (Path(directory) / f"worker-{os.getpid()}").touch()


class Startup:
    """Whether every worker of this server has started, as ``/readyz`` reports it."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        directory, count = env.get(DIR_ENV), env.get(COUNT_ENV)
        # None once every worker has started, or when there is nothing to wait for.
        self._dir = Path(directory) if directory and count else None
        self._expected = int(count or 0)

    def pending(self) -> str | None:
        """None once every worker has started (and from then on); else how many have."""
        if self._dir is None:
            return None
        started = sum(1 for _ in self._dir.glob("worker-*"))
        if started >= self._expected:
            self._dir = None
            return None
        return f"{started} of {self._expected} workers started"
