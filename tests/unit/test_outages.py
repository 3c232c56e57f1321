"""What the ledger worker waits out (an outage) and what it lets end the process (a bug)."""

from __future__ import annotations

import psycopg2
import pytest
import redis
from redis import exceptions as redis_errors
from sqlalchemy import exc as sa_exc

from allocation.adapters.outages import database_down, is_outage
from allocation.domain import errors


def wrapped(orig: BaseException) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("COMMIT", {}, orig)


class ServerError(psycopg2.OperationalError):
    pgcode = "57014"  # a statement cancelled: the server answered


@pytest.mark.parametrize("exc", [
    errors.Unavailable("database unavailable"),
    redis.ConnectionError("reset"), redis.TimeoutError("slow"),
    redis_errors.BusyLoadingError("LOADING"), redis_errors.ReadOnlyError("READONLY"),
    redis_errors.ClusterDownError("CLUSTERDOWN"), redis_errors.TryAgainError("TRYAGAIN"),
    redis_errors.ClusterError("TTL exhausted."),  # redirections ran out mid-failover
    redis_errors.SlotNotCoveredError("no node serves slot 866"),  # until the client relearns
    redis_errors.OutOfMemoryError("OOM command not allowed"),  # type: ignore[attr-defined]
    psycopg2.OperationalError("server closed the connection unexpectedly"),
    psycopg2.InterfaceError("connection already closed"),
    wrapped(psycopg2.OperationalError("could not connect")),
], ids=type)
def test_losing_a_dependency_is_an_outage(exc: BaseException) -> None:
    assert is_outage(exc)


def test_a_cause_counts_as_the_error_itself() -> None:
    try:
        try:
            raise psycopg2.OperationalError("SSL connection has been closed unexpectedly")
        except psycopg2.Error as inner:
            raise RuntimeError("while writing a batch") from inner
    except RuntimeError as outer:
        assert is_outage(outer)


@pytest.mark.parametrize("exc", [
    ValueError("a bug"), KeyError("x"), redis.ResponseError("WRONGTYPE"),
    ServerError("canceling statement"), wrapped(ServerError("canceling statement")),
    sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
], ids=type)
def test_a_failure_a_retry_would_repeat_is_not(exc: BaseException) -> None:
    assert not is_outage(exc)
    assert not database_down(exc)
