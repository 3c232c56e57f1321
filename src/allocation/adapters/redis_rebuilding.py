"""The Redis counter's rebuilding: what a rebuild reads of many items at once (their seqs),
fences, and loads back from the record (figures, limits, buyers, holds, keys), in one script
call per partition where it can. A part of ``RedisCounter`` (the ``Rebuilding`` port)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC
from typing import Any

from allocation.adapters.counter import Allowances, Counter, Figures, Restored, fingerprint, unpack
from allocation.adapters.redis_batch import evalsha_many
from allocation.adapters.redis_client import RedisClient, unavailable_on_connection_error
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_scripts import reply_text as _text
from allocation.domain.model import LedgerEntry


class RedisRebuilding(Counter):
    """What ``RedisCounter`` sets up for these steps (its ``__init__``)."""

    client: RedisClient
    keys: KeySpace
    _ttl: int
    _limit: Any
    _fence_script: str
    _fence_sha: str
    _rebuild_script: str
    _rebuild_sha: str

    def load_many(self, figures: Iterable[Figures]) -> None:
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            for one in figures:
                namespace, sku, total, consumed, seq, gen, held = unpack(one)
                # "fenced" 0 rather than a second command to delete it: one command per item.
                # The figures come from the ledger, so it is written up to their seq.
                generation = ("gen", gen) if gen else ()
                pipe.execute_command(  # type: ignore[no-untyped-call]
                    "HSET", self.keys.item(namespace, sku), "total", total, "consumed",
                    consumed, "held", held, "seq", seq, "fenced", 0, "written", seq, *generation)
            pipe.execute()

    def load_allowances(self, namespace: str, allowances: Mapping[str, Allowances]) -> None:
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            for sku, (limit, buyers) in allowances.items():
                item, bought = self.keys.item(namespace, sku), self.keys.buyers(namespace, sku)
                if limit is None:
                    pipe.hdel(item, "limit")
                else:
                    pipe.hset(item, "limit", limit)
                pipe.delete(bought)
                if buyers:
                    units: dict[str | bytes, bytes | float | int | str] = {
                        b: n for b, n in buyers.items()}
                    pipe.hset(bought, mapping=units)
            pipe.execute()

    def set_limit(self, namespace: str, sku: str, limit: int | None) -> None:
        with unavailable_on_connection_error():
            self._limit(keys=[self.keys.item(namespace, sku)],
                        args=["" if limit is None else limit])

    def remember(self, entries: Sequence[LedgerEntry]) -> None:
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            self._remember(pipe, entries)
            pipe.execute()

    def _remember(self, pipe: Any, entries: Sequence[LedgerEntry]) -> None:
        """Queue on ``pipe`` the records of the movements' keys still in their window."""
        for key, record, left in self._records(entries, time.time()):
            pipe.set(key, record, ex=left, nx=True)

    def _records(self, entries: Sequence[LedgerEntry], now: float
                 ) -> Iterable[tuple[str, str, int]]:
        """Each keyed movement's key, its record and the seconds left of its window."""
        for e in entries:
            if e.idempotency_key is None or e.kind not in ("adjust", "decrement", "refund"):
                continue
            moment = e.created_at if e.created_at.tzinfo else e.created_at.replace(tzinfo=UTC)
            left = int(self._ttl - (now - moment.timestamp()))
            if left > 0:
                # seq 0: a movement the ledger holds, nothing to wait for.
                consumed = e.total_after - e.available_after - e.held_after
                yield (self.keys.idempotency(e.namespace, e.sku, e.idempotency_key),
                       f"{fingerprint(e.kind, e.qty, e.buyer)}|ok|{e.total_after}|"  # type: ignore[arg-type]
                       f"{consumed}|0||-1||{e.held_after}", left)

    # Arguments per rebuild call at most: a bigger call holds Redis up for longer at a time.
    REBUILD_CALL_ARGS = 20_000

    def seqs_many(self, namespace: str, skus: Sequence[str]) -> list[tuple[str, int] | None]:
        groups: dict[int, list[int]] = {}
        names: list[str] = []
        for i, sku in enumerate(skus):
            partition, name = self.keys.item_of(namespace, sku)
            groups.setdefault(partition, []).append(i)
            names.append(name)
        calls = [([names[i] for i in chunk], ["seqs"])
                 for members in groups.values()
                 for chunk in _chunks(members, self.REBUILD_CALL_ARGS)]
        found: list[tuple[str, int] | None] = [None] * len(skus)
        with unavailable_on_connection_error():
            replies = evalsha_many(self.client, self._rebuild_script, self._rebuild_sha, calls)
        chunks = [chunk for members in groups.values()
                  for chunk in _chunks(members, self.REBUILD_CALL_ARGS)]
        for chunk, reply in zip(chunks, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            for i, seq, gen in zip(chunk, reply[::2], reply[1::2], strict=True):
                if int(seq) >= 0:
                    found[i] = (_text(gen), int(seq))
        return found

    def restore_many(self, namespace: str, items: Sequence[Restored]) -> None:
        # One call per partition (or per REBUILD_CALL_ARGS of it), each item's keys, figures
        # and key records flat: a command per record cost the caller more than Redis's work.
        calls: dict[int, list[tuple[list[str], list[Any]]]] = {}
        now = time.time()
        for i in items:
            partition, *keys = self.keys.item_keys(namespace, i.sku)
            open_calls = calls.setdefault(partition, [])
            if not open_calls or len(open_calls[-1][1]) > self.REBUILD_CALL_ARGS:
                open_calls.append(([self.keys.due(partition)], ["load", namespace]))
            call_keys, args = open_calls[-1]
            records = list(self._records(i.keyed, now))
            call_keys.extend(keys)
            args.extend((i.sku, i.total, i.consumed, i.held, i.seq, i.gen,
                         "" if i.limit is None else i.limit, len(i.buyers), len(i.holds),
                         len(records), i.gate))
            for key, record, left in records:
                call_keys.append(key)
                args.extend((record, left))
            for buyer, units in i.buyers.items():
                args.extend((buyer, units))
            for rid, qty, buyer, expires_ms in i.holds:
                args.extend((rid, qty, buyer, expires_ms))
        flat = [call for group in calls.values() for call in group]
        with unavailable_on_connection_error():
            replies = evalsha_many(self.client, self._rebuild_script, self._rebuild_sha, flat)
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:
            raise failed[0]

    def fence_many(self, namespace: str, skus: Sequence[str]) -> list[int | None]:
        with unavailable_on_connection_error():
            replies = evalsha_many(self.client, self._fence_script, self._fence_sha,
                                   [([self.keys.item(namespace, sku)], []) for sku in skus])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [None if int(seq) < 0 else int(seq) for seq in replies]

    def unfence(self, namespace: str, sku: str) -> None:
        with unavailable_on_connection_error():
            self.client.hdel(self.keys.item(namespace, sku), "fenced")

    def forget(self, namespace: str, sku: str, keys: Sequence[str] = ()) -> None:
        with unavailable_on_connection_error():
            named = self.keys  # the item's own keys, not its partition's outbox and tally
            self.client.delete(named.item(namespace, sku), named.buyers(namespace, sku),
                               named.holds(namespace, sku), named.expiries(namespace, sku),
                               *(named.idempotency(namespace, sku, key) for key in keys))


def _chunks(members: list[int], size: int) -> list[list[int]]:
    return [members[at:at + size] for at in range(0, len(members), size)]
