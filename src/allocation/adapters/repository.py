"""Where aggregates are kept: the repository port (the SQLAlchemy adapter is in
``sql_repository.py``)."""

from __future__ import annotations

import abc
import builtins
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from allocation.adapters.counter import Allowances, Hold, Restored
from allocation.domain.model import InventoryItem, LedgerEntry
from allocation.domain.outcome import Figures


def aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# How each kind of movement naming a buyer changes their units (bought and held).
UNITS_SIGN = {"decrement": 1, "refund": -1, "hold": 1, "release": -1, "expire": -1}


def micros(moment: datetime) -> int:
    """A moment in whole microseconds since the epoch."""
    return (aware(moment) - EPOCH) // timedelta(microseconds=1)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> tuple[list[Any], ...]:
    return tuple(list(column) for column in zip(*rows, strict=True)) if rows else tuple(
        [] for _ in range(width))


def _hold(entry: LedgerEntry) -> Hold:
    expires = aware(entry.expires_at) if entry.expires_at else entry.created_at
    return (entry.reservation_id or "", entry.qty, entry.buyer or "",
            int(aware(expires).timestamp() * 1000))


class AbstractRepository(abc.ABC):
    def __init__(self) -> None:
        self.seen: set[InventoryItem] = set()

    def add(self, item: InventoryItem) -> None:
        self._add(item)
        self.seen.add(item)

    def get(self, namespace: str, sku: str, *, lock: bool = False) -> InventoryItem | None:
        """The item, or None. ``lock`` holds it against other writers until the unit of work
        ends: every movement of one item is applied in one order."""
        item = self._get(namespace, sku, lock)
        if item is not None:
            self.seen.add(item)
        return item

    @abc.abstractmethod
    def _add(self, item: InventoryItem) -> None: ...

    @abc.abstractmethod
    def _get(self, namespace: str, sku: str, lock: bool) -> InventoryItem | None: ...

    def many(self, namespace: str, skus: Sequence[str]) -> dict[str, InventoryItem]:
        """The items of ``skus`` that exist, unlocked, by SKU."""
        found = {sku: item for sku in skus if (item := self._get(namespace, sku, False))}
        self.seen.update(found.values())
        return found

    def keyed_entries(self, namespace: str, skus: Sequence[str], since: datetime,
                      limit: int = 1_000_000) -> Sequence[LedgerEntry]:
        """The items' movements with an idempotency key, made since ``since``, latest first."""
        return [e for sku in skus for e in reversed(self.ledger(namespace, sku, 0, limit))
                if e.idempotency_key is not None and aware(e.created_at) >= since]

    def allowances(self, namespace: str, skus: Sequence[str]) -> dict[str, Allowances]:
        """Each item's limit per buyer and its buyers' units (what their decrements took less
        what their refunds gave back), from the ledger."""
        units = self.buyers(namespace, skus)
        return {sku: (item.limit_per_buyer, units.get(sku, {}))
                for sku, item in self.many(namespace, skus).items()}

    def buyers(self, namespace: str, skus: Sequence[str]) -> dict[str, dict[str, int]]:
        """Each item's buyers' units, where it has any (``allowances`` without the limits)."""
        found: dict[str, dict[str, int]] = {}
        for sku in skus:
            units: dict[str, int] = {}
            for e in self.ledger(namespace, sku, 0, 1 << 62):
                if e.buyer is not None and e.kind in UNITS_SIGN:
                    units[e.buyer] = units.get(e.buyer, 0) + UNITS_SIGN[e.kind] * e.qty
            if kept := {b: n for b, n in units.items() if n > 0}:
                found[sku] = kept
        return found

    def open_holds(self, namespace: str, skus: Sequence[str]) -> dict[str, list[Hold]]:
        """Each item's holds that no later movement ended, from the ledger, each until its
        latest extension's expiry."""
        found: dict[str, list[Hold]] = {}
        for sku in skus:
            entries = self.ledger(namespace, sku, 0, 1 << 62)
            ended = {e.reservation_id for e in entries if e.kind in ("confirm", "release",
                                                                     "expire")}
            extended = {e.reservation_id: e.expires_at for e in entries if e.kind == "extend"}
            found[sku] = [_hold(dataclasses.replace(
                e, expires_at=extended.get(e.reservation_id, e.expires_at)))
                for e in entries if e.kind == "hold" and e.reservation_id not in ended]
        return found

    def generations(self, namespace: str, skus: Sequence[str]) -> dict[str, str | None]:
        """The counter generation each item's ledger follows."""
        return {sku: item.counter_gen for sku, item in self.many(namespace, skus).items()}

    def rebase(self, namespace: str, skus: Sequence[str], gen: str) -> dict[str, Figures]:
        """Lock the items, give them the counter generation ``gen`` (committed with the unit of
        work) and return their figures: the ledger follows the counter loaded from these."""
        found = self.lock_many([(namespace, sku) for sku in skus])
        for item in found.values():
            item.counter_gen = gen
        return {sku: item.figures() for (_, sku), item in found.items()}

    def rebase_lost(self, namespace: str, skus: Sequence[str], gen: str,
                    since: datetime) -> Restored:
        """``rebase`` the items Redis lost, with what a rebuild gives back to each: its buyers'
        units, open holds and movements keyed since ``since`` (latest first). Items and rows in
        sku order; no item's gate (the sales' repository has them)."""
        rebased = sorted(self.rebase(namespace, skus, gen).items())
        found, stock = [sku for sku, _ in rebased], [f for _, f in rebased]
        buyers, holds = self.buyers(namespace, found), self.open_holds(namespace, found)
        units = [(sku, buyer, n) for sku in found
                 for buyer, n in sorted(buyers.get(sku, {}).items())]
        lines = [(sku, *hold) for sku in found for hold in sorted(holds.get(sku, []))]
        keyed = [(e.sku, e.idempotency_key or "", e.kind, e.qty, e.buyer, e.total_after,
                  e.available_after, e.held_after, micros(e.created_at))
                 for e in sorted(self.keyed_entries(namespace, found, since),
                                 key=lambda e: (e.sku, -e.seq))]
        return Restored(found, [s.total for s in stock], [s.consumed for s in stock],
                        [s.held for s in stock], [s.seq for s in stock], gen,
                        [s.limit for s in stock], [""] * len(stock),
                        _columns(units, 3), _columns(lines, 5), _columns(keyed, 9))  # type: ignore[arg-type]

    def entries_at(self, wanted: Sequence[tuple[str, str, int]]
                   ) -> dict[tuple[str, str, int], LedgerEntry]:
        """The ledger's rows at (namespace, sku, seq), where it has them."""
        found = {}
        for namespace, sku, seq in wanted:
            for e in self.ledger(namespace, sku, seq - 1, 1):
                if e.seq == seq:
                    found[(namespace, sku, seq)] = e
        return found

    def lock_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], InventoryItem]:
        """Lock and load many items at once, in one order (namespace, sku): the existing ones."""
        found = {key: item for key in sorted(set(keys))
                 if (item := self._get(key[0], key[1], True)) is not None}
        self.seen.update(found.values())
        return found

    @abc.abstractmethod
    def list(self, namespace: str, after: str | None, limit: int,
             *, lock: bool = False) -> Sequence[InventoryItem]:
        """Items of a namespace in SKU order, after ``after``."""

    def stock(self, namespace: str, skus: Sequence[str]) -> dict[str, Figures]:
        """The figures of the items of ``skus`` that exist, unlocked, by SKU."""
        return {sku: item.figures() for sku, item in self.many(namespace, skus).items()}

    def sku_page(self, namespace: str, after: str | None, limit: int) -> builtins.list[str]:
        """A namespace's SKUs in order, after ``after``."""
        return [item.sku for item in self.list(namespace, after, limit)]

    def stock_page(self, namespace: str, after: str | None, limit: int
                   ) -> Sequence[tuple[str, Figures]]:
        """The figures of a namespace's items in SKU order, after ``after``: (sku, figures)."""
        return [(item.sku, item.figures()) for item in self.list(namespace, after, limit)]

    @abc.abstractmethod
    def entry_for_key(self, namespace: str, sku: str, key: str,
                      since: datetime | None = None) -> LedgerEntry | None:
        """The item's latest movement under ``key`` (made since ``since``): a key reused after
        its window is a new movement, and its row keeps the key too."""

    def reservation_entries(self, namespace: str, reservation_id: str) -> Sequence[LedgerEntry]:
        """Every ledger entry of a reservation, each item's in seq order."""
        return [e for item in self.list(namespace, None, 1 << 30)
                for e in self.ledger(namespace, item.sku, 0, 1 << 62)
                if e.reservation_id == reservation_id]

    def reservation_entry(self, namespace: str, sku: str, reservation_id: str,
                          kind: str) -> LedgerEntry | None:
        """The item's ledger entry of that kind for the reservation, if it is written."""
        return next((e for e in self.ledger(namespace, sku, 0, 1 << 62)
                     if (e.reservation_id, e.kind) == (reservation_id, kind)), None)

    @abc.abstractmethod
    def ledger(self, namespace: str, sku: str, after_seq: int,
               limit: int) -> Sequence[LedgerEntry]: ...
