"""A ledger writer's own PostgreSQL connection. A batch takes two round trips: lock and read its
items, then write their figures and rows and commit. Through the ORM's session it took seven
(a pool check-out's ping, BEGIN, the lock, each item's UPDATE, COPY's two, COMMIT), and a sync
sale waits for every one of them (docs/adr/0020-ledger-batch-in-two-round-trips.md)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg2
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from allocation.adapters import ledger_rows
from allocation.adapters.outages import database_down
from allocation.domain import errors
from allocation.domain.model import InventoryItem, LedgerEntry

ItemKey = tuple[str, str]

# The connection runs in autocommit, so psycopg2 sends no BEGIN of its own: it rides with the
# lock. One order for every writer: no deadlocks.
LOCK_SQL = (
    "BEGIN; SELECT namespace, sku, total, consumed, held, last_seq, counter_gen, limit_per_buyer "
    "FROM inventory_items WHERE (namespace, sku) IN "
    "(SELECT * FROM unnest(%s::text[], %s::text[])) ORDER BY namespace, sku FOR UPDATE")
FIGURES_SQL = (
    "UPDATE inventory_items AS i SET total = f.total, consumed = f.consumed, held = f.held, "
    "last_seq = f.last_seq, version = i.version + 1, updated_at = now() "
    "FROM json_to_recordset(%s) AS f(namespace text, sku text, total bigint, consumed bigint, "
    "held bigint, last_seq bigint) WHERE i.namespace = f.namespace AND i.sku = f.sku")
# The rows at given seqs (a writer meeting seqs the ledger holds: replays, or another history).
ENTRIES_AT_SQL = (
    f"SELECT {', '.join(ledger_rows.COLUMNS)} FROM inventory_ledger "
    "WHERE (namespace, sku, seq) IN "
    "(SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]))")
# Up to this many rows go in the statement that commits; more by COPY first, which costs a
# round trip more but less per row (a drained backlog's batches).
INLINE_ROWS = 200


class LedgerConnection:
    """Not thread-safe: one per writer thread. Connects on first use, and again after an
    outage (raised as ``errors.Unavailable``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pooled: Any = None  # SQLAlchemy's pooled connection, kept between batches
        self._in_transaction = False
        self._busy_since: float | None = None  # a round trip under way since (monotonic)

    def busy_for(self) -> float:
        """How long the round trip under way has taken (0 when none is): one that a partition
        holds says so long before TCP gives up."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def lock(self, keys: Sequence[ItemKey]) -> dict[ItemKey, InventoryItem]:
        """Begin a transaction and lock the existing items of ``keys``."""
        wanted = sorted(set(keys))
        params = ([ns for ns, _ in wanted], [sku for _, sku in wanted])
        kept = self._pooled is not None
        try:
            rows = self._locked(params)
        except errors.Unavailable:
            if not kept:
                raise
            # The kept connection had gone while idle (a server restart, an idle timeout):
            # nothing was begun, so a new one tries at once, as a pool's ping would have.
            rows = self._locked(params)
        found = {}
        for namespace, sku, total, consumed, held, last_seq, gen, limit in rows:
            item = InventoryItem(namespace, sku, total, consumed, last_seq)
            item.held, item.counter_gen, item.limit_per_buyer = held, gen, limit
            found[(namespace, sku)] = item
        return found

    def _locked(self, params: tuple[list[str], list[str]]) -> list[tuple[Any, ...]]:
        with self._cursor() as cursor:
            self._in_transaction = True
            cursor.execute(LOCK_SQL, params)
            rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows

    def entries_at(self, wanted: Sequence[tuple[str, str, int]]
                   ) -> dict[tuple[str, str, int], LedgerEntry]:
        """The rows at (namespace, sku, seq), within the transaction ``lock`` began."""
        with self._cursor() as cursor:
            cursor.execute(ENTRIES_AT_SQL, ([w[0] for w in wanted], [w[1] for w in wanted],
                                            [w[2] for w in wanted]))
            rows = cursor.fetchall()
        return {(e.namespace, e.sku, e.seq): e for e in (
            LedgerEntry(**dict(zip(ledger_rows.COLUMNS, row, strict=True))) for row in rows)}

    def commit(self, items: Sequence[InventoryItem], entries: Sequence[LedgerEntry]) -> None:
        """Write the items' figures and the rows, and commit. On an error (a unique key refusing
        a row raises psycopg2's IntegrityError) the transaction stays open for ``rollback``."""
        figures = json.dumps([{"namespace": i.namespace, "sku": i.sku, "total": i.total,
                               "consumed": i.consumed, "held": i.held, "last_seq": i.last_seq}
                              for i in items])
        with self._cursor() as cursor:
            if len(entries) > INLINE_ROWS:
                cursor.copy_expert(ledger_rows.COPY_SQL, ledger_rows.as_csv(entries))
                cursor.execute(f"{FIGURES_SQL}; COMMIT", (figures,))
            else:
                cursor.execute(f"{FIGURES_SQL}; {ledger_rows.INSERT_JSON_SQL}; COMMIT",
                               (figures, ledger_rows.as_json(entries)))
            # COMMIT of a transaction that had failed answers ROLLBACK, without an error.
            if cursor.statusmessage != "COMMIT":
                raise RuntimeError(f"ledger batch not committed: {cursor.statusmessage}")
            self._in_transaction = False

    def rollback(self) -> None:
        if self._in_transaction and self._pooled is not None:
            with self._cursor() as cursor:
                cursor.execute("ROLLBACK")
        self._in_transaction = False

    def close(self) -> None:
        """Give the connection back to the pool as the pool lends them (or drop it); never
        raises: it runs as a worker stops, whatever stopped it."""
        if self._pooled is None:
            return
        pooled, self._pooled = self._pooled, None
        try:
            if self._in_transaction:
                with pooled.cursor() as cursor:
                    cursor.execute("ROLLBACK")
            pooled.dbapi_connection.autocommit = False
            pooled.close()
        except Exception:  # noqa: BLE001 - an unknown state: the pool must not lend it
            with contextlib.suppress(Exception):
                pooled.invalidate()
        self._in_transaction = False

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        self._busy_since = time.monotonic()
        try:
            if self._pooled is None:
                pooled = self.engine.raw_connection()
                pooled.dbapi_connection.autocommit = True  # type: ignore[union-attr]
                self._pooled = pooled
            with self._pooled.cursor() as cursor:
                yield cursor
        except (psycopg2.Error, sa_exc.DBAPIError) as exc:  # the latter: connecting
            if not database_down(exc):
                raise
            # The server ends the transaction with the connection; the next use reconnects.
            self._in_transaction = False
            if self._pooled is not None:
                self._pooled.invalidate(exc)
                self._pooled = None
            raise errors.Unavailable("database unavailable") from exc
        finally:
            self._busy_since = None
