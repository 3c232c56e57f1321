"""The units of work on SQL: the ORM's, one per message, and the ledger writer's, on its own
PostgreSQL connection. Driver errors become ``Conflict`` or ``errors.Unavailable`` here."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from types import TracebackType

import psycopg2
import psycopg2.errors
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from allocation.adapters import ledger_rows as ledger_writer
from allocation.adapters.ledger_connection import LedgerConnection
from allocation.adapters.outages import database_down
from allocation.adapters.sql_repository import SqlAlchemyRepository
from allocation.adapters.sql_sale_repository import SqlSaleRepository
from allocation.domain import errors
from allocation.domain.model import InventoryItem, LedgerEntry
from allocation.service_layer.unit_of_work import AbstractUnitOfWork, Conflict


class SqlAlchemyUnitOfWork(AbstractUnitOfWork):
    """A fresh session per unit of work. ``write_lock`` serialises units of work in-process,
    for SQLite, which has no row locks."""

    def __init__(self, session_factory: Callable[[], Session],
                 write_lock: threading.Lock | None = None) -> None:
        self.session_factory = session_factory
        self.write_lock = write_lock

    def __enter__(self) -> AbstractUnitOfWork:
        if self.write_lock is not None:
            self.write_lock.acquire()
        self.session = self.session_factory()
        self.items = SqlAlchemyRepository(self.session)
        self.sales = SqlSaleRepository(self.session)
        return super().__enter__()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
            self.session.close()
        except sa_exc.SQLAlchemyError as cleanup_failure:
            if not database_down(cleanup_failure):
                raise  # the connection is gone otherwise; the pool discards it
        finally:
            if self.write_lock is not None:
                self.write_lock.release()
        if database_down(exc):
            raise errors.Unavailable("database unavailable") from exc

    def flush(self) -> None:
        try:
            self.session.flush()
        except sa_exc.IntegrityError as exc:
            raise Conflict(str(exc.orig)) from exc

    def _commit(self) -> None:
        entries = [e for item in self.items.seen for e in item.new_entries]
        for item in self.items.seen:
            item.new_entries = []
        try:
            self.session.flush()  # the items first: the ledger's foreign key wants them
            if entries:
                ledger_writer.append(self.session.connection(), entries)
            self.session.commit()
        except sa_exc.IntegrityError as exc:
            raise Conflict(str(exc.orig)) from exc
        except psycopg2.errors.UniqueViolation as exc:  # COPY's raw cursor passes SQLAlchemy by
            raise Conflict(str(exc)) from exc

    def rollback(self) -> None:
        self.session.rollback()


class LedgerBatchUnitOfWork:
    """The ledger writer's unit of work on PostgreSQL: the same aggregates as the ORM's, read
    and written through the writer's own connection in two round trips."""

    def __init__(self, connection: LedgerConnection) -> None:
        self.connection = connection
        self.items = self
        self.seen: list[InventoryItem] = []

    def __enter__(self) -> LedgerBatchUnitOfWork:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.connection.rollback()  # nothing, once committed

    def lock_many(self, keys: Sequence[tuple[str, str]]
                  ) -> dict[tuple[str, str], InventoryItem]:
        found = self.connection.lock(keys)
        self.seen.extend(found.values())
        return found

    def entries_at(self, wanted: Sequence[tuple[str, str, int]]
                   ) -> dict[tuple[str, str, int], LedgerEntry]:
        return self.connection.entries_at(wanted)

    def commit(self) -> None:
        changed = [item for item in self.seen if item.new_entries]
        try:
            self.connection.commit(changed, [e for item in changed for e in item.new_entries])
        except psycopg2.errors.UniqueViolation as exc:
            raise Conflict(str(exc)) from exc
        for item in changed:
            item.new_entries = []
