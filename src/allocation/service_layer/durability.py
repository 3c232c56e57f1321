"""When a movement is answered: the one thing the two durability modes differ in.

``async`` answers once the counter has applied and recorded it (the ledger is written behind);
``sync`` also waits until the ledger writers have committed its seq. A sync movement that is
not committed in time is answered "unavailable": it may yet be written, so the outcome is
unknown and the client asks again with the same idempotency key. Where the counter was reloaded
from the database meanwhile (Redis lost its data), the seq may belong to another movement now:
only the ledger itself, asked by the movement's key, can then tell.

While the ledger writers report the record away, a sync movement is answered "unavailable" at
once, without waiting: applied, its outcome unknown as above (docs/adr/0025-the-records-outage.md).
An entry point that waits on an event loop (the RSGI bridge) asks for the wait to be
``deferred``: ``settle`` then only notes what to wait for, the request thread is freed, and the
loop awaits ``settled`` before it sends the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

from allocation.adapters.ledger_progress import (
    AWAY,
    REPLACED,
    TIMEOUT,
    WRITTEN,
    LedgerProgress,
    Waited,
)
from allocation.domain import errors
from allocation.domain.outcome import Figures

Mode = Literal["async", "sync"]
T = TypeVar("T")
Offload = Callable[[Callable[[], T]], Awaitable[T]]
# How long a deferred wait trusts the channel (which raises this process's marks) before it
# reads Redis itself (a message lost, or the writers' report).
READ_SECONDS = 0.1
# The first read: a commit usually comes sooner (the channel says so, with no read at all), and
# a report of the record away is heard this much later.
FIRST_READ_SECONDS = 0.03


@dataclass(frozen=True)
class Pending:
    """A movement a deferred settle left to wait for."""
    namespace: str
    sku: str
    gen: str
    seq: int
    in_ledger: Callable[[], bool]


_deferred = threading.local()


@dataclass(frozen=True)
class Durability:
    mode: Mode
    progress: LedgerProgress
    wait_seconds: float = 5.0

    def settle(self, namespace: str, sku: str, figures: Figures,
               in_ledger: Callable[[], bool]) -> None:
        """Return once the movement applied (the item's ``figures`` after it) may be
        acknowledged, or raise ``Unavailable``. ``in_ledger`` asks the ledger whether it holds
        the movement (by its key). Refusals write nothing: callers settle applied ones only."""
        if self.mode == "async" or figures.seq <= 0:
            return  # seq 0: a replayed record that kept no seq
        pending: list[Pending] | None = getattr(_deferred, "pending", None)
        if pending is not None:
            pending.append(Pending(namespace, sku, figures.gen, figures.seq, in_ledger))
            return
        waited = self.progress.wait(namespace, sku, figures.gen, figures.seq, self.wait_seconds)
        if waited == REPLACED and not in_ledger():
            raise Replaced(namespace, sku)
        if waited not in (WRITTEN, REPLACED):
            raise _unknown(namespace, sku, waited)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[list[Pending]]:
        """Within the block, this thread's ``settle`` calls note their movement in the list
        rather than wait; the caller then awaits ``settled`` with it."""
        pending: list[Pending] = []
        _deferred.pending = pending
        try:
            yield pending
        finally:
            _deferred.pending = None

    async def settled(self, pending: list[Pending], offload: Offload[Waited]) -> None:
        """Return once every pending movement is in the ledger, or raise ``Unavailable`` (as
        ``settle`` would). Waits on the loop; ``offload`` runs the few blocking reads (Redis,
        and the ledger by key where the counter was reloaded) off it."""
        deadline = time.monotonic() + self.wait_seconds
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(changed.set)

        with self.progress.marks.watching(wake):
            for p in pending:
                next_read = time.monotonic() + FIRST_READ_SECONDS
                while not self.progress.written_here(p.namespace, p.sku, p.gen, p.seq):
                    now = time.monotonic()
                    if now >= next_read:
                        waited = await offload(functools.partial(
                            self.progress.wait, p.namespace, p.sku, p.gen, p.seq, 0.0))
                        if waited == WRITTEN:
                            break
                        if waited == REPLACED and await offload(
                                functools.partial(_written_if, p.in_ledger)) == WRITTEN:
                            break
                        if waited != TIMEOUT:
                            raise _unknown(p.namespace, p.sku, waited)
                        next_read = now + READ_SECONDS
                    if now >= deadline:
                        raise _unknown(p.namespace, p.sku, TIMEOUT)
                    changed.clear()
                    if not self.progress.written_here(p.namespace, p.sku, p.gen, p.seq):
                        # Woken by the channel's marks; read Redis again past READ_SECONDS (a
                        # message lost, or the writers' report).
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(changed.wait(),
                                                   min(deadline, next_read) - now)


class Replaced(errors.Unavailable):
    """The counter was rebuilt from the ledger while the movement waited, and the ledger does
    not hold it at its seq: that seq is another movement's, or nobody's yet. The caller may ask
    the ledger by the movement's key; unanswered, it is ``Unavailable`` (outcome unknown)."""

    def __init__(self, namespace: str, sku: str) -> None:
        super().__init__(f"{namespace}/{sku}: the item was rebuilt from the ledger while the "
                         "movement waited; its outcome is unknown, repeat it with the same "
                         "Idempotency-Key", retry_after=1)


def _written_if(in_ledger: Callable[[], bool]) -> Waited:
    return WRITTEN if in_ledger() else REPLACED


def _unknown(namespace: str, sku: str, waited: Waited) -> errors.Unavailable:
    why = ("the ledger's database is unavailable" if waited == AWAY
           else "the movement is not in the ledger yet")
    return errors.Unavailable(f"{namespace}/{sku}: {why}; its outcome is unknown, repeat it "
                              "with the same Idempotency-Key", retry_after=1)
