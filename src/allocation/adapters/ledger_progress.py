"""How far the ledger is written, per item: the ledger writers mark each item's committed
(generation, seq) after every transaction, and sync-mode requests wait on that mark instead of
asking PostgreSQL.

Within one counter generation an item's seqs are committed in order and the mark only rises, so
"mark >= seq" means that seq is in the ledger. A mark of another generation says nothing about
this one's seqs: once the counter has been reloaded under a new generation, a waiter of the old
one hears ``REPLACED`` and must ask the ledger itself.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Mapping
from typing import Literal

ItemKey = tuple[str, str]  # (namespace, sku)
Mark = tuple[str, int]  # (generation, seq)
Waited = Literal["written", "replaced", "timeout"]
WRITTEN: Waited = "written"
REPLACED: Waited = "replaced"
TIMEOUT: Waited = "timeout"


class LedgerProgress(abc.ABC):
    @abc.abstractmethod
    def mark(self, written: Mapping[ItemKey, Mark]) -> None:
        """Record that each item's ledger is committed up to its seq, and wake its waiters."""

    @abc.abstractmethod
    def wait(self, namespace: str, sku: str, gen: str, seq: int, timeout: float) -> Waited:
        """Block until the item's ledger holds ``seq`` of generation ``gen`` (``WRITTEN``),
        the counter has moved to another generation (``REPLACED``), or ``timeout`` passes."""


class Marks:
    """Marks known to this process, and the waiters on them: one condition for all, since a
    wake-up costs a waiter one dict look-up."""

    def __init__(self) -> None:
        self._marks: dict[ItemKey, Mark] = {}
        self._changed = threading.Condition()

    def raise_to(self, written: Mapping[ItemKey, Mark]) -> None:
        with self._changed:
            for item, (gen, seq) in written.items():
                held = self._marks.get(item)
                if held is None or held[0] != gen or seq > held[1]:
                    self._marks[item] = (gen, seq)  # another generation: the newer one
            self._changed.notify_all()

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

    def mark(self, written: Mapping[ItemKey, Mark]) -> None:
        self.marks.raise_to(written)

    def wait(self, namespace: str, sku: str, gen: str, seq: int, timeout: float) -> Waited:
        deadline = time.monotonic() + timeout
        while True:
            until = min(deadline, time.monotonic() + self.RECHECK_SECONDS)
            if self.marks.wait((namespace, sku), gen, seq, until):
                return WRITTEN
            current = None if self.generation is None else self.generation(namespace, sku)
            if current is not None and current != gen:
                return REPLACED
            if time.monotonic() >= deadline:
                return TIMEOUT
