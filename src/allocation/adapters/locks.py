"""Per-item locks that serialise rebuilds: the port, and in-process locks (PostgreSQL's advisory
locks are in ``postgres_locks.py``)."""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Iterator, Sequence


class ItemLocks(abc.ABC):
    @abc.abstractmethod
    def hold(self, namespace: str, skus: Sequence[str]) -> contextlib.AbstractContextManager[None]:
        """Hold the locks of these items (taken in one order) for the ``with`` block."""


class InProcessItemLocks(ItemLocks):
    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def hold(self, namespace: str, skus: Sequence[str]) -> Iterator[None]:
        with self._guard:
            locks = [self._locks.setdefault((namespace, sku), threading.Lock())
                     for sku in sorted(set(skus))]
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            yield
