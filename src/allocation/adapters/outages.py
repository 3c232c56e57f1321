"""Telling an outage (a dependency lost or not serving for now: wait and retry) from a failure a
retry would only repeat."""

from __future__ import annotations

import psycopg2
import redis
from redis import exceptions as redis_errors
from sqlalchemy import exc as sa_exc

from allocation.domain import errors

# Redis answers these while it cannot serve for now: loading its data, a replica after a
# failover, a cluster moving slots or without a majority (or, to the client, a slot no node
# serves until it learns the new master, and redirections that ran out), full (maxmemory with
# noeviction: refusals' keys expire, an operator adds memory).
_REDIS_PASSING = (redis.ConnectionError, redis.TimeoutError, redis_errors.BusyLoadingError,
                  redis_errors.ReadOnlyError, redis_errors.ClusterError,
                  redis_errors.SlotNotCoveredError,
                  redis_errors.TryAgainError, redis_errors.MasterDownError,
                  redis_errors.OutOfMemoryError)  # type: ignore[attr-defined]


def database_down(exc: BaseException | None) -> bool:
    """Is this the database being unreachable, rather than a statement failing?"""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.OperationalError):
        exc = exc.orig
    # psycopg2 gives server-side errors a SQLSTATE; connection failures have none (also when
    # raised by a raw cursor, as COPY's is). SQLite's OperationalError is a failing statement.
    return (isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)
            and getattr(exc, "pgcode", None) is None)


def is_outage(exc: BaseException) -> bool:
    if isinstance(exc, (errors.Unavailable, *_REDIS_PASSING)):
        return True
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # a wrapped cause counts too
        seen.add(id(exc))
        if database_down(exc) or isinstance(exc, _REDIS_PASSING):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False
