"""In-memory stand-ins for the database side, for unit tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

from allocation.adapters.repository import AbstractRepository
from allocation.adapters.sale_repository import AbstractSaleRepository
from allocation.domain.model import InventoryItem, LedgerEntry
from allocation.domain.sale import Sale
from allocation.service_layer.unit_of_work import AbstractUnitOfWork, Conflict


class FakeStore:
    """What a fake database holds: committed items and ledger entries."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], InventoryItem] = {}
        self.ledger: list[LedgerEntry] = []
        self.commits = 0
        self.fail_next_commit = False
        self.sales: dict[tuple[str, str], Sale] = {}


class FakeSaleRepository(AbstractSaleRepository):
    """Sales kept at once (a sale's handler commits right after it writes)."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store

    def get(self, namespace: str, sale: str) -> Sale | None:
        return self.store.sales.get((namespace, sale))

    def add(self, sale: Sale) -> None:
        if (sale.namespace, sale.sale) in self.store.sales or self.gating(sale.namespace,
                                                                          sale.skus):
            raise Conflict(f"{sale.sale} or one of its skus is taken")
        self.store.sales[(sale.namespace, sale.sale)] = sale

    def close(self, namespace: str, sale: str) -> None:
        kept = self.store.sales[(namespace, sale)]
        self.store.sales[(namespace, sale)] = dataclasses.replace(kept, closed=True)

    def gating(self, namespace: str, skus: Sequence[str]) -> dict[str, str]:
        return {sku: sale.sale for sale in self.open_sales() if sale.namespace == namespace
                for sku in sale.skus if sku in skus}

    def open_sales(self) -> list[Sale]:
        return [sale for sale in self.store.sales.values() if not sale.closed]


class FakeRepository(AbstractRepository):
    def __init__(self, store: FakeStore) -> None:
        super().__init__()
        self.store = store
        self.staged: dict[tuple[str, str], InventoryItem] = {}

    def _add(self, item: InventoryItem) -> None:
        self.staged[(item.namespace, item.sku)] = item

    def _get(self, namespace: str, sku: str, lock: bool) -> InventoryItem | None:
        stored = self.store.items.get((namespace, sku))
        if stored is None:
            return None
        # A copy, like a fresh load: changes count only once committed.
        copy = InventoryItem(stored.namespace, stored.sku, stored.total, stored.consumed,
                             stored.last_seq)
        copy.counter_gen = stored.counter_gen
        copy.limit_per_buyer = stored.limit_per_buyer
        self.staged[(namespace, sku)] = copy
        return copy

    def list(self, namespace: str, after: str | None, limit: int,
             *, lock: bool = False) -> Sequence[InventoryItem]:
        skus = sorted(s for (ns, s) in self.store.items if ns == namespace
                      and (after is None or s > after))
        return [item for s in skus[:limit] if (item := self.get(namespace, s)) is not None]

    def entry_for_key(self, namespace: str, sku: str, key: str,
                      since: datetime | None = None) -> LedgerEntry | None:
        return next((e for e in reversed(self.store.ledger)
                     if (e.namespace, e.sku, e.idempotency_key) == (namespace, sku, key)
                     and (since is None or e.created_at >= since)), None)

    def ledger(self, namespace: str, sku: str, after_seq: int,
               limit: int) -> Sequence[LedgerEntry]:
        return [e for e in self.store.ledger
                if (e.namespace, e.sku) == (namespace, sku) and e.seq > after_seq][:limit]


class FakeUnitOfWork(AbstractUnitOfWork):
    def __init__(self, store: FakeStore) -> None:
        self.store = store

    def __enter__(self) -> AbstractUnitOfWork:
        self.items = FakeRepository(self.store)
        self.sales = FakeSaleRepository(self.store)
        return super().__enter__()

    def flush(self) -> None:
        return None

    def _commit(self) -> None:
        if self.store.fail_next_commit:
            self.store.fail_next_commit = False
            raise ConnectionError("the fake database went away")
        assert isinstance(self.items, FakeRepository)
        for key, item in self.items.staged.items():
            self.store.ledger.extend(dataclasses.replace(e) for e in item.new_entries)
            item.new_entries = []
            stored = InventoryItem(item.namespace, item.sku, item.total, item.consumed,
                                   item.last_seq)
            stored.counter_gen = item.counter_gen
            stored.limit_per_buyer = item.limit_per_buyer
            self.store.items[key] = stored
        self.store.commits += 1

    def rollback(self) -> None:
        if hasattr(self, "items"):
            assert isinstance(self.items, FakeRepository)
            self.items.staged.clear()
