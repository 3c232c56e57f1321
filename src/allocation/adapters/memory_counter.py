"""The in-process counter for the embedded single-process mode: the domain rules under a lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

from allocation.adapters.counter import Counter, fingerprint
from allocation.domain import errors, rules
from allocation.domain.outcome import NOT_FOUND, OK, PENDING, Outcome


class InProcessCounter(Counter):
    def __init__(self, idempotency_ttl: float = 48 * 3600) -> None:
        self._figures: dict[tuple[str, str], tuple[int, int]] = {}
        self._outcomes: dict[tuple[str, str, str], tuple[float, str, Outcome]] = {}
        self._ttl = idempotency_ttl
        self._lock = threading.Lock()
        self._now = time.monotonic

    def apply(self, namespace: str, sku: str, kind: rules.Kind, qty: int,
              idempotency_key: str | None, *, probe: bool = False) -> Outcome:
        item = (namespace, sku)
        print_ = fingerprint(kind, qty)
        with self._lock:
            if idempotency_key is not None:
                remembered = self._outcomes.get((namespace, sku, idempotency_key))
                if remembered and remembered[0] > self._now():
                    _, seen_print, seen = remembered
                    status = seen.status if seen_print == print_ else "idempotency_key_reused"
                    return Outcome(status, seen.total, seen.consumed, replayed=True)
            if item not in self._figures:
                return Outcome(NOT_FOUND, 0, 0)
            total, consumed = self._figures[item]
            try:
                after = rules.apply(kind, total, consumed, qty)
            except errors.DomainError as refusal:
                outcome = Outcome(refusal.code, total, consumed)
            else:
                if probe:
                    return Outcome(PENDING, total, consumed)
                self._figures[item] = after
                outcome = Outcome(OK, *after)
            if idempotency_key is not None:
                self._remember((namespace, sku, idempotency_key), print_, outcome)
            return outcome

    def _remember(self, key: tuple[str, str, str], print_: str, outcome: Outcome) -> None:
        now = self._now()
        if len(self._outcomes) % 4096 == 4095:  # bound memory: drop what has expired
            self._outcomes = {k: v for k, v in self._outcomes.items() if v[0] > now}
        self._outcomes[key] = (now + self._ttl, print_, outcome)

    def revert(self, namespace: str, sku: str, kind: rules.Kind, qty: int,
               idempotency_key: str | None) -> None:
        with self._lock:
            if idempotency_key is not None:
                self._outcomes.pop((namespace, sku, idempotency_key), None)
            if (namespace, sku) not in self._figures:
                return
            total, consumed = self._figures[(namespace, sku)]
            if kind == "decrement":
                consumed -= qty
            elif kind == "refund":
                consumed += qty
            elif kind == "adjust":
                total -= qty
            self._figures[(namespace, sku)] = (total, consumed)

    def load(self, namespace: str, sku: str, total: int, consumed: int) -> None:
        with self._lock:
            self._figures[(namespace, sku)] = (total, consumed)

    def load_many(self, figures: Iterable[tuple[str, str, int, int]]) -> None:
        with self._lock:
            for namespace, sku, total, consumed in figures:
                self._figures[(namespace, sku)] = (total, consumed)

    def forget(self, namespace: str, sku: str) -> None:
        with self._lock:
            self._figures.pop((namespace, sku), None)

    def read_many(self, namespace: str, skus: Sequence[str]) -> list[Outcome | None]:
        with self._lock:
            found = [self._figures.get((namespace, sku)) for sku in skus]
        return [None if f is None else Outcome(OK, *f) for f in found]

    def ping(self) -> None:
        return None
