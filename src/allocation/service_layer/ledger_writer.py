"""Writes outbox entries to the ledger, in one transaction per batch.

An entry is applied when its seq is the item's next one: a replay (seq already written) is a
no-op, and an entry that arrives early (another worker holds the ones before it) waits. So any
number of workers may share the outbox, and a crash anywhere only replays entries. An entry
recorded under a counter generation the item no longer follows (Redis lost that history and the
counter was rebuilt from the database) is never written: its seq now belongs to another.

An entry whose seq the ledger holds under another movement, in the generation the item follows,
is no replay: Redis lost history while keeping the item (a failover to a lagging replica rolled
its seq back) and sold again from an older state. It is set aside, the item's later entries with
it, and the item is named ``diverged``: its counter must be rebuilt from the ledger, which makes
those entries stale (docs/adr/0036-a-counter-that-rolled-back-is-rebuilt-by-the-writer.md).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from allocation.adapters.outbox import OutboxEntry
from allocation.domain.model import InventoryItem, LedgerEntry
from allocation.domain.rules import KINDS
from allocation.service_layer.unit_of_work import BatchUnitOfWork

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    written: int = 0
    done: list[str] = field(default_factory=list)  # ids to acknowledge
    waiting: int = 0  # entries whose predecessors are not written yet
    drifted: int = 0  # written, but the rules disagreed with the fast path
    orphans: list[OutboxEntry] = field(default_factory=list)  # no such item in the database
    stale: list[OutboxEntry] = field(default_factory=list)  # of a history Redis lost
    # Items whose counter parted from the ledger's history, with the entries of that history
    # this batch met (set aside, never written).
    diverged: dict[tuple[str, str], list[OutboxEntry]] = field(default_factory=dict)
    # Each item's (generation, last seq in the ledger) once the batch is committed.
    marks: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)


def write_batch(entries: list[OutboxEntry], uow: BatchUnitOfWork) -> BatchResult:
    result = BatchResult()
    by_item: dict[tuple[str, str], list[OutboxEntry]] = defaultdict(list)
    for entry in entries:
        by_item[(entry.namespace, entry.sku)].append(entry)
    with uow:
        # One statement locks the batch's rows, in one order for every worker: no deadlocks.
        locked = uow.items.lock_many(list(by_item))
        written = _written_before(uow, locked, by_item)
        for (namespace, sku) in sorted(by_item):
            item = locked.get((namespace, sku))
            if item is None:
                result.orphans.extend(by_item[(namespace, sku)])
                continue
            applied, expected, gen = [], item.last_seq + 1, item.counter_gen
            entries = sorted(by_item[(namespace, sku)], key=lambda e: e.seq)
            if any(_parted(e, written, gen) for e in entries):
                for e in entries:
                    if gen and e.gen and e.gen != gen:
                        result.stale.append(e)
                    elif e.seq < expected and not _parted(e, written, gen):
                        result.done.append(e.id)  # a replay after all
                    else:
                        result.diverged.setdefault((namespace, sku), []).append(e)
                continue
            for entry in entries:
                if entry.seq < expected:
                    result.done.append(entry.id)  # written before: a replay
                elif gen and entry.gen and entry.gen != gen:
                    result.stale.append(entry)
                elif entry.seq == expected and entry.kind in KINDS:
                    applied.append(entry)
                    expected += 1
                else:
                    result.waiting += 1
            for seq in item.record_many(applied):
                result.drifted += 1
                logger.error("ledger: %s/%s seq %d disagrees with the rules; recorded as "
                             "acknowledged", namespace, sku, seq)
            result.done.extend(entry.id for entry in applied)
            result.written += len(applied)
            result.marks[(namespace, sku)] = (gen or "", item.last_seq)
        uow.commit()
    return result


def _written_before(uow: BatchUnitOfWork, locked: dict[tuple[str, str], InventoryItem],
                    by_item: dict[tuple[str, str], list[OutboxEntry]]
                    ) -> dict[tuple[str, str, int], LedgerEntry]:
    """The ledger's rows at the seqs of entries it is past (replays, mostly): read only where
    there are such entries, which a running sale has none of."""
    wanted = [(e.namespace, e.sku, e.seq) for key, entries in by_item.items()
              if (item := locked.get(key)) is not None
              for e in entries if e.seq <= item.last_seq]
    return uow.items.entries_at(wanted) if wanted else {}


def _parted(entry: OutboxEntry, written: dict[tuple[str, str, int], LedgerEntry],
            gen: str | None) -> bool:
    """Whether the ledger holds another movement at the entry's seq, of the generation the item
    follows: the counter's history parted from the ledger's."""
    row = written.get((entry.namespace, entry.sku, entry.seq))
    if row is None or (gen and entry.gen and entry.gen != gen):
        return False
    return (row.kind, row.qty, row.idempotency_key, row.reservation_id, row.total_after,
            row.available_after) != (entry.kind, entry.qty, entry.idempotency_key,
                                     entry.reservation_id, entry.total,
                                     entry.total - entry.consumed - entry.held)
