"""The Redis counter: one Lua script per operation, atomic per item, loaded once (EVALSHA)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC
from typing import Any

from redis.cluster import RedisCluster

from allocation.adapters import redis_carts
from allocation.adapters.counter import (
    Allowances,
    Counter,
    Figures,
    Hold,
    Line,
    Reserved,
    Restored,
    Step,
    fingerprint,
    unpack,
)
from allocation.adapters.redis_batch import ScriptBatcher, evalsha_many
from allocation.adapters.redis_client import RedisClient, unavailable_on_connection_error
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_scripts import lua
from allocation.domain.model import LedgerEntry
from allocation.domain.outcome import OK, Outcome
from allocation.domain.rules import Kind


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _figures(flat: Sequence[Any]) -> tuple[Outcome, ...]:
    """Items' figures as the reservation scripts answer them, six values an item."""
    return tuple(Outcome(OK, int(flat[i]), int(flat[i + 1]), held=int(flat[i + 2]),
                         seq=int(flat[i + 3]), gen=_text(flat[i + 4]),
                         limit=int(flat[i + 5]) if flat[i + 5] else None)
                 for i in range(0, len(flat), 6))


class RedisCounter(Counter):
    def __init__(self, client: RedisClient, keys: KeySpace,
                 idempotency_ttl: int = 48 * 3600, events_channel: str | None = None,
                 refusal_ttl: int = 300) -> None:
        self.client = client
        self.keys = keys
        self._ttl = self.idempotency_ttl = idempotency_ttl
        self._refusal_ttl = min(refusal_ttl, idempotency_ttl)
        # Publishing from the script saves a round trip per movement.
        self.events_channel = events_channel or ""
        self.publishes_events = bool(events_channel)
        # EVALSHA, reloading the script on NOSCRIPT; concurrent movements share round trips.
        self._move = ScriptBatcher(client, lua("move"))
        self._fence_script = lua("fence")
        self._fence_sha = hashlib.sha1(self._fence_script.encode()).hexdigest()
        self._limit = self.client.register_script(lua("limit"))
        self._restore = self.client.register_script(lua("restore"))
        self._rebuild_script = lua("rebuild")
        self._rebuild_sha = hashlib.sha1(self._rebuild_script.encode()).hexdigest()
        # A reservation's lines and buyer never change once held: the steps after the hold
        # (confirm, release...) in this process skip reading them back.
        self._lines: dict[tuple[str, str], tuple[tuple[Line, ...], str | None]] = {}
        # Concurrent reservation steps share round trips too.
        self._reserve = ScriptBatcher(client, lua("reserve"))
        self._part = ScriptBatcher(client, lua("part"))
        self._sweep = self.client.register_script(lua("sweep"))
        self._claim = self.client.register_script(lua("claim"))
        self._key_claim = ScriptBatcher(client, lua("keyclaim"))
        # This process's idea of the scripts' clock, to find holds past their expiry: the wall
        # clock, or the moment a test stopped the scripts' clock at (tests/helpers).
        self.clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)

    def apply(self, namespace: str, sku: str, kind: Kind, qty: int,
              idempotency_key: str | None, *, record: bool = False,
              buyer: str | None = None) -> Outcome:
        keys = self._item_keys(namespace, sku)
        if idempotency_key is not None:
            keys.append(self.keys.idempotency(namespace, sku, idempotency_key))
        with unavailable_on_connection_error():
            reply: Any = self._move(keys=keys, args=[
                kind, qty, fingerprint(kind, qty, buyer), self._ttl, "1" if record else "0",
                namespace, sku, idempotency_key or "", self.events_channel,
                self._refusal_ttl, buyer or ""])
        status, total, consumed, replayed, seq, gen, remaining, limit, held = reply
        return Outcome(_text(status), int(total), int(consumed), replayed=bool(replayed),
                       seq=int(seq), gen=_text(gen),
                       remaining=None if int(remaining) < 0 else int(remaining),
                       limit=int(limit) if limit else None, held=int(held))

    def _item_keys(self, namespace: str, sku: str) -> list[str]:
        keys = self.keys
        return [keys.item(namespace, sku), keys.outbox_of(namespace, sku),
                keys.buyers(namespace, sku), keys.holds(namespace, sku),
                keys.expiries(namespace, sku), keys.tally_of(namespace, sku)]

    def reservation_id(self, namespace: str, seed: str) -> str:
        # The reservation lives in a slot its key names (never its lines: another body under
        # the key must meet it there); its id says which.
        opaque = super().reservation_id(namespace, seed)
        return f"{self.keys.partition(namespace, chr(0) + seed)}.{opaque}"

    def _reservation_key(self, namespace: str, reservation_id: str) -> str | None:
        partition, dot, _ = reservation_id.partition(".")
        if not dot or not partition.isdigit() or int(partition) >= self.keys.partitions:
            return None
        return self.keys.reservation(namespace, int(partition), reservation_id)

    def reservation_step(self, step: Step, namespace: str, reservation_id: str,
                         lines: Sequence[Line], *, ttl_ms: int = 0, buyer: str | None = None,
                         fingerprint: str = "", idempotency_key: str | None = None,
                         open_cap: int = 0) -> Reserved:
        if self._reservation_key(namespace, reservation_id) is None:
            return Reserved("not_found")
        apart = self._open_apart(namespace, self._where(namespace, reservation_id, lines), buyer)
        claimed = 0
        if apart is not None and step == "hold" and open_cap > 0:
            with unavailable_on_connection_error():
                claimed = int(self._claim(keys=[apart], args=[reservation_id, open_cap, ttl_ms]))
            open_cap = open_cap if claimed else -open_cap
        result = self._step(step, namespace, reservation_id, lines, ttl_ms, buyer, fingerprint,
                            idempotency_key or "", open_cap)
        if apart is not None and (
                (claimed == 2 and (not result.ok or result.replayed))
                or (step in ("confirm", "release") and result.ok)):
            # Not a new hold after all, or one ended: no longer among the buyer's open ones.
            with unavailable_on_connection_error():
                self.client.zrem(apart, reservation_id)
        if step == "hold" and result.ok and result.state == "held":
            if len(self._lines) >= 100_000:
                self._lines.clear()
            self._lines[(namespace, reservation_id)] = (tuple(lines), buyer or None)
        return result

    def _step(self, step: Step, namespace: str, reservation_id: str, lines: Sequence[Line],
              ttl_ms: int, buyer: str | None, fingerprint: str, key: str,
              open_cap: int) -> Reserved:
        if isinstance(self.client, RedisCluster):
            home = int(reservation_id.partition(".")[0])
            where = self._where(namespace, reservation_id, lines)
            if where != home:
                if step == "hold" and not self._claim_key(namespace, reservation_id, lines,
                                                          buyer, fingerprint):
                    return Reserved("idempotency_key_reused")
                return self.home_step(step, namespace, reservation_id, lines, ttl_ms=ttl_ms,
                                      buyer=buyer, fingerprint=fingerprint, key=key,
                                      open_cap=open_cap, at=where)
            if any(self.keys.partition(namespace, sku) != home for sku, _ in lines):
                return redis_carts.step(self, step, namespace, reservation_id, lines,
                                        ttl_ms=ttl_ms, buyer=buyer, fingerprint=fingerprint,
                                        key=key, open_cap=open_cap)
        return self.home_step(step, namespace, reservation_id, lines, ttl_ms=ttl_ms,
                              buyer=buyer, fingerprint=fingerprint, key=key, open_cap=open_cap)

    def home_step(self, op: str, namespace: str, reservation_id: str, lines: Sequence[Line],
                  *, ttl_ms: int = 0, buyer: str | None = None, fingerprint: str = "",
                  whole: bool = True, every_line: Sequence[Line] = (),
                  refusal: tuple[str, str, int] = ("", "", -1), key: str = "",
                  open_cap: int = 0, at: int | None = None) -> Reserved:
        """One reserve.lua step: the reservation and its ``lines`` in its slot (on one Redis,
        all of them); ``at``: the partition it lives in, where not its key's."""
        assert self._reservation_key(namespace, reservation_id) is not None
        partition = int(reservation_id.partition(".")[0]) if at is None else at
        home = self.keys.reservation(namespace, partition, reservation_id)
        open_key = self._open_key(namespace, partition, buyer)
        if open_key is None:  # a placeholder in the slot: the set is not counted here
            open_key, open_cap = home, min(open_cap, 0)
        keys = [home, self.keys.due(partition), open_key]
        listed = " ".join(f"{sku} {qty}" for sku, qty in (every_line or lines))
        args: list[Any] = [op, reservation_id, namespace, self.events_channel, ttl_ms,
                           buyer or "", fingerprint, self._ttl * 1000, self._refusal_ttl * 1000,
                           "1" if whole else "0", listed, *refusal, key, open_cap]
        for sku, qty in lines:
            keys += self._item_keys(namespace, sku)
            args += [sku, qty]
        with unavailable_on_connection_error():
            reply: Any = self._reserve(keys=keys, args=args)
        status, state, created, expires, sku, detail, replayed, *flat = reply
        return Reserved(_text(status), _text(state), int(created), int(expires),
                        _text(sku) or None, None if int(detail) < 0 else int(detail),
                        bool(replayed), _figures(flat))

    def _open_key(self, namespace: str, partition: int, buyer: str | None) -> str | None:
        """The buyer's open reservations, where a step in ``partition`` may touch them."""
        if not buyer:
            return None
        key = self.keys.open_reservations(namespace, buyer)
        if isinstance(self.client, RedisCluster) and self.keys.partition(
                namespace, chr(0) + buyer) != partition:
            return None
        return key

    def _where(self, namespace: str, reservation_id: str, lines: Sequence[Line]) -> int:
        """The partition a reservation lives in: its key's, but on a cluster a cart whose lines
        share one other slot lives there, with them (one script a step), and its key's slot
        keeps only the key's claim (keyclaim.lua)."""
        home = int(reservation_id.partition(".")[0])
        if isinstance(self.client, RedisCluster) and lines:
            slots = {self.keys.partition(namespace, sku) for sku, _ in lines}
            if len(slots) == 1:
                return slots.pop()
        return home

    def _claim_key(self, namespace: str, reservation_id: str, lines: Sequence[Line],
                   buyer: str | None, fingerprint: str) -> bool:
        """Claim the key for this request in the key's slot (False: another request has it)."""
        claim = self.keys.reservation(namespace, int(reservation_id.partition(".")[0]),
                                      reservation_id)
        listed = " ".join(f"{sku} {qty}" for sku, qty in lines)
        # As long as the reservation may live, and its key be remembered after.
        keep_ms = (86_400 + self._ttl) * 1000
        with unavailable_on_connection_error():
            return bool(self._key_claim(keys=[claim], args=[fingerprint, listed, buyer or "",
                                                            keep_ms]))

    def _open_apart(self, namespace: str, partition: int, buyer: str | None) -> str | None:
        """The buyer's open reservations where they are in another cluster slot than the
        reservation's ``partition`` (counted by claim.lua then, not in the hold's step)."""
        if not buyer or not isinstance(self.client, RedisCluster):
            return None
        if self.keys.partition(namespace, chr(0) + buyer) == partition:
            return None
        return self.keys.open_reservations(namespace, buyer)

    def part_step(self, op: str, namespace: str, reservation_id: str, lines: Sequence[Line],
                  expires_ms: int, buyer: str | None = None, key: str = "") -> Reserved:
        """One part.lua step: a cart's lines in one slot other than its reservation's."""
        partition = self.keys.partition(namespace, lines[0][0])
        keys = [self.keys.due(partition)]
        args: list[Any] = [op, reservation_id, namespace, self.events_channel, expires_ms,
                           buyer or "", key]
        for sku, qty in lines:
            keys += self._item_keys(namespace, sku)
            args += [sku, qty]
        with unavailable_on_connection_error():
            reply: Any = self._part(keys=keys, args=args)
        status, sku, detail, *flat = reply
        return Reserved(_text(status), sku=_text(sku) or None,
                        detail=None if int(detail) < 0 else int(detail), figures=_figures(flat))

    def restore_reservation(self, namespace: str, reservation_id: str, lines: Sequence[Line],
                            buyer: str | None, state: str, created_ms: int, expires_ms: int,
                            fingerprint: str = "") -> None:
        assert self._reservation_key(namespace, reservation_id) is not None
        where = self._where(namespace, reservation_id, lines)
        home = self.keys.reservation(namespace, where, reservation_id)
        if where != int(reservation_id.partition(".")[0]):
            self._claim_key(namespace, reservation_id, lines, buyer, fingerprint)
        with unavailable_on_connection_error():
            self._restore(keys=[home], args=[
                state, fingerprint, " ".join(f"{sku} {qty}" for sku, qty in lines), buyer or "",
                created_ms, expires_ms, expires_ms + self._ttl * 1000])

    def reservation_lines(self, namespace: str, reservation_id: str
                          ) -> tuple[tuple[Line, ...], str | None] | None:
        home = self._reservation_key(namespace, reservation_id)
        if home is None:
            return None
        known = self._lines.get((namespace, reservation_id))
        if known is not None:
            return known
        with unavailable_on_connection_error():
            state, listed, buyer = self.client.hmget(home, ["state", "lines", "buyer"])
        if state is None or listed is None:
            return None
        words = _text(listed).split(" ")
        return (tuple((words[i], int(words[i + 1])) for i in range(0, len(words), 2)),
                _text(buyer) or None if buyer is not None else None)

    def load_holds(self, namespace: str, holds: Mapping[str, Sequence[Hold]]) -> None:
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            for sku, open_holds in holds.items():
                listed, by_expiry = self.keys.holds(namespace, sku), self.keys.expiries(
                    namespace, sku)
                pipe.delete(listed)  # one key a DEL: a cluster's pipeline refuses more
                pipe.delete(by_expiry)
                for rid, qty, buyer, expires_ms in open_holds:
                    pipe.hset(listed, rid, f"{qty}|{expires_ms}|{buyer}")
                    pipe.zadd(by_expiry, {rid: expires_ms})
                    pipe.zadd(self.keys.due(self.keys.partition(namespace, sku)),
                              {f"{namespace}\n{sku}": expires_ms}, lt=True)
            pipe.execute()

    def sweep(self, most: int = 1000) -> int:
        visited = 0
        for partition in range(self.keys.partitions):
            with unavailable_on_connection_error():
                due = self.client.zrangebyscore(self.keys.due(partition), "-inf",
                                                self.clock_ms(), start=0, num=most)
                for member in due:
                    namespace, _, sku = _text(member).partition("\n")
                    self._sweep_item(namespace, sku, partition)
                    visited += 1
        return visited

    def _sweep_item(self, namespace: str, sku: str, listed_in: int | None = None) -> None:
        """End the item's due holds and keep its place right in the due index it is
        ``listed_in`` (its own partition's by default; on one Redis a reservation in another
        partition lists its lines in its own)."""
        if listed_in is None:
            listed_in = self.keys.partition(namespace, sku)
        self._sweep(keys=[*self._item_keys(namespace, sku), self.keys.due(listed_in)],
                    args=[namespace, sku, self.events_channel, f"{namespace}\n{sku}"])

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
        for i, sku in enumerate(skus):
            groups.setdefault(self.keys.partition(namespace, sku), []).append(i)
        item = self.keys.item
        calls = [([item(namespace, skus[i]) for i in chunk], ["seqs"])
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
                         len(records)))
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

    def read_many(self, namespace: str, skus: Sequence[str]) -> list[Outcome | None]:
        figures, due = self._read(namespace, skus)
        if due:
            # A hold past its expiry is ended by whoever meets it first, a read included:
            # its units are the buyers' again whether or not a sweeper runs (API.md).
            with unavailable_on_connection_error():
                for sku in due:
                    self._sweep_item(namespace, sku)
            again = dict(zip(due, self._read(namespace, due)[0], strict=True))
            figures = [again.get(sku, one) for sku, one in zip(skus, figures, strict=True)]
        return figures

    def _read(self, namespace: str, skus: Sequence[str]
              ) -> tuple[list[Outcome | None], list[str]]:
        """The items' figures, and those of them with a hold past its expiry."""
        now_ms = self.clock_ms()
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            for sku in skus:
                pipe.hmget(self.keys.item(namespace, sku),
                           ["total", "consumed", "seq", "gen", "limit", "held"])
                pipe.zrangebyscore(self.keys.expiries(namespace, sku), "-inf", now_ms,
                                   start=0, num=1)
            replies = pipe.execute()
        figures: list[Outcome | None] = []
        due: list[str] = []
        for sku, (total, consumed, seq, gen, limit, held), expired in zip(
                skus, replies[::2], replies[1::2], strict=True):
            figures.append(None if total is None else Outcome(
                OK, int(total), int(consumed), seq=int(seq or 0), gen=_text(gen or b""),
                limit=int(limit) if limit else None, held=int(held or 0)))
            if expired and total is not None:
                due.append(sku)
        return figures, due

    def hold_tally(self) -> dict[tuple[str, str], int]:
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            for partition in range(self.keys.partitions):
                pipe.hgetall(self.keys.tally(partition))
            replies = pipe.execute()
        tally: dict[tuple[str, str], int] = {}
        for reply in replies:
            for field, count in reply.items():
                namespace, _, what = _text(field).partition("\n")
                tally[namespace, what] = tally.get((namespace, what), 0) + int(count)
        return tally

    def ping(self) -> None:
        with unavailable_on_connection_error():
            self.client.ping()


def _chunks(members: list[int], size: int) -> list[list[int]]:
    return [members[at:at + size] for at in range(0, len(members), size)]
