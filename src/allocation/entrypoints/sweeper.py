"""The sweeper's loop: it ends holds that are due on items nobody touches, and so publishes their
events. Correctness never waits on it: every step that touches an item ends that item's due
holds itself."""

from __future__ import annotations

import logging
import threading

import redis

from allocation.adapters.counter import Counter
from allocation.adapters.outages import is_outage
from allocation.runtime.supervised import Backoff, supervise

logger = logging.getLogger(__name__)

SWEEP_BACKOFF_MIN, SWEEP_BACKOFF_MAX = 0.1, 5.0


def sweep_loop(counter: Counter, interval: float, stopping: threading.Event,
               most: int = 1000) -> None:
    """Sweep every ``interval`` seconds until ``stopping``. An outage (Redis away, loading,
    failing over) is logged and waited out with a backoff: nothing depends on the sweeper
    being on time, only on its coming back. Any other error is a bug, and raised."""

    def sweep() -> float:
        logger.debug("swept: visited %d items", counter.sweep(most))
        return interval

    def failed(exc: BaseException, delay: float, _: int) -> None:
        cause = exc.__cause__ or exc
        logger.warning("sweeper waiting for redis: %s (%s); again in %.1fs",
                       type(cause).__name__, cause, delay)

    supervise(sweep, stopping, Backoff(SWEEP_BACKOFF_MIN, SWEEP_BACKOFF_MAX),
              waited_out=lambda exc: is_outage(exc) or isinstance(exc, redis.RedisError),
              failed=failed)
