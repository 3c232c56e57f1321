"""The in-process counter and outbox for the embedded single-process mode: the domain rules under
a lock, and recorded movements in a list that the ledger worker thread drains."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from allocation.adapters.counter import Allowances, Counter, Figures, fingerprint, unpack
from allocation.adapters.outbox import Outbox, OutboxEntry
from allocation.domain import errors, rules
from allocation.domain.model import LedgerEntry
from allocation.domain.outcome import FENCED, NOT_FOUND, OK, Outcome


@dataclass
class _Item:
    total: int
    consumed: int
    seq: int
    gen: str = ""
    fenced: bool = False


def _epoch(moment: datetime) -> float:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class InProcessCounter(Counter):
    def __init__(self, idempotency_ttl: float = 48 * 3600, refusal_ttl: float = 300) -> None:
        self._items: dict[tuple[str, str], _Item] = {}
        # Kept apart from the figures, as Redis keeps them: a rebuild sets them first.
        self._limits: dict[tuple[str, str], int] = {}
        self._buyers: dict[tuple[str, str], dict[str, int]] = {}
        self._outcomes: dict[tuple[str, str, str], tuple[float, str, Outcome]] = {}
        self._ttl = self.idempotency_ttl = idempotency_ttl
        self._refusal_ttl = min(refusal_ttl, idempotency_ttl)
        self._lock = threading.Lock()
        self._now = time.monotonic
        self.recorded: list[OutboxEntry] = []  # the outbox, drained by InProcessOutbox
        self.recorded_at: dict[str, float] = {}
        self._ids = itertools.count(1)

    def apply(self, namespace: str, sku: str, kind: rules.Kind, qty: int,
              idempotency_key: str | None, *, record: bool = False,
              buyer: str | None = None) -> Outcome:
        request = fingerprint(kind, qty, buyer)
        with self._lock:
            if idempotency_key is not None:
                remembered = self._outcomes.get((namespace, sku, idempotency_key))
                if remembered and remembered[0] > self._now():
                    _, seen_request, seen = remembered
                    status = seen.status if seen_request == request else "idempotency_key_reused"
                    return Outcome(status, seen.total, seen.consumed, replayed=True,
                                   seq=seen.seq if seen.ok else 0,
                                   gen=seen.gen if seen.ok else "", remaining=seen.remaining,
                                   limit=seen.limit)
            item = self._items.get((namespace, sku))
            if item is None:
                return Outcome(NOT_FOUND, 0, 0)
            if item.fenced:
                return Outcome(FENCED, item.total, item.consumed, seq=item.seq)
            buyers = self._buyers.setdefault((namespace, sku), {})
            limit = self._limits.get((namespace, sku))
            try:
                if kind == "decrement":
                    rules.quantity_must_be_positive(qty)
                    rules.buyer_within_limit(limit, buyer,
                                             buyers.get(buyer, 0) if buyer else 0, qty)
                after = rules.apply(kind, item.total, item.consumed, qty)
            except errors.DomainError as refusal:
                outcome = Outcome(refusal.code, item.total, item.consumed, seq=item.seq,
                                  remaining=refusal.details.get("remaining"), limit=limit)
            else:
                item.total, item.consumed = after
                item.seq += 1
                if buyer and kind == "decrement":
                    buyers[buyer] = buyers.get(buyer, 0) + qty
                elif buyer and kind == "refund":  # their allowance back, as far as they used it
                    left = buyers.get(buyer, 0) - qty
                    if left > 0:
                        buyers[buyer] = left
                    else:
                        buyers.pop(buyer, None)
                outcome = Outcome(OK, item.total, item.consumed, seq=item.seq, gen=item.gen,
                                  limit=limit)
                if record:
                    entry_id = str(next(self._ids))
                    self.recorded.append(OutboxEntry(
                        entry_id, 0, namespace, sku, item.seq, kind, qty,
                        idempotency_key, item.total, item.consumed, item.gen or None, buyer))
                    self.recorded_at[entry_id] = time.time()
            if idempotency_key is not None:
                self._remember((namespace, sku, idempotency_key), request, outcome)
            return outcome

    def _remember(self, key: tuple[str, str, str], request: str, outcome: Outcome) -> None:
        now = self._now()
        if len(self._outcomes) % 4096 == 4095:  # bound memory: drop what has expired
            self._outcomes = {k: v for k, v in self._outcomes.items() if v[0] > now}
        keep = self._ttl if outcome.ok else self._refusal_ttl
        self._outcomes[key] = (now + keep, request, outcome)

    def load_many(self, figures: Iterable[Figures]) -> None:
        with self._lock:
            for one in figures:
                namespace, sku, total, consumed, seq, gen = unpack(one)
                held = self._items.get((namespace, sku))
                self._items[(namespace, sku)] = _Item(
                    total, consumed, seq, gen or (held.gen if held is not None else ""))

    def load_allowances(self, namespace: str, allowances: Mapping[str, Allowances]) -> None:
        with self._lock:
            for sku, (limit, buyers) in allowances.items():
                if limit is None:
                    self._limits.pop((namespace, sku), None)
                else:
                    self._limits[(namespace, sku)] = limit
                self._buyers[(namespace, sku)] = dict(buyers)

    def set_limit(self, namespace: str, sku: str, limit: int | None) -> None:
        with self._lock:
            if (namespace, sku) not in self._items:
                return
            if limit is None:
                self._limits.pop((namespace, sku), None)
            else:
                self._limits[(namespace, sku)] = limit

    def remember(self, entries: Sequence[LedgerEntry]) -> None:
        with self._lock:
            for e in entries:
                if e.idempotency_key is None or e.kind not in ("adjust", "decrement", "refund"):
                    continue
                key = (e.namespace, e.sku, e.idempotency_key)
                left = self._ttl - (time.time() - _epoch(e.created_at))
                if left > 0 and key not in self._outcomes:
                    self._outcomes[key] = (self._now() + left, fingerprint(e.kind, e.qty, e.buyer),  # type: ignore[arg-type]
                                           Outcome(OK, e.total_after,
                                                   e.total_after - e.available_after))

    def fence_many(self, namespace: str, skus: Sequence[str]) -> list[int | None]:
        with self._lock:
            seqs: list[int | None] = []
            for sku in skus:
                item = self._items.get((namespace, sku))
                if item is not None:
                    item.fenced = True
                seqs.append(None if item is None else item.seq)
            return seqs

    def unfence(self, namespace: str, sku: str) -> None:
        with self._lock:
            if (item := self._items.get((namespace, sku))) is not None:
                item.fenced = False

    def forget(self, namespace: str, sku: str) -> None:
        with self._lock:
            self._items.pop((namespace, sku), None)
            self._buyers.pop((namespace, sku), None)
            self._limits.pop((namespace, sku), None)

    def read_many(self, namespace: str, skus: Sequence[str]) -> list[Outcome | None]:
        with self._lock:
            return [None if (i := self._items.get((namespace, sku))) is None else
                    Outcome(OK, i.total, i.consumed, seq=i.seq, gen=i.gen,
                            limit=self._limits.get((namespace, sku)))
                    for sku in skus]

    def ping(self) -> None:
        return None


class InProcessOutbox(Outbox):
    """Reads what an ``InProcessCounter`` recorded. One partition; one process."""

    partitions = 1

    def __init__(self, counter: InProcessCounter) -> None:
        self.counter = counter
        self._delivered: dict[str, str] = {}  # entry id -> consumer
        self._dead: list[tuple[OutboxEntry, str]] = []

    def read(self, partition: int, consumer: str, count: int) -> list[OutboxEntry]:
        with self.counter._lock:
            mine = [e for e in self.counter.recorded if self._delivered.get(e.id) == consumer]
            if mine:
                return mine[:count]
            new = [e for e in self.counter.recorded if e.id not in self._delivered][:count]
            for e in new:
                self._delivered[e.id] = consumer
            return new

    def claim_stale(self, partition: int, consumer: str, min_idle_ms: int,
                    count: int) -> list[OutboxEntry]:
        return []  # one process: no other consumer can have died holding entries

    def ack(self, partition: int, ids: list[str]) -> None:
        done = set(ids)
        with self.counter._lock:
            self.counter.recorded = [e for e in self.counter.recorded if e.id not in done]
            for i in done:
                self._delivered.pop(i, None)
                self.counter.recorded_at.pop(i, None)

    def dead_letter(self, entry: OutboxEntry, reason: str) -> None:
        self._dead.append((entry, reason))

    def backlog(self) -> tuple[int, float]:
        with self.counter._lock:
            oldest = min(self.counter.recorded_at.values(), default=None)
            return (len(self.counter.recorded),
                    0.0 if oldest is None else max(0.0, time.time() - oldest))

    def pending(self, namespace: str) -> dict[str, OutboxEntry]:
        with self.counter._lock:
            return {e.sku: e for e in self.counter.recorded if e.namespace == namespace}

    def latest(self, namespace: str, sku: str) -> OutboxEntry | None:
        return self.pending(namespace).get(sku)
