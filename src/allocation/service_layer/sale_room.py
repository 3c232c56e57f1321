"""What a process knows of its sales without asking anyone per request: the open sales and the
skus they gate (from the record), and each sale's queue figures (from a step on of its queue).
A server process refreshes them every ``window`` / 2 seconds on a thread of its own
(``run``); a request's gate is one dictionary look-up, and a poll of a waiting ticket another.
Where no loop runs (tests, the facade) a figure older than ``window`` is refreshed by the first
caller that finds it so, one caller at a time, while the others answer from what is there."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as WaitedOut
from dataclasses import dataclass
from typing import TypeVar

from allocation.adapters.sale_queue import Advanced, SaleQueue
from allocation.domain import errors
from allocation.domain.sale import QueueFigures, Sale
from allocation.runtime.supervised import Backoff, supervise
from allocation.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)
# A caller needing figures waits this long for the one stepping the queue on (a round trip:
# milliseconds), not for a partitioned Redis's socket timeout, and never behind a queue of them.
STEP_WAIT_SECONDS = 1.0
# A request's call on the record (a sale put, closed or not known here yet) is answered 503
# after this long, whether or not the call ever returns: libpq's own deadlines do not fire
# against a peer that takes the bytes and never answers. RECORD_CALLS run at once; more: 503.
RECORD_WAIT_SECONDS = 3.0
RECORD_CALLS = 4
T = TypeVar("T")


@dataclass(frozen=True)
class Seen:
    advanced: Advanced
    at: float  # monotonic seconds


class SaleRoom:
    def __init__(self, uow_factory: Callable[[], AbstractUnitOfWork], queue: SaleQueue,
                 window: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 step_wait: float = STEP_WAIT_SECONDS,
                 record_wait: float = RECORD_WAIT_SECONDS) -> None:
        self.uow_factory = uow_factory
        self.queue = queue
        self.window = window
        self.clock = clock
        self.step_wait = step_wait
        self.record_wait = record_wait
        self._record_slots = threading.BoundedSemaphore(RECORD_CALLS)
        self._sales: dict[tuple[str, str], Sale] = {}
        # The open sale gating each (namespace, sku), as this process last read the record: a
        # request's gate is a look-up here (no I/O). Replaced whole, never changed in place.
        self.gated: dict[tuple[str, str], Sale] = {}
        self._closed: dict[tuple[str, str], Sale] = {}  # a closed sale stays closed
        self._figures: dict[tuple[str, str], Seen] = {}
        self._reading = threading.Lock()
        self._reads: dict[tuple[str, str], Future[Sale | None]] = {}  # read_sale's in flight
        self._advancing: dict[tuple[str, str], threading.Lock] = {}
        # Per sale: its queue's incarnation as last stepped on, and incarnations found not to
        # be it since (tickets and passes of a queue Redis lost: answered with no I/O).
        self._foreign: dict[tuple[str, str], tuple[str, frozenset[str]]] = {}
        # Rebuilds a namespace's items Redis lost, as a read of each would (bootstrap sets it:
        # ``sales.restore_items``); None: a sale waits for a read of them.
        self.restore: Callable[[str, Sequence[str]], None] | None = None

    def recorded(self, call: Callable[[], T]) -> T:
        """``call`` (the record's part of a request) within ``record_wait``, else 503. A call
        that outlives it goes on to its end on its own thread (a put or close completes, and
        the refresh restores its queue in Redis), holding one of ``RECORD_CALLS``."""
        if not self._record_slots.acquire(blocking=False):
            raise errors.Unavailable("the record is not answering; retry", retry_after=5)
        answer: Future[T] = Future()

        def run() -> None:  # a daemon: one stuck in a partition does not hold up an exit
            try:
                answer.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - the caller raises it
                answer.set_exception(exc)
            finally:
                self._record_slots.release()

        threading.Thread(target=run, name="sale-record", daemon=True).start()
        try:
            return answer.result(timeout=self.record_wait)
        except WaitedOut:
            raise errors.Unavailable("the record did not answer in time; retry",
                                     retry_after=5) from None

    def read_sale(self, namespace: str, sale: str, read: Callable[[], Sale | None]
                  ) -> Sale | None:
        """``recorded(read)`` of a sale not known here, then known here (``known``): one call
        for every caller asking meanwhile, so a herd joining a sale this process has not read
        yet shares one read (and one of ``RECORD_CALLS``) rather than taking them all and
        being refused 503."""
        key = (namespace, sale)
        with self._reading:
            pending = self._reads.get(key)
            leads = pending is None
            if pending is None:
                pending = self._reads[key] = Future()
        if not leads:
            try:
                return pending.result(timeout=self.record_wait)
            except WaitedOut:
                raise errors.Unavailable("the record did not answer in time; retry",
                                         retry_after=5) from None
        try:
            kept = self.recorded(read)
            if kept is not None:
                self.known(kept)
        except BaseException as exc:  # the followers raise it too
            pending.set_exception(exc)
            raise
        else:
            pending.set_result(kept)
            return kept
        finally:
            with self._reading:
                del self._reads[key]

    def gating(self, namespace: str, sku: str) -> Sale | None:
        """The open sale gating the sku (as in ``gated``), read from the record now: for a sku
        the scripts say is gated, newly."""
        def read() -> Sale | None:
            with self.uow_factory() as uow:
                name = uow.sales.gating(namespace, [sku]).get(sku)
                return None if name is None else uow.sales.get(namespace, name)

        sale = self.recorded(read)
        if sale is not None:
            self.known(sale)
        return sale

    def sale(self, namespace: str, sale: str) -> Sale | None:
        """A sale as last read (None: unknown here; no I/O)."""
        key = (namespace, sale)
        return self._sales.get(key) or self._closed.get(key)

    def open_sales(self) -> list[Sale]:
        """The open sales as last read (no I/O)."""
        return list(self._sales.values())

    def known(self, sale: Sale) -> None:
        """This process put or closed the sale: it knows at once, whatever the window."""
        with self._reading:
            self._sales.pop((sale.namespace, sale.sale), None)
            gated = {key: s for key, s in self.gated.items()
                     if (s.namespace, s.sale) != (sale.namespace, sale.sale)}
            if sale.closed:
                self._closed[(sale.namespace, sale.sale)] = sale
            else:
                self._sales[(sale.namespace, sale.sale)] = sale
                gated.update({(sale.namespace, sku): sale for sku in sale.skus})
            self.gated = gated
            self._figures.pop((sale.namespace, sale.sale), None)

    def figures(self, sale: Sale, fresh: bool = False) -> Advanced:
        """The sale's queue figures, at most ``window`` old (``fresh``: now). The first
        caller to find them stale steps the queue on; others meanwhile answer from the last,
        or, with none to answer from, wait ``step_wait`` for it and are told to retry."""
        if not fresh and (last := self.last_figures(sale)) is not None:
            return last
        key = (sale.namespace, sale.sale)
        seen = self._figures.get(key)
        lock = self._advancing.setdefault(key, threading.Lock())
        wait = seen is None or fresh
        if not lock.acquire(timeout=self.step_wait) if wait else not lock.acquire(False):
            if seen is not None and not fresh:
                return seen.advanced
            raise errors.Unavailable("the sale's queue is not answering; retry")
        try:
            stepped = self._figures.get(key)
            if wait and stepped is not None and stepped is not seen:
                # Stepped by the caller this one waited behind, after it arrived: now enough,
                # and a crowd of callers that need them now takes one step, not one each.
                return stepped.advanced
            try:
                advanced = self.queue.advance(sale)
                if advanced.figures is None:  # Redis lost it: its terms come from the record
                    self.queue.gate(sale, True)  # first, as a put does: then its queue anew
                    self.queue.put(sale)
                    advanced = self.queue.advance(sale)
            except errors.Unavailable:
                if seen is not None and not fresh:  # a poll may lag: the last figures it is
                    self._figures[key] = Seen(seen.advanced, self.clock())
                    return seen.advanced
                raise
            self._figures[key] = Seen(advanced, self.clock())
            return advanced
        finally:
            lock.release()

    def figures_of(self, sale: Sale, incarnation: str) -> QueueFigures | None:
        """The sale's figures (as ``figures``) where ``incarnation``, a ticket's or a pass's, is
        its queue's; ``errors.NotFound`` where it is not (Redis lost the queue that gave it:
        docs/adr/0046). Figures of another incarnation are stepped on again first (they may
        be older than the ticket), once per incarnation found foreign: a client polling an
        old ticket costs a look-up."""
        figures = self.figures(sale).figures
        if figures is None or figures.incarnation == incarnation:
            return figures
        key = (sale.namespace, sale.sale)
        current, foreign = self._foreign.get(key, ("", frozenset()))
        if current != figures.incarnation or incarnation not in foreign:
            figures = self.figures(sale, fresh=True).figures
            if figures is None or figures.incarnation == incarnation:
                return figures
            # Stepped on after the ticket was made, the queue is another: an older one's.
            known = foreign if current == figures.incarnation and len(foreign) < 64 else (
                frozenset())
            self._foreign[key] = (figures.incarnation, known | {incarnation})
        raise errors.NotFound(f"no such ticket of the sale {sale.sale}: its queue was "
                              "restored since; join again")

    def last_figures(self, sale: Sale) -> Advanced | None:
        """The sale's queue figures if at most ``window`` old (no I/O), else None."""
        seen = self._figures.get((sale.namespace, sale.sale))
        if seen is None or self.clock() - seen.at >= self.window:
            return None
        return seen.advanced

    def refresh(self) -> float:
        """Read the open sales and step each one's queue on; the pause before the next."""
        with self.uow_factory() as uow:
            open_sales = uow.sales.open_sales()
        with self._reading:
            self._sales = {(s.namespace, s.sale): s for s in open_sales}
            self.gated = {(s.namespace, sku): s for s in open_sales for sku in s.skus}
        for sale in open_sales:
            missing = self.figures(sale, fresh=True).missing
            if missing:
                self._restore(sale, missing)
        return self.window / 2

    def _restore(self, sale: Sale, missing: Sequence[str]) -> None:
        """Redis lost items of an open sale: they count as nothing available, so it admits
        nobody on them until they are back. Rebuild them now (one process's rebuild stands
        for the others', under the items' locks) rather than when someone reads one, and step
        the queue on with them."""
        if self.restore is None:
            return
        try:
            self.restore(sale.namespace, missing)
        except errors.Unavailable as exc:  # the ledger behind, say: the next refresh
            logger.warning("items of the sale %s/%s not rebuilt yet (%s)", sale.namespace,
                           sale.sale, exc)
            return
        self.figures(sale, fresh=True)

    def run(self, stopping: threading.Event) -> None:
        """Refresh until ``stopping``; an outage keeps what was last read and is retried."""
        def failed(exc: BaseException, delay: float, _: int) -> None:
            logger.warning("sales not refreshed (%s); again in %.1f s", type(exc).__name__,
                           delay)
        supervise(self.refresh, stopping, Backoff(0.2, 2.0), failed=failed)
