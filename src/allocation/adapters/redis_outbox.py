"""The outbox on Redis Streams: one stream per partition, read by the ``ledger`` consumer group."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

from allocation.adapters.outbox import Outbox, OutboxEntry
from allocation.adapters.redis_client import (
    RedisClient,
    read_group,
    unavailable_on_connection_error,
)
from allocation.adapters.redis_consumer_group import ConsumerGroup, lost_group
from allocation.adapters.redis_keys import KeySpace

GROUP = "ledger"


def _entry(partition: int, entry_id: Any, f: dict[bytes, bytes]) -> OutboxEntry:
    """An entry as lib.lua's ``record`` writes it: one field ``m``, "seq qty total consumed kind
    ns_len sku_len gen buyer_len held rid_len expires_ms|" then the namespace, SKU, buyer,
    reservation id and key, unseparated (names may hold any character). A backlog an older
    writer left is read too: its head stops before the generation, or after the buyer's length
    (CHANGELOG, 0.9.0)."""
    id_ = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    if f and isinstance(next(iter(f)), str):  # a client made with decode_responses=True
        f = {k.encode(): v.encode() for k, v in f.items()}  # type: ignore[attr-defined]
    packed = f.get(b"m")
    if packed is None:
        return _fields_entry(partition, id_, f)
    head, _, names = packed.partition(b"|")
    seq, qty, total, consumed, kind, ns_len, sku_len, *rest = head.split(b" ")
    # rest: the generation, the buyer's length, held, the reservation id's length and a hold's
    # expiry; an older writer's entry has fewer
    ns_end = int(ns_len)
    sku_end = ns_end + int(sku_len)
    if len(rest) < 5:
        buyer_end = sku_end + (int(rest[1]) if len(rest) > 1 else 0)
        return OutboxEntry(
            id_, partition, names[:ns_end].decode(), names[ns_end:sku_end].decode(), int(seq),
            kind.decode(), int(qty), names[buyer_end:].decode() or None, int(total),
            int(consumed), rest[0].decode() or None if rest else None,
            names[sku_end:buyer_end].decode() or None)
    gen, buyer_len, held, rid_len, expires = rest[:5]
    buyer_end = sku_end + int(buyer_len)
    rid_end = buyer_end + int(rid_len)
    return OutboxEntry(
        id_, partition, names[:ns_end].decode(), names[ns_end:sku_end].decode(), int(seq),
        kind.decode(), int(qty), names[rid_end:].decode() or None, int(total), int(consumed),
        gen.decode() or None, names[sku_end:buyer_end].decode() or None, int(held),
        names[buyer_end:rid_end].decode() or None, int(expires))


def _fields_entry(partition: int, id_: str, f: dict[bytes, bytes]) -> OutboxEntry:
    # A field per value, as an older writer left it in a backlog: read, never written.
    key = f[b"key"]
    return OutboxEntry(
        id=id_, partition=partition, namespace=f[b"ns"].decode(), sku=f[b"sku"].decode(),
        seq=int(f[b"seq"]), kind=f[b"kind"].decode(), qty=int(f[b"qty"]),
        idempotency_key=key.decode() if key else None, total=int(f[b"total"]),
        consumed=int(f[b"consumed"]))


class RedisOutbox(Outbox):
    def __init__(self, client: RedisClient, keys: KeySpace) -> None:
        self.client = client
        self.keys = keys
        self.partitions = keys.partitions
        self.blocking_reads = not isinstance(client, RedisCluster)
        self.groups = [ConsumerGroup(client, keys.outbox(p), GROUP, keys.dead_letters(p))
                       for p in range(keys.partitions)]

    def read(self, partition: int, consumer: str, count: int) -> list[OutboxEntry]:
        group = self.groups[partition]
        with unavailable_on_connection_error():
            group.ensure()
            try:
                for start in ("0", ">"):  # what this consumer holds unacknowledged, then new
                    entries = [_entry(partition, i, f)
                               for i, f in group.read(consumer, start, count) if f]
                    if entries:
                        return entries
            except redis.ResponseError as exc:
                if not lost_group(exc):
                    raise
                group.lost()
        return []

    def read_new(self, partitions: Sequence[int], consumer: str, count: int,
                 block_ms: int = 0) -> list[list[OutboxEntry]]:
        if block_ms and partitions and not isinstance(self.client, RedisCluster):
            return self._read_new_blocking(partitions, consumer, count, block_ms)
        # One pipeline, not one XREADGROUP of many streams: a cluster keeps partitions on
        # different nodes, and its pipeline routes each read to its own.
        with unavailable_on_connection_error():
            for partition in partitions:
                self.groups[partition].ensure()
            pipe = self.client.pipeline(transaction=False)
            for partition in partitions:
                read_group(self.client, GROUP, consumer, self.keys.outbox(partition), ">",
                           count, via=pipe)
            replies = pipe.execute(raise_on_error=False)
        found: list[list[OutboxEntry]] = []
        for partition, reply in zip(partitions, replies, strict=True):
            if isinstance(reply, Exception):
                if not lost_group(reply):
                    raise reply
                self.groups[partition].lost()
                reply = None
            found.append([_entry(partition, i, f) for _, items in reply or [] for i, f in items
                          if f])
        return found

    def _read_new_blocking(self, partitions: Sequence[int], consumer: str, count: int,
                           block_ms: int) -> list[list[OutboxEntry]]:
        """One XREADGROUP of every stream (one Redis holds them all), returning as soon as any
        has an entry: an idle writer wakes at once when a movement is recorded."""
        streams = {self.keys.outbox(p): ">" for p in partitions}
        with unavailable_on_connection_error():
            for partition in partitions:
                self.groups[partition].ensure()
            try:
                reply = self.client.xreadgroup(GROUP, consumer, streams, count=count,
                                               block=block_ms)
            except redis.ResponseError as exc:
                # NOGROUP, or UNBLOCKED: a stream went while the read waited on it
                if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    raise
                for group in self.groups:
                    group.lost()
                return [[] for _ in partitions]
        by_stream = {(name.decode() if isinstance(name, bytes) else name): items
                     for name, items in reply or []}
        return [[_entry(p, i, f) for i, f in by_stream.get(self.keys.outbox(p), []) if f]
                for p in partitions]

    def claim_stale(self, partition: int, consumer: str, min_idle_ms: int,
                    count: int) -> list[OutboxEntry]:
        group = self.groups[partition]
        with unavailable_on_connection_error():
            group.ensure()
            try:
                entries = group.claim_idle(consumer, min_idle_ms, count, resume=False)
            except redis.ResponseError as exc:
                if not lost_group(exc):
                    raise
                group.lost()
                return []
        return [_entry(partition, i, f) for i, f in entries if f]

    def ack(self, partition: int, ids: list[str]) -> None:
        with unavailable_on_connection_error():
            self.groups[partition].ack(ids)  # the ledger has them; the stream keeps the backlog

    def dead_letter(self, entry: OutboxEntry, reason: str) -> None:
        with unavailable_on_connection_error():
            self.groups[entry.partition].dead_letter({
                "entry": entry.id, "ns": entry.namespace, "sku": entry.sku,
                "seq": entry.seq, "kind": entry.kind, "qty": entry.qty,
                "key": entry.idempotency_key or "", "total": entry.total,
                "consumed": entry.consumed, "reason": reason})

    def backlog(self) -> tuple[int, float]:
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            for p in range(self.partitions):
                pipe.xlen(self.keys.outbox(p))
                pipe.xrange(self.keys.outbox(p), count=1)
            replies = pipe.execute()
        lengths, firsts = replies[0::2], replies[1::2]
        oldest_ms = min((int(first[0][0].split(b"-")[0]) for first in firsts if first),
                        default=None)
        age = 0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000)
        return sum(lengths), age

    def pending(self, namespace: str) -> dict[str, OutboxEntry]:
        latest: dict[str, OutboxEntry] = {}
        with unavailable_on_connection_error():
            for p in range(self.partitions):
                for entry_id, fields in self.client.xrange(self.keys.outbox(p)):
                    entry = _entry(p, entry_id, fields)
                    if entry.namespace == namespace:
                        latest[entry.sku] = entry
        return latest

    def latest(self, namespace: str, sku: str) -> OutboxEntry | None:
        partition = self.keys.partition(namespace, sku)
        found = None
        with unavailable_on_connection_error():
            for entry_id, fields in self.client.xrange(self.keys.outbox(partition)):
                entry = _entry(partition, entry_id, fields)
                if (entry.namespace, entry.sku) == (namespace, sku):
                    found = entry
        return found
