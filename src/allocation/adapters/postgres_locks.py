"""Per-item locks across processes: PostgreSQL advisory locks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine

from allocation.adapters.locks import ItemLocks
from allocation.adapters.sql_arrays import text_array
from allocation.runtime.supervised import Backoff

# Batches (holds of more than one item) that hold their locks at once, across every process on
# the database. A batch holds up to 1,000 locks, and a default server's shared lock table about
# 6,400 for all its sessions: refreshes of several namespaces at once take turns (ADR 0045).
BATCH_SLOTS = 4
# The slots' two-key advisory space (an item's lock is one bigint key: another space).
_SLOTS = 0x616C6C6F
# The first free slot, if any: the filter stops at the first lock it takes.
TAKE_SLOT = text("SELECT s FROM generate_series(0, :slots - 1) AS s "
                 "WHERE pg_try_advisory_lock(:space, s) LIMIT 1")
# One round trip for a whole batch; the subquery's order is the locking order.
LOCK_ITEMS = text("SELECT count(pg_advisory_lock(hashtextextended(k, 0))) "
                  "FROM (SELECT :namespace || '/' || unnest(CAST(:skus AS text[])) AS k "
                  "ORDER BY 1) AS ordered")


class PostgresItemLocks(ItemLocks):
    """Session advisory locks on a connection of their own: a process that dies while holding
    them drops its connection, and with it the locks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextlib.contextmanager
    def hold(self, namespace: str, skus: Sequence[str]) -> Iterator[None]:
        with self.engine.connect() as conn:
            try:
                if len(skus) > 1:
                    _take_slot(conn)
                conn.execute(LOCK_ITEMS, {"namespace": namespace, "skus": text_array(skus)})
                conn.commit()
                yield
            finally:
                # Whatever failed, the pooled connection keeps no lock (a session's outlive
                # its transactions).
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock_all()"))
                conn.commit()


def _take_slot(conn: Connection) -> None:
    """Wait for one of the BATCH_SLOTS, held by the session until it unlocks all."""
    backoff = Backoff(0.01, 0.2)  # the batches holding them run for tens of milliseconds
    while conn.execute(TAKE_SLOT, {"slots": BATCH_SLOTS, "space": _SLOTS}).scalar() is None:
        conn.commit()
        time.sleep(backoff.next())
