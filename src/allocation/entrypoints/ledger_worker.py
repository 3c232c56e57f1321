"""The ledger worker: drains the outbox into PostgreSQL, a batch per transaction, then
acknowledges. Entries a dead worker left unacknowledged are claimed after a while."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from allocation.adapters.ledger_connection import LedgerConnection
from allocation.adapters.ledger_progress import LedgerProgress
from allocation.adapters.outages import database_down, is_outage
from allocation.adapters.outbox import Outbox, OutboxEntry
from allocation.adapters.redis_client import EXITING
from allocation.adapters.sql_unit_of_work import LedgerBatchUnitOfWork
from allocation.bootstrap import Application
from allocation.config import Config
from allocation.runtime.process import Loop, ProcessLoops, start_thread
from allocation.runtime.supervised import Backoff, supervise
from allocation.service_layer import rebuild
from allocation.service_layer.ledger_writer import BatchResult, write_batch
from allocation.service_layer.unit_of_work import BatchUnitOfWork

logger = logging.getLogger(__name__)
# Writers per process: each waits on PostgreSQL or Redis most of the time, so a few share a
# core well (docs/benchmarks.md, ledger drain).
DEFAULT_THREADS = 4
# A round trip to PostgreSQL taking this long is taken for the record being away (a partition
# answers nothing and fails nothing): sync movements are then answered at once rather than
# after their whole wait (docs/adr/0025-the-records-outage.md). A batch takes milliseconds.
STUCK_SECONDS = 1.0
WATCH_SECONDS = 0.25


class LedgerWorker:
    def __init__(self, outbox: Outbox, uow_factory: Callable[[], BatchUnitOfWork],
                 progress: LedgerProgress, *, batch_size: int = 1000,
                 claim_idle_ms: int = Config.ledger_claim_idle_ms, gather_seconds: float = 0.02,
                 name: str | None = None, partitions: Sequence[int] | None = None,
                 connection: LedgerConnection | None = None,
                 rebuild: Rebuild | None = None) -> None:
        self.outbox = outbox
        # Rebuilds an item whose counter parted from the ledger's history (ledger_writer),
        # dropping the records of the keys of the movements set aside.
        self.rebuild = rebuild or _cannot_rebuild
        self.connection = connection  # the units of work's, if they have one: closed by run
        self.progress = progress
        # A pass that wrote only a trickle waits this long, so that a transaction carries many
        # movements (the ledger's CPU competes with the sale's); 0 where callers wait on the
        # ledger (sync durability).
        self.gather_seconds = gather_seconds
        # Workers of one process take disjoint partitions; workers of other processes may
        # share them all (an entry that arrives before its predecessor waits, see write_batch).
        self.partitions = list(range(outbox.partitions) if partitions is None else partitions)
        self.uow_factory = uow_factory
        self.batch_size = batch_size
        self.claim_idle_ms = claim_idle_ms
        self.name = name or _process_name()
        self.stopping = threading.Event()
        self.written = 0
        self._unsettled = set(self.partitions)  # a restart under the same name finds its own
        self._next_claim = 0.0
        self._reported_away = False
        self._idle = 0.001

    def run_once(self, block_ms: int = 0) -> int:
        """One pass over this worker's partitions; returns how many entries were written.

        New entries of every partition come in one round trip. A partition is read again from
        this worker's own unacknowledged entries only where it left some (entries that waited
        for predecessors another consumer held, or a batch whose write failed); entries a dead
        consumer left are claimed every quarter of ``claim_idle_ms``. Polling an idle outbox
        thus costs one round trip, not three per partition.
        """
        settled = [p for p in self.partitions if p not in self._unsettled]
        # Block only when every partition is settled: otherwise some have entries to go over.
        block = block_ms if len(settled) == len(self.partitions) else 0
        fresh = dict(zip(settled, self.outbox.read_new(settled, self.name, self.batch_size,
                                                       block),
                         strict=True))
        claiming = time.monotonic() >= self._next_claim
        if claiming:
            self._next_claim = time.monotonic() + max(self.claim_idle_ms / 4000, 0.05)
        written = 0
        for partition in self.partitions:
            if partition in fresh:
                entries = fresh[partition]
            else:  # its own pending ones first, then the new
                entries = self.outbox.read(partition, self.name, self.batch_size)
                if not entries:
                    self._unsettled.discard(partition)
            if claiming:
                entries += self.outbox.claim_stale(partition, self.name, self.claim_idle_ms,
                                                   self.batch_size)
            if entries:
                written += self._settle(partition, entries)
        self.written += written
        return written

    def _settle(self, partition: int, entries: list[OutboxEntry]) -> int:
        self._unsettled.add(partition)  # until acknowledged: a failed write leaves them pending
        result = self._write(entries)
        self.progress.mark(result.marks)  # committed: wake whoever waits on these seqs
        for orphan in result.orphans:
            logger.error("ledger: %s/%s seq %d has no item in the database; set aside",
                         orphan.namespace, orphan.sku, orphan.seq)
            self.outbox.dead_letter(orphan, "no such item in the database")
        for stale in result.stale:
            logger.error("ledger: %s/%s seq %d was recorded by a counter the database has "
                         "since replaced (Redis lost it); set aside, not written",
                         stale.namespace, stale.sku, stale.seq)
            self.outbox.dead_letter(stale, f"counter generation {stale.gen} was replaced")
        parted = [e for entries in result.diverged.values() for e in entries]
        for entry in parted:
            logger.error("ledger: %s/%s seq %d is another movement than the ledger's at that "
                         "seq (Redis lost history: a failover to a lagging replica?); set "
                         "aside, not written, and the item rebuilt from the ledger",
                         entry.namespace, entry.sku, entry.seq)
            self.outbox.dead_letter(entry, "the ledger holds another movement at its seq")
        self.outbox.ack(partition, result.done + [o.id for o in result.orphans + result.stale]
                        + [e.id for e in parted])
        for (namespace, sku), entries in result.diverged.items():
            self.rebuild(namespace, sku, entries[0].gen or "",
                         [e.idempotency_key for e in entries if e.idempotency_key is not None])
        if not result.waiting:
            self._unsettled.discard(partition)
        return result.written

    def _write(self, entries: list[OutboxEntry]) -> BatchResult:
        return write_batch(entries, self.uow_factory())

    def run(self) -> None:
        """Write until stopped. Losing the database or Redis, wherever in a write, is waited
        out: the entries stay pending and are written again (a replay is a no-op). Anything
        else is a bug a retry would repeat, and is raised."""
        logger.info("ledger worker %s started", self.name)
        if self.connection is not None:
            start_thread("ledger-watch", self._watch)
        try:
            supervise(self._pass, self.stopping, Backoff(0.05, 2.0), waited_out=is_outage,
                      failed=self._waiting)
        finally:
            self.close()

    def _pass(self) -> float:
        """One pass, and how long to wait before the next: an idle outbox is polled less and
        less often (up to 50 a second); a trickle waits ``gather_seconds`` for company."""
        # Where callers wait on the ledger, an idle pass waits in Redis for the next movement
        # rather than sleeping (one Redis only; a cluster polls).
        block_ms = 0 if self.gather_seconds or not self.outbox.blocking_reads else 50
        written = self.run_once(block_ms)
        if written and self._reported_away:
            self._report(away=False)
        if written == 0 and not block_ms:
            pause, self._idle = self._idle, min(self._idle * 2, 0.02)
            return pause
        self._idle = 0.001
        if written < self.batch_size // 10 and self.gather_seconds:
            return self.gather_seconds
        return 0.0

    def _waiting(self, exc: BaseException, delay: float, failures: int) -> None:
        if EXITING.is_set():  # the process is stopping the Redis it started: not news
            self.stopping.set()
            return
        if _database_down(exc):
            self._report(away=True)  # renewed each try while it lasts
        cause = exc.__cause__ or exc
        # The first failure of a run of them with its traceback: where it failed.
        logger.warning("ledger worker waiting for a dependency: %s (%s)",
                       type(cause).__name__, cause, exc_info=failures == 1)

    def _watch(self) -> None:
        """Report the record away while a round trip of this writer's hangs."""
        while not self.stopping.wait(WATCH_SECONDS):
            if self.connection is not None and self.connection.busy_for() > STUCK_SECONDS:
                self._report(away=True)

    def _report(self, away: bool) -> None:
        try:
            self.progress.report(away)
        except Exception as exc:  # noqa: BLE001 - Redis away too: nobody is waiting to hear
            logger.debug("could not report the record %s: %s", "away" if away else "back", exc)
            return
        self._reported_away = away

    def close(self) -> None:
        """Give back the worker's database connection (``run`` does, as it ends)."""
        if self.connection is not None:
            self.connection.close()

    def stop(self) -> None:
        self.stopping.set()

    def start_thread(self) -> threading.Thread:
        """Run beside the process's own work (an embedded server, the library, a test)."""
        return start_thread("ledger-worker", self.run)


def _database_down(exc: BaseException) -> bool:
    """Whether an outage is the database's (not Redis's), wherever in the chain it was met."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if database_down(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def yield_cpu() -> None:
    """Run this thread, and the threads it starts from now on, only on CPU time that nothing
    else wants (Linux's SCHED_IDLE; lowering one's own priority needs no privilege).

    Where the worker shares cores with API servers: the ledger is written behind, so a sale's
    requests should not wait for a core the worker holds. The price: under a load that leaves
    no core idle the worker writes next to nothing until the load eases, and entries wait in
    the outbox (`/readyz` names the ledger "degraded" past LEDGER_LAG_THRESHOLD_SECONDS).
    Not for sync durability, whose requests wait on the writer.
    """
    if not hasattr(os, "SCHED_IDLE"):
        raise RuntimeError("idle priority needs Linux (SCHED_IDLE)")
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


Rebuild = Callable[[str, str, str, list[str]], object]


def _cannot_rebuild(namespace: str, sku: str, gen: str, keys: list[str]) -> None:
    logger.error("ledger: %s/%s needs rebuilding from the ledger (allocation refresh)",
                 namespace, sku)


def _process_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def for_app(app: Application, batch_size: int = 1000, *, name: str | None = None,
            partitions: Sequence[int] | None = None) -> LedgerWorker:
    """A worker of ``app``; on PostgreSQL with a connection of its own, its batches written in
    two round trips (ledger_connection)."""
    connection: LedgerConnection | None = None
    units: Callable[[], BatchUnitOfWork] = app.uow_factory
    if app.engine is not None and app.engine.dialect.name == "postgresql":
        connection = LedgerConnection(app.engine)
        units = functools.partial(LedgerBatchUnitOfWork, connection)
    return LedgerWorker(app.outbox, units, app.ledger_progress, batch_size=batch_size,
                        claim_idle_ms=app.config.ledger_claim_idle_ms,
                        gather_seconds=0.0 if app.config.durability == "sync" else 0.02,
                        name=name, partitions=partitions, connection=connection,
                        rebuild=functools.partial(rebuild.replace_history, app.bus.services))


def split(app: Application, threads: int, batch_size: int = 1000,
          name: str | None = None) -> list[LedgerWorker]:
    """``threads`` workers sharing out the partitions: one writes to PostgreSQL while another
    reads Redis, which the GIL allows because both wait on sockets. Each is a consumer named
    after ``name`` (default: this process's own) and its share."""
    count = app.outbox.partitions
    name = name or _process_name()
    return [for_app(app, batch_size, name=f"{name}-{i}", partitions=range(i, count, threads))
            for i in range(max(1, min(threads, count)))]


def run(app: Application, threads: int = 1, name: str | None = None) -> None:
    """Run the workers until SIGTERM; if one of them fails, stop them all and raise, so the
    process exits and its supervisor restarts it rather than leaving partitions unwritten.
    Under the ``name`` it had before, a worker first writes the entries it had read then."""
    workers = split(app, threads, name=name)
    ProcessLoops([Loop(f"ledger-worker-{i}", w.run, w.stop) for i, w in enumerate(workers)],
                 if_one_ends="fail").run()
