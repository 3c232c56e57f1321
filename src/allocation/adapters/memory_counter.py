"""The in-process counter and outbox for the embedded single-process mode: the domain rules under
a lock, and recorded movements in a list that the ledger worker thread drains."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from allocation.adapters.counter import (
    Allowances,
    Counter,
    Figures,
    Hold,
    Line,
    Reserved,
    Step,
    fingerprint,
    unpack,
)
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
    held: int = 0


@dataclass
class _Reservation:
    state: str
    fingerprint: str
    lines: tuple[Line, ...] = ()
    buyer: str = ""
    created_ms: int = 0
    expires_ms: int = 0
    reason: str = "ok"
    sku: str | None = None
    detail: int | None = None
    kept_until_ms: int = 0
    first_expires_ms: int = 0  # the expiry the hold was first answered with


def _number(detail: int | str | None) -> int | None:
    return detail if isinstance(detail, int) else None


def _epoch(moment: datetime) -> float:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class InProcessCounter(Counter):
    def __init__(self, idempotency_ttl: float = 48 * 3600, refusal_ttl: float = 300,
                 clock_ms: Callable[[], int] | None = None) -> None:
        self._items: dict[tuple[str, str], _Item] = {}
        # Open holds per item: reservation id -> (qty, expires_ms, buyer or "").
        self._holds: dict[tuple[str, str], dict[str, tuple[int, int, str]]] = {}
        self._reservations: dict[tuple[str, str], _Reservation] = {}
        # Each buyer's open reservations, by (namespace, buyer): id -> expires_ms.
        self._open: dict[tuple[str, str], dict[str, int]] = {}
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
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
        self._tally: dict[tuple[str, str], int] = {}

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
                                   limit=seen.limit, held=seen.held)
            item = self._items.get((namespace, sku))
            if item is None:
                return Outcome(NOT_FOUND, 0, 0)
            if item.fenced:
                return Outcome(FENCED, item.total, item.consumed, seq=item.seq, held=item.held)
            if record:
                self._expire_due(namespace, sku, item)
            buyers = self._buyers.setdefault((namespace, sku), {})
            limit = self._limits.get((namespace, sku))
            try:
                if kind == "decrement":
                    rules.quantity_must_be_positive(qty)
                    rules.buyer_within_limit(limit, buyer,
                                             buyers.get(buyer, 0) if buyer else 0, qty)
                after = rules.apply(kind, item.total, item.consumed, qty, item.held)
            except errors.DomainError as refusal:
                outcome = Outcome(refusal.code, item.total, item.consumed, seq=item.seq,
                                  remaining=_number(refusal.details.get("remaining")),
                                  limit=limit, held=item.held)
            else:
                item.total, item.consumed, item.held = after
                item.seq += 1
                if buyer and kind == "decrement":
                    buyers[buyer] = buyers.get(buyer, 0) + qty
                elif buyer and kind == "refund":  # their allowance back, as far as they used it
                    self._give_back(namespace, sku, buyer, qty)
                outcome = Outcome(OK, item.total, item.consumed, seq=item.seq, gen=item.gen,
                                  limit=limit, held=item.held)
                if record:
                    self._record(namespace, sku, item, kind, qty, idempotency_key, buyer)
            if idempotency_key is not None:
                self._remember((namespace, sku, idempotency_key), request, outcome)
            return outcome

    def _record(self, namespace: str, sku: str, item: _Item, kind: rules.Kind, qty: int,
                key: str | None, buyer: str | None, reservation_id: str | None = None,
                expires_ms: int = 0) -> None:
        entry_id = str(next(self._ids))
        self.recorded.append(OutboxEntry(
            entry_id, 0, namespace, sku, item.seq, kind, qty, key, item.total, item.consumed,
            item.gen or None, buyer or None, item.held, reservation_id, expires_ms))
        self.recorded_at[entry_id] = time.time()

    def _end_hold(self, namespace: str, sku: str, item: _Item, reservation_id: str,
                  kind: rules.Kind) -> bool:
        """End one hold (confirm, release, expire) as one movement; False where it ended
        before. Called under the lock."""
        held = self._holds.get((namespace, sku), {}).pop(reservation_id, None)
        if held is None:
            return False
        qty, _, buyer = held
        item.total, item.consumed, item.held = rules.apply(kind, item.total, item.consumed, qty,
                                                           item.held)
        if kind != "confirm" and buyer:
            self._give_back(namespace, sku, buyer, qty)
        item.seq += 1
        self._count_hold(namespace, kind, qty)
        self._record(namespace, sku, item, kind, qty, None, buyer, reservation_id)
        return True

    def _count_hold(self, namespace: str, kind: rules.Kind, qty: int) -> None:
        for what, count in ((f"units:{kind}", qty), (f"holds:{kind}", 1)):
            self._tally[namespace, what] = self._tally.get((namespace, what), 0) + count

    def _give_back(self, namespace: str, sku: str, buyer: str, qty: int) -> None:
        buyers = self._buyers.setdefault((namespace, sku), {})
        left = buyers.get(buyer, 0) - qty
        if left > 0:
            buyers[buyer] = left
        else:
            buyers.pop(buyer, None)

    def _expire_due(self, namespace: str, sku: str, item: _Item) -> None:
        now = self.clock_ms()
        holds = self._holds.get((namespace, sku), {})
        for reservation_id in [r for r, (_, expires, _) in holds.items() if expires <= now]:
            self._end_hold(namespace, sku, item, reservation_id, "expire")

    def reservation_step(self, step: Step, namespace: str, reservation_id: str,
                         lines: Sequence[Line], *, ttl_ms: int = 0, buyer: str | None = None,
                         fingerprint: str = "", idempotency_key: str | None = None,
                         open_cap: int = 0) -> Reserved:
        with self._lock:
            now = self.clock_ms()
            r = self._reservations.get((namespace, reservation_id))
            if r is not None and r.kept_until_ms <= now:
                r = self._reservations.pop((namespace, reservation_id))  # forgotten
                r = None
            if step == "hold":
                return self._hold(namespace, reservation_id, lines, ttl_ms, buyer or "",
                                  fingerprint, r, now, open_cap)
            if r is None or r.state == "refused":
                return Reserved("not_found")
            items = [self._items.get((namespace, sku)) for sku, _ in r.lines]
            if any(i is None for i in items):
                return Reserved("not_found", sku=r.lines[items.index(None)][0])
            live = [i for i in items if i is not None]
            if any(i.fenced for i in live):
                return Reserved("fenced")
            expired_now = r.state == "held" and now >= r.expires_ms and step != "get"
            if expired_now:
                for (sku, _), item in zip(r.lines, live, strict=True):
                    self._end_hold(namespace, sku, item, reservation_id, "expire")
                r.state = "expired"
                self._closed(namespace, reservation_id, r)
            state = "expired" if r.state == "held" and now >= r.expires_ms else r.state
            if step == "get":
                return self._answer("ok", r, state, live)
            if step == "extend":
                if state != "held":
                    return self._answer(f"reservation_{state}", r, state, ())
                if now + ttl_ms > r.created_ms + rules.RESERVATION_LIFETIME_SECONDS * 1000:
                    return self._answer("reservation_lifetime_exceeded", r, state, ())
                r.expires_ms = now + ttl_ms
                r.kept_until_ms = r.expires_ms + int(self._ttl * 1000)
                for (sku, _), item in zip(r.lines, live, strict=True):
                    holds = self._holds.get((namespace, sku), {})
                    if reservation_id in holds:
                        qty, _, who = holds[reservation_id]
                        holds[reservation_id] = (qty, r.expires_ms, who)
                        item.seq += 1
                        self._record(namespace, sku, item, "extend", qty, None, who,
                                     reservation_id, r.expires_ms)
                return self._answer("ok", r, state, live)
            if (step, state) in (("confirm", "confirmed"), ("release", "released"),
                                 ("release", "expired")):
                return self._answer("ok", r, state, live, replayed=not expired_now)
            if state != "held":
                return self._answer(f"reservation_{state}", r, state, ())
            kind: rules.Kind = "confirm" if step == "confirm" else "release"
            if kind == "confirm" and any(
                    reservation_id not in self._holds.get((namespace, sku), {})
                    for sku, _ in r.lines):
                # A line's hold has ended (its item expired it): the reservation has expired.
                for (sku, _), item in zip(r.lines, live, strict=True):
                    self._end_hold(namespace, sku, item, reservation_id, "expire")
                r.state = "expired"
                self._closed(namespace, reservation_id, r)
                return self._answer("reservation_expired", r, "expired", live)
            for (sku, _), item in zip(r.lines, live, strict=True):
                self._end_hold(namespace, sku, item, reservation_id, kind)
            r.state = "confirmed" if step == "confirm" else "released"
            self._closed(namespace, reservation_id, r)
            r.kept_until_ms = now + int(self._ttl * 1000)
            return self._answer("ok", r, r.state, live)

    def _hold(self, namespace: str, reservation_id: str, lines: Sequence[Line], ttl_ms: int,
              buyer: str, request: str, r: _Reservation | None, now: int,
              open_cap: int) -> Reserved:
        if r is not None:
            if r.fingerprint != request:
                return Reserved("idempotency_key_reused")
            live = [i for sku, _ in r.lines if (i := self._items.get((namespace, sku)))]
            if r.state == "refused":
                return self._answer(r.reason, r, r.state, live, replayed=True)
            # As the hold was first answered, whatever happened to the reservation since.
            first = replace(r, expires_ms=r.first_expires_ms or r.expires_ms)
            return self._answer("ok", first, "held", live, replayed=True)
        items = [self._items.get((namespace, sku)) for sku, _ in lines]
        for (sku, _), item in zip(lines, items, strict=True):
            if item is None:  # not remembered: a rebuild may bring it back
                return Reserved("not_found", sku=sku)
            if item.fenced:
                return Reserved("fenced", sku=sku)
        live = [i for i in items if i is not None]
        if reservation_id in self._holds.get((namespace, lines[0][0]), {}):
            return Reserved("lost")  # held before, and the reservation was lost: the ledger has it
        for (sku, _), item in zip(lines, live, strict=True):
            self._expire_due(namespace, sku, item)
        if buyer and open_cap > 0:
            held = self._open.setdefault((namespace, buyer), {})
            for rid in [rid for rid, until in held.items() if until <= now]:
                del held[rid]
            if len(held) >= open_cap:
                return self._refuse(namespace, reservation_id, request,
                                    "too_many_open_reservations", "", open_cap, now, live)
        for (sku, qty), item in zip(lines, live, strict=True):
            bought = self._buyers.get((namespace, sku), {})
            try:
                rules.buyer_within_limit(self._limits.get((namespace, sku)), buyer or None,
                                         bought.get(buyer, 0) if buyer else 0, qty)
                rules.apply("hold", item.total, item.consumed, qty, item.held)
            except errors.DomainError as refusal:
                detail = _number(refusal.details.get("remaining",
                                                     refusal.details.get("available")))
                return self._refuse(namespace, reservation_id, request, refusal.code, sku,
                                    detail, now, live)
        expires = now + ttl_ms
        for (sku, qty), item in zip(lines, live, strict=True):
            item.held += qty
            item.seq += 1
            self._holds.setdefault((namespace, sku), {})[reservation_id] = (qty, expires, buyer)
            if buyer:
                bought = self._buyers.setdefault((namespace, sku), {})
                bought[buyer] = bought.get(buyer, 0) + qty
            self._count_hold(namespace, "hold", qty)
            self._record(namespace, sku, item, "hold", qty, None, buyer, reservation_id, expires)
        r = _Reservation("held", request, tuple(lines), buyer, now, expires,
                         kept_until_ms=expires + int(self._ttl * 1000),
                         first_expires_ms=expires)
        if buyer and open_cap > 0:
            self._open.setdefault((namespace, buyer), {})[reservation_id] = expires
        self._reservations[(namespace, reservation_id)] = r
        return self._answer("ok", r, "held", live)

    def _refuse(self, namespace: str, reservation_id: str, request: str, reason: str, sku: str,
                detail: int | None, now: int, live: Sequence[_Item] = ()) -> Reserved:
        r = _Reservation("refused", request, reason=reason, sku=sku, detail=detail,
                         kept_until_ms=now + int(self._refusal_ttl * 1000))
        self._reservations[(namespace, reservation_id)] = r
        return self._answer(reason, r, "", live)

    def _answer(self, status: str, r: _Reservation, state: str, live: Sequence[_Item],
                replayed: bool = False) -> Reserved:
        return Reserved(status, state, r.created_ms, r.expires_ms, r.sku, r.detail, replayed,
                        tuple(Outcome(OK, i.total, i.consumed, seq=i.seq, gen=i.gen,
                                      held=i.held) for i in live))

    def _closed(self, namespace: str, reservation_id: str, r: _Reservation) -> None:
        """An ended reservation no longer counts among its buyer's open ones."""
        self._open.get((namespace, r.buyer), {}).pop(reservation_id, None)

    def restore_reservation(self, namespace: str, reservation_id: str, lines: Sequence[Line],
                            buyer: str | None, state: str, created_ms: int, expires_ms: int,
                            fingerprint: str = "") -> None:
        with self._lock:
            self._reservations.setdefault((namespace, reservation_id), _Reservation(
                state, fingerprint, tuple(lines), buyer or "", created_ms, expires_ms,
                kept_until_ms=expires_ms + int(self._ttl * 1000)))

    def reservation_lines(self, namespace: str, reservation_id: str
                          ) -> tuple[tuple[Line, ...], str | None] | None:
        with self._lock:
            r = self._reservations.get((namespace, reservation_id))
            if r is None or r.state == "refused":
                return None
            return r.lines, r.buyer or None

    def load_holds(self, namespace: str, holds: Mapping[str, Sequence[Hold]]) -> None:
        with self._lock:
            for sku, open_holds in holds.items():
                self._holds[(namespace, sku)] = {rid: (qty, expires, buyer)
                                                 for rid, qty, buyer, expires in open_holds}

    def sweep(self, most: int = 1000) -> int:
        with self._lock:
            due = [key for key, holds in self._holds.items()
                   if any(expires <= self.clock_ms() for _, expires, _ in holds.values())]
            for namespace, sku in due[:most]:
                item = self._items.get((namespace, sku))
                if item is not None and not item.fenced:
                    self._expire_due(namespace, sku, item)
            return len(due[:most])

    def _remember(self, key: tuple[str, str, str], request: str, outcome: Outcome) -> None:
        now = self._now()
        if len(self._outcomes) % 4096 == 4095:  # bound memory: drop what has expired
            self._outcomes = {k: v for k, v in self._outcomes.items() if v[0] > now}
        keep = self._ttl if outcome.ok else self._refusal_ttl
        self._outcomes[key] = (now + keep, request, outcome)

    def load_many(self, figures: Iterable[Figures]) -> None:
        with self._lock:
            for one in figures:
                namespace, sku, total, consumed, seq, gen, held = unpack(one)
                before = self._items.get((namespace, sku))
                self._items[(namespace, sku)] = _Item(
                    total, consumed, seq, gen or (before.gen if before is not None else ""),
                    held=held)

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
                                           Outcome(OK, e.total_after, e.total_after
                                                   - e.available_after - e.held_after,
                                                   held=e.held_after))

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
            self._holds.pop((namespace, sku), None)

    def read_many(self, namespace: str, skus: Sequence[str]) -> list[Outcome | None]:
        with self._lock:
            for sku in skus:  # a hold past its expiry ends at the first step that meets it
                item = self._items.get((namespace, sku))
                if item is not None and not item.fenced:
                    self._expire_due(namespace, sku, item)
            return [None if (i := self._items.get((namespace, sku))) is None else
                    Outcome(OK, i.total, i.consumed, seq=i.seq, gen=i.gen,
                            limit=self._limits.get((namespace, sku)), held=i.held)
                    for sku in skus]

    def hold_tally(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._tally)

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
