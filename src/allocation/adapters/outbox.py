"""The outbox port: movements the counter recorded, waiting to be written to the ledger."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import NamedTuple


class OutboxEntry(NamedTuple):
    # A tuple: built for every entry the ledger writes, and cheaper so than a frozen dataclass.
    id: str
    partition: int
    namespace: str
    sku: str
    seq: int
    kind: str
    qty: int
    idempotency_key: str | None
    total: int
    consumed: int
    gen: str | None = None  # the counter's generation when recorded (None: an older writer's)
    buyer: str | None = None  # the buyer the movement named (None: none, or an older writer's)
    held: int = 0  # units held after it
    reservation_id: str | None = None  # a hold's movements: the reservation
    expires_ms: int = 0  # a hold: when it expires (epoch ms, Redis's clock)


class Outbox(abc.ABC):
    partitions: int
    blocking_reads: bool = False  # read_new can wait for the first new entry itself

    @abc.abstractmethod
    def read(self, partition: int, consumer: str, count: int) -> list[OutboxEntry]:
        """This consumer's unacknowledged entries first, then new ones, in recorded order."""

    def read_new(self, partitions: Sequence[int], consumer: str, count: int,
                 block_ms: int = 0) -> list[list[OutboxEntry]]:
        """Entries no consumer was given yet, of each partition (at once where the store can).
        ``block_ms``: where none has any, wait up to that long for the first (where the store
        can; elsewhere the caller's pause does)."""
        return [self.read(partition, consumer, count) for partition in partitions]

    @abc.abstractmethod
    def claim_stale(self, partition: int, consumer: str, min_idle_ms: int,
                    count: int) -> list[OutboxEntry]:
        """Take over entries another consumer was given and left unacknowledged (it died)."""

    @abc.abstractmethod
    def ack(self, partition: int, ids: list[str]) -> None:
        """Written to the ledger: drop them."""

    @abc.abstractmethod
    def dead_letter(self, entry: OutboxEntry, reason: str) -> None:
        """Set aside an entry that cannot be written, for an operator; then ``ack`` it."""

    @abc.abstractmethod
    def backlog(self) -> tuple[int, float]:
        """(entries not yet written, age in seconds of the oldest)."""

    @abc.abstractmethod
    def pending(self, namespace: str) -> dict[str, OutboxEntry]:
        """The latest unwritten entry of each item of a namespace."""

    @abc.abstractmethod
    def latest(self, namespace: str, sku: str) -> OutboxEntry | None:
        """The latest unwritten entry of one item (reads that item's partition)."""
