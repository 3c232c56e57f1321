"""A unit of work: a transaction, the repository over it, and the events its items raised. A
handler makes one (``Services.uow_factory``) where it reads or writes the record, a fresh one
each time. The SQL ones are in ``adapters/sql_unit_of_work.py``."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol

from allocation.adapters.repository import AbstractRepository
from allocation.adapters.sale_repository import AbstractSaleRepository
from allocation.domain import events
from allocation.domain.model import InventoryItem, LedgerEntry


class Conflict(Exception):
    """Another transaction wrote the same row first (a unique key); retrying reads its result."""


class AbstractUnitOfWork(abc.ABC):
    items: AbstractRepository
    sales: AbstractSaleRepository

    def __enter__(self) -> AbstractUnitOfWork:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.rollback()

    def commit(self) -> None:
        self._commit()

    @abc.abstractmethod
    def flush(self) -> None:
        """Send pending writes now, so a unique-key clash shows as ``Conflict`` here."""

    def collect_new_events(self) -> Iterator[events.Event]:
        items: AbstractRepository | None = getattr(self, "items", None)  # None: never entered
        for item in items.seen if items is not None else ():
            while item.events:
                yield item.events.pop(0)

    @abc.abstractmethod
    def _commit(self) -> None: ...

    @abc.abstractmethod
    def rollback(self) -> None: ...


class BatchRepository(Protocol):
    def lock_many(self, keys: Sequence[tuple[str, str]]
                  ) -> dict[tuple[str, str], InventoryItem]: ...

    def entries_at(self, wanted: Sequence[tuple[str, str, int]]
                   ) -> dict[tuple[str, str, int], LedgerEntry]: ...


class BatchUnitOfWork(Protocol):
    """What the ledger writer needs of a unit of work: lock items, commit what they recorded."""

    @property
    def items(self) -> BatchRepository: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def commit(self) -> None: ...
