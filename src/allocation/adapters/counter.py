"""The fast-path counter port: per-item figures and idempotent movements, atomic per item."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence

from allocation.domain.outcome import Outcome
from allocation.domain.rules import Kind

# (namespace, sku, total, consumed, seq)
Figures = tuple[str, str, int, int, int]


def fingerprint(kind: Kind, qty: int) -> str:
    """What makes two requests under one idempotency key "the same request"."""
    return f"{kind}:{qty}"


class Counter(abc.ABC):
    # True when recording a movement also publishes its events (in the same atomic step).
    publishes_events: bool = False
    @abc.abstractmethod
    def apply(self, namespace: str, sku: str, kind: Kind, qty: int,
              idempotency_key: str | None, *, probe: bool = False,
              record: bool = False) -> Outcome:
        """Apply a movement atomically, or refuse it by the domain rules.

        A key seen before returns its stored outcome (``replayed``), or ``idempotency_key_reused``
        when the request differs. Refusals are remembered under the key like successes.
        An applied movement takes the item's next ``seq``; with ``record`` it is appended to the
        outbox in the same atomic step (the write-behind ledger).
        With ``probe`` an allowed movement is not applied: the answer is ``pending``.
        An unknown item answers ``not_found``, a fenced one ``fenced``; neither is remembered.
        """

    @abc.abstractmethod
    def revert(self, namespace: str, sku: str, kind: Kind, qty: int,
               idempotency_key: str | None) -> None:
        """Undo an unrecorded movement and forget its key (its database commit failed)."""

    def load(self, namespace: str, sku: str, total: int, consumed: int, seq: int) -> None:
        """Set an item's figures and lift any fence (initialisation, rebuild)."""
        self.load_many([(namespace, sku, total, consumed, seq)])

    @abc.abstractmethod
    def load_many(self, figures: Iterable[Figures]) -> None: ...

    @abc.abstractmethod
    def fence_many(self, namespace: str, skus: Sequence[str]) -> list[int | None]:
        """Fence items for a rebuild; each item's seq then, or None where it is not held."""

    @abc.abstractmethod
    def unfence(self, namespace: str, sku: str) -> None:
        """Lift a fence without changing the figures (a rebuild that gave up)."""

    @abc.abstractmethod
    def forget(self, namespace: str, sku: str) -> None:
        """Drop an item's figures (an initialisation that did not commit)."""

    @abc.abstractmethod
    def read_many(self, namespace: str, skus: Sequence[str]) -> list[Outcome | None]:
        """Current figures of each item, ``None`` where the counter does not hold it."""

    def read(self, namespace: str, sku: str) -> Outcome | None:
        return self.read_many(namespace, [sku])[0]

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise ``Unavailable`` when the counter cannot serve."""
