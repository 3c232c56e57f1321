"""The Redis counter's rebuilding: what a rebuild reads of many items at once (their seqs),
fences, and loads back from the record (figures, limits, buyers, holds, keys), in one script
call per partition where it can. A part of ``RedisCounter`` (the ``Rebuilding`` port)."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from allocation.adapters.counter import Allowances, Counter, Restored
from allocation.adapters.redis_client import RedisClient, unavailable_on_connection_error
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_scripts import evalsha_many, fingerprint
from allocation.adapters.redis_scripts import reply_text as _text
from allocation.domain.outcome import Figures


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

    def load_many(self, namespace: str, figures: Iterable[tuple[str, Figures]]) -> None:
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            for sku, f in figures:
                # "fenced" 0 rather than a second command to delete it: one command per item.
                # The figures come from the ledger, so it is written up to their seq.
                generation = ("gen", f.gen) if f.gen else ()
                pipe.execute_command(  # type: ignore[no-untyped-call]
                    "HSET", self.keys.item(namespace, sku), "total", f.total, "consumed",
                    f.consumed, "held", f.held, "seq", f.seq, "fenced", 0, "written", f.seq,
                    *generation)
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

    # Arguments per rebuild call at most (about: an item's rows go with it): a bigger call
    # holds Redis up for longer at a time.
    REBUILD_CALL_ARGS = 20_000

    def seqs_many(self, namespace: str, skus: Sequence[str]) -> list[tuple[str, int] | None]:
        calls, positions = [], []
        for partition, members in self._by_partition(namespace, skus, [1] * len(skus)):
            calls.append((self.keys.items_in(partition, namespace, [skus[i] for i in members]),
                          ["seqs"]))
            positions.append(members)
        found: list[tuple[str, int] | None] = [None] * len(skus)
        with unavailable_on_connection_error():
            replies = evalsha_many(self.client, self._rebuild_script, self._rebuild_sha, calls)
        for members, reply in zip(positions, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            for at, seq, gen in zip(reply[::3], reply[1::3], reply[2::3], strict=True):
                found[members[int(at) - 1]] = (_text(gen), int(seq))
        return found

    def restore_many(self, namespace: str, items: Restored) -> None:
        # One call per partition (or per REBUILD_CALL_ARGS of it), its items' keys, then its
        # arguments a column at a time: a list per column, cut from the batch's columns, with
        # no object per item (ADR 0042).
        skus = items.skus
        units, holds, keyed = items.units, items.holds, items.keyed
        rows = collections.Counter(itertools.chain(units[0], holds[0], keyed[0])).get
        weights = [7 + 5 * rows(sku, 0) for sku in skus]
        calls: list[_Load] = []
        where: dict[str, tuple[_Load, int]] = {}
        for partition, members in self._by_partition(namespace, skus, weights):
            call = _Load(partition, members, [], [], [], [], [], [], [], [], [], [], [])
            calls.append(call)
            for position, i in enumerate(members, 1):
                where[skus[i]] = (call, position)
        for sku, buyer, n in zip(*units, strict=True):
            call, position = where[sku]
            call.u_items.append(position)
            call.u_buyers.append(buyer)
            call.u_units.append(n)
        for sku, rid, qty, buyer, expires in zip(*holds, strict=True):
            call, position = where[sku]
            call.h_items.append(position)
            call.h_rids.append(rid)
            call.h_qtys.append(qty)
            call.h_buyers.append(buyer)
            call.h_expires.append(expires)
        now = time.time()
        for sku, key, kind, qty, buyer, total, available, held, created in zip(*keyed,
                                                                              strict=True):
            left = int(self._ttl - (now - created / 1_000_000))
            if left > 0 and kind in ("adjust", "decrement", "refund"):
                call, _ = where[sku]
                call.keys.append(self.keys.idempotency_in(call.partition, namespace, sku, key))
                call.records.append(_record(kind, qty, buyer, total, total - available - held,
                                            held))
                call.lefts.append(left)
        flat = [self._load_call(namespace, items, call) for call in calls]
        with unavailable_on_connection_error():
            replies = evalsha_many(self.client, self._rebuild_script, self._rebuild_sha, flat)
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:
            raise failed[0]

    def _load_call(self, namespace: str, items: Restored, call: _Load
                   ) -> tuple[list[str], list[Any]]:
        """rebuild.lua's ``load`` of the call's items and rows (see the script)."""
        members, skus = call.members, [items.skus[i] for i in call.members]
        keys = [self.keys.due(call.partition), *self.keys.items_in(call.partition, namespace, skus),
                *self.keys.parts_in(call.partition, namespace, skus), *call.keys]
        gated = [(position, gate) for position, i in enumerate(members, 1)
                 if (gate := items.gates[i])]
        args: list[Any] = ["load", namespace, items.gen, len(members), len(gated),
                           len(call.u_items), len(call.h_items), len(call.keys), *skus]
        for column in (items.totals, items.consumed, items.held, items.seqs):
            args += [column[i] for i in members]
        args += ["" if (limit := items.limits[i]) is None else limit for i in members]
        args += [position for position, _ in gated]  # the gated few
        args += [gate for _, gate in gated]
        for rows in (call.u_items, call.u_buyers, call.u_units, call.h_items, call.h_rids,
                     call.h_qtys, call.h_buyers, call.h_expires, call.records, call.lefts):
            args += rows
        return keys, args

    def _by_partition(self, namespace: str, skus: Sequence[str], weights: Sequence[int]
                      ) -> list[tuple[int, list[int]]]:
        """The positions of ``skus`` by partition, each partition's cut where their weights
        (arguments) pass REBUILD_CALL_ARGS."""
        groups: dict[int, list[list[int]]] = {}
        sizes: dict[int, int] = {}
        for i, partition in enumerate(self.keys.partitions_of(namespace, skus)):
            chunks = groups.get(partition)
            if chunks is None or sizes[partition] > self.REBUILD_CALL_ARGS:
                groups.setdefault(partition, []).append([])
                chunks, sizes[partition] = groups[partition], 0
            chunks[-1].append(i)
            sizes[partition] += weights[i]
        return [(partition, chunk) for partition, chunks in groups.items() for chunk in chunks]

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


@dataclasses.dataclass
class _Load:
    """One load call: a partition's items (positions in the batch) and their rows."""

    partition: int
    members: list[int]
    u_items: list[int]
    u_buyers: list[str]
    u_units: list[int]
    h_items: list[int]
    h_rids: list[str]
    h_qtys: list[int]
    h_buyers: list[str]
    h_expires: list[int]
    keys: list[str]
    records: list[str]
    lefts: list[int]


def _record(kind: str, qty: int, buyer: str | None, total: int, consumed: int,
            held: int) -> str:
    """A movement's key record as move.lua keeps it, seq 0: a movement the ledger holds,
    nothing to wait for."""
    return f"{fingerprint(kind, qty, buyer)}|ok|{total}|{consumed}|0||-1||{held}"  # type: ignore[arg-type]
