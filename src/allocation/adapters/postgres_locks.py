"""Per-item locks across processes: PostgreSQL advisory locks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from sqlalchemy import text
from sqlalchemy.engine import Engine

from allocation.adapters.locks import ItemLocks
from allocation.adapters.sql_arrays import text_array


class PostgresItemLocks(ItemLocks):
    """Session advisory locks on a connection of their own: a process that dies while holding
    them drops its connection, and with it the locks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextlib.contextmanager
    def hold(self, namespace: str, skus: Sequence[str]) -> Iterator[None]:
        with self.engine.connect() as conn:
            # One round trip for a whole batch; the subquery's order is the locking order.
            conn.execute(text(
                "SELECT count(pg_advisory_lock(hashtextextended(k, 0))) "
                "FROM (SELECT :namespace || '/' || unnest(CAST(:skus AS text[])) AS k "
                "ORDER BY 1) AS ordered"),
                {"namespace": namespace, "skus": text_array(skus)})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock_all()"))
                conn.commit()
