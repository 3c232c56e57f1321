"""A Redis Streams consumer group, the one way the service reads a stream reliably (the outbox's
partitions, the command stream): read what this consumer holds or what is new, claim what
another consumer left idle, acknowledge (and delete: a stream keeps only what is unanswered),
count deliveries and set entries aside in a dead-letter stream."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import redis

from allocation.adapters.redis_client import RedisClient, read_group

Entry = tuple[Any, Any]  # an entry's id and fields, as redis-py answers them


def entry_id(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def lost_group(exc: BaseException) -> bool:
    """Whether a failure means the group is gone (Redis lost its data): make it again."""
    return isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc)


class ConsumerGroup:
    def __init__(self, client: RedisClient, stream: str, group: str,
                 dead_letters: str | None = None) -> None:
        self.client, self.stream, self.group = client, stream, group
        self.dead_letters = dead_letters or f"{stream}:dead"
        self.ready = False  # the group is known to exist
        self._claim_cursor: Any = "0-0"

    def ensure(self) -> None:
        """Make the group (and the stream) unless it is known to exist."""
        if self.ready:
            return
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.ready = True

    def lost(self) -> None:
        """The group was found gone: the next ``ensure`` makes it again."""
        self.ready = False

    def read(self, consumer: str, start: str, count: int,
             block_ms: int | None = None) -> list[Entry]:
        """Entries from ``start``: ">" for new ones (waiting up to ``block_ms`` for them), an
        id for those this consumer holds unacknowledged after it."""
        reply = read_group(self.client, self.group, consumer, self.stream, start, count,
                           block_ms)
        return [(i, f) for _, items in reply or [] for i, f in items]

    def read_held(self, consumer: str, count: int, most: int) -> Iterator[list[Entry]]:
        """What this consumer holds unacknowledged, in batches of ``count`` (at most ``most``),
        each read once the one before was handled."""
        start = "0"
        for _ in range(most):
            entries = self.read(consumer, start, count)
            if not entries:
                return
            yield entries
            start = entry_id(entries[-1][0])
            if len(entries) < count:
                return

    def claim_idle(self, consumer: str, min_idle_ms: int, count: int,
                   resume: bool = True) -> list[Entry]:
        """Take over entries other consumers have held for ``min_idle_ms``. With ``resume``,
        each call goes on from where the last stopped, so a long pending list is gone over in
        turn; otherwise from its start."""
        start = self._claim_cursor if resume else "0-0"
        cursor, entries, *_ = self.client.xautoclaim(self.stream, self.group, consumer,
                                                     min_idle_time=min_idle_ms,
                                                     start_id=start, count=count)
        if resume:
            self._claim_cursor = cursor
        return list(entries)

    def deliveries(self, entries: Sequence[Entry], discount: str | None = None
                   ) -> dict[str, int]:
        """How many times each entry has been delivered, this delivery included; less those
        counted in the hash ``discount`` (deliveries that are nobody's fault), but at least 1."""
        pipe = self.client.pipeline(transaction=False)
        for raw_id, _ in entries:
            pipe.xpending_range(self.stream, self.group, min=raw_id, max=raw_id, count=1)
        if discount is not None:
            pipe.hmget(discount, [entry_id(raw_id) for raw_id, _ in entries])
        replies = pipe.execute()
        pending = replies[:len(entries)]
        found: dict[str, int] = {}
        for rows in pending:
            for row in rows:
                found[entry_id(row["message_id"])] = int(row["times_delivered"])
        if discount is not None:
            for (raw_id, _), waited in zip(entries, replies[-1], strict=True):
                if waited is not None and entry_id(raw_id) in found:
                    found[entry_id(raw_id)] = max(1, found[entry_id(raw_id)] - int(waited))
        return found

    def ack(self, ids: Sequence[Any], forget: str | None = None) -> None:
        """Acknowledge and delete ``ids`` (answered: keep the stream to what is not), and drop
        them from the hash ``forget``."""
        if not ids:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.stream, self.group, *ids)
        pipe.xdel(self.stream, *ids)
        if forget is not None:
            pipe.hdel(forget, *[entry_id(i) for i in ids])
        pipe.execute()

    def dead_letter(self, fields: Mapping[str, Any]) -> None:
        """Set an entry aside, as ``fields``, in the dead-letter stream."""
        self.client.xadd(self.dead_letters, dict(fields))
