"""How far the ledger is written, per item: the ledger writers mark each item's committed
(generation, seq) after every transaction, and sync-mode requests wait on that mark instead of
asking PostgreSQL.

Within one counter generation an item's seqs are committed in order and the mark only rises, so
"mark >= seq" means that seq is in the ledger. A mark of another generation says nothing about
this one's seqs: once the counter has been reloaded under a new generation, a waiter of the old
one hears ``REPLACED`` and must ask the ledger itself.

The writers also say when the record is away (they cannot reach the database, or a round trip
of theirs has hung): a waiter then hears ``AWAY`` at once rather than waiting out its time
(docs/adr/0025-the-records-outage.md). The report lapses after ``AWAY_TTL_SECONDS`` unless
renewed, so a writer that dies reporting it does not keep the record away.
"""

from __future__ import annotations

import abc
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

ItemKey = tuple[str, str]  # (namespace, sku)
Mark = tuple[str, int]  # (generation, seq)
Waited = Literal["written", "replaced", "timeout", "away"]
WRITTEN: Waited = "written"
REPLACED: Waited = "replaced"
TIMEOUT: Waited = "timeout"
AWAY: Waited = "away"
# Longer than a failing writer's longest backoff (2 s), which renews the report each try.
AWAY_TTL_SECONDS = 3.0


class LedgerProgress(abc.ABC):
    @abc.abstractmethod
    def mark(self, written: Mapping[ItemKey, Mark]) -> None:
        """Record that each item's ledger is committed up to its seq, and wake its waiters."""

    @abc.abstractmethod
    def wait(self, namespace: str, sku: str, gen: str, seq: int, timeout: float) -> Waited:
        """Block until the item's ledger holds ``seq`` of generation ``gen`` (``WRITTEN``),
        the counter has moved to another generation (``REPLACED``), the writers report the
        record away (``AWAY``), or ``timeout`` passes."""

    @abc.abstractmethod
    def report(self, away: bool) -> None:
        """A writer's word on the record: away (renewed while it lasts), or back."""

    @abc.abstractmethod
    def away(self) -> bool:
        """Whether a writer reports the record away; cheap enough to ask per request."""

    def written_here(self, namespace: str, sku: str, gen: str, seq: int) -> bool:
        """Whether this process already knows the seq written (no I/O)."""
        return self.marks.holds((namespace, sku), gen, seq)

    def known(self, namespace: str, sku: str) -> Mark | None:
        """The item's mark as this process knows it (no I/O), None where it knows none."""
        return self.marks.get((namespace, sku))

    marks: Marks


class Marks:
    """Marks known to this process, and the waiters on them: one condition for all, since a
    wake-up costs a waiter one dict look-up."""

    def __init__(self) -> None:
        self._marks: dict[ItemKey, Mark] = {}
        self._changed = threading.Condition()
        self._watchers: list[Callable[[], None]] = []  # event loops' waiters (``watching``)

    def raise_to(self, written: Mapping[ItemKey, Mark]) -> None:
        with self._changed:
            for item, (gen, seq) in written.items():
                held = self._marks.get(item)
                if held is None or held[0] != gen or seq > held[1]:
                    self._marks[item] = (gen, seq)  # another generation: the newer one
            self._changed.notify_all()
            watchers = list(self._watchers)
        for wake in watchers:
            wake()

    @contextlib.contextmanager
    def watching(self, wake: Callable[[], None]) -> Iterator[None]:
        """``wake`` is called (from the raising thread) whenever marks rise, while the block
        runs: a waiter that is not a thread (a coroutine) then looks again."""
        with self._changed:
            self._watchers.append(wake)
        try:
            yield
        finally:
            with self._changed:
                self._watchers.remove(wake)

    def get(self, item: ItemKey) -> Mark | None:
        return self._marks.get(item)

    def holds(self, item: ItemKey, gen: str, seq: int) -> bool:
        held = self._marks.get(item)
        return held is not None and held[0] == gen and held[1] >= seq

    def wait(self, item: ItemKey, gen: str, seq: int, until: float) -> bool:
        """Wait for a local mark until the monotonic moment ``until``."""
        with self._changed:
            while not self.holds(item, gen, seq):
                left = until - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True


class InProcessLedgerProgress(LedgerProgress):
    """The embedded mode's: the writer and the waiters share one process. ``generation`` tells
    the counter's current generation of an item (None where it holds none)."""

    RECHECK_SECONDS = 0.1

    def __init__(self, generation: Callable[[str, str], str | None] | None = None) -> None:
        self.marks = Marks()
        self.generation = generation
        self._away_until = 0.0

    def mark(self, written: Mapping[ItemKey, Mark]) -> None:
        self.marks.raise_to(written)

    def report(self, away: bool) -> None:
        self._away_until = time.monotonic() + AWAY_TTL_SECONDS if away else 0.0

    def away(self) -> bool:
        return time.monotonic() < self._away_until

    def wait(self, namespace: str, sku: str, gen: str, seq: int, timeout: float) -> Waited:
        deadline = time.monotonic() + timeout
        while True:
            until = min(deadline, time.monotonic() + self.RECHECK_SECONDS)
            if self.marks.wait((namespace, sku), gen, seq, until):
                return WRITTEN
            current = None if self.generation is None else self.generation(namespace, sku)
            if current is not None and current != gen:
                return REPLACED
            if self.away():
                return AWAY
            if time.monotonic() >= deadline:
                return TIMEOUT
