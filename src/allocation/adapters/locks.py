"""Per-item locks that serialise rebuilds: PostgreSQL advisory locks, or in-process locks."""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Iterator, Sequence

from sqlalchemy import text
from sqlalchemy.engine import Engine


class ItemLocks(abc.ABC):
    @abc.abstractmethod
    def hold(self, namespace: str, skus: Sequence[str]) -> contextlib.AbstractContextManager[None]:
        """Hold the locks of these items (taken in one order) for the ``with`` block."""


class PostgresItemLocks(ItemLocks):
    """Session advisory locks on a connection of their own: a process that dies while holding
    them drops its connection, and with it the locks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextlib.contextmanager
    def hold(self, namespace: str, skus: Sequence[str]) -> Iterator[None]:
        keys = sorted(f"{namespace}/{sku}" for sku in skus)
        with self.engine.connect() as conn:
            # One round trip for a whole batch; the subquery's order is the locking order.
            conn.execute(text(
                "SELECT count(pg_advisory_lock(hashtextextended(k, 0))) "
                "FROM (SELECT unnest(CAST(:keys AS text[])) AS k ORDER BY 1) AS ordered"),
                {"keys": keys})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock_all()"))
                conn.commit()


class InProcessItemLocks(ItemLocks):
    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def hold(self, namespace: str, skus: Sequence[str]) -> Iterator[None]:
        with self._guard:
            locks = [self._locks.setdefault((namespace, sku), threading.Lock())
                     for sku in sorted(set(skus))]
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            yield
