"""Where sales' terms are kept: the port (the SQL adapter is ``sql_sale_repository.py``).
The record keeps what a Redis rebuild must restore; a sale's queue lives in Redis."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from allocation.domain.sale import Sale


class AbstractSaleRepository(abc.ABC):
    @abc.abstractmethod
    def get(self, namespace: str, sale: str) -> Sale | None: ...

    @abc.abstractmethod
    def add(self, sale: Sale) -> None:
        """Keep a new sale, its skus gated while it is open. A sku already in another open
        sale, or the sale already kept, is the unit of work's ``Conflict``."""

    @abc.abstractmethod
    def close(self, namespace: str, sale: str) -> None:
        """The sale is closed from now: its skus are no longer gated."""

    @abc.abstractmethod
    def gating(self, namespace: str, skus: Sequence[str]) -> dict[str, str]:
        """The open sale gating each of ``skus`` that one gates: sku -> sale."""

    @abc.abstractmethod
    def open_sales(self) -> list[Sale]:
        """Every sale not closed, of every namespace."""
