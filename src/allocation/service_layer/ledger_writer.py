"""Writes outbox entries to the ledger, in one transaction per batch.

An entry is applied when its seq is the item's next one: a replay (seq already written) is a
no-op, and an entry that arrives early (another worker holds the ones before it) waits. So any
number of workers may share the outbox, and a crash anywhere only replays entries. An entry
recorded under a counter generation the item no longer follows (Redis lost that history and the
counter was rebuilt from the database) is never written: its seq now belongs to another.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from allocation.adapters.outbox import OutboxEntry
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
        for (namespace, sku) in sorted(by_item):
            item = locked.get((namespace, sku))
            if item is None:
                result.orphans.extend(by_item[(namespace, sku)])
                continue
            applied, expected, gen = [], item.last_seq + 1, item.counter_gen
            for entry in sorted(by_item[(namespace, sku)], key=lambda e: e.seq):
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
