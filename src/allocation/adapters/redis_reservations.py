"""The Redis counter's reservations: one reserve.lua step at the reservation's home decides
(cluster carts across slots follow redis_carts' coordinator), and holds past their expiry are
swept by sweep.lua. A part of ``RedisCounter`` (the ``Reserving`` port)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis.cluster import RedisCluster

from allocation.adapters import redis_carts
from allocation.adapters.counter import Counter, Hold, Line, Reserved, Step
from allocation.adapters.redis_client import RedisClient, unavailable_on_connection_error
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_scripts import ScriptBatcher, figures
from allocation.adapters.redis_scripts import reply_text as _text
from allocation.domain.outcome import Figures


def _figures(flat: Sequence[Any]) -> tuple[Figures, ...]:
    """Items' figures as the reservation scripts answer them, six values an item (total,
    consumed, held, seq, generation, limit)."""
    return tuple(figures(flat[i], flat[i + 1], flat[i + 2], flat[i + 5], flat[i + 3],
                         flat[i + 4]) for i in range(0, len(flat), 6))


class RedisReservations(Counter):
    """What ``RedisCounter`` sets up for these steps (its ``__init__``)."""

    client: RedisClient
    keys: KeySpace
    events_channel: str
    _ttl: int
    _refusal_ttl: int
    _reserve: ScriptBatcher
    _part: ScriptBatcher
    _key_claim: ScriptBatcher
    _claim: Any
    _restore: Any
    _sweep: Any
    _lines: dict[tuple[str, str], tuple[tuple[Line, ...], str | None]]
    clock_ms: Callable[[], int]

    _item_keys: Callable[[str, str], tuple[str, ...]]  # (namespace, sku): a step's item keys

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
                         open_cap: int = 0, sale: str = "") -> Reserved:
        if self._reservation_key(namespace, reservation_id) is None:
            return Reserved("not_found")
        apart = self._open_apart(namespace, self._where(namespace, reservation_id, lines), buyer)
        claimed = 0
        if apart is not None and step == "hold" and open_cap > 0:
            with unavailable_on_connection_error():
                claimed = int(self._claim(keys=[apart], args=[reservation_id, open_cap, ttl_ms]))
            open_cap = open_cap if claimed else -open_cap
        result = self._step(step, namespace, reservation_id, lines, ttl_ms, buyer, fingerprint,
                            idempotency_key or "", open_cap, sale)
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
              open_cap: int, sale: str = "") -> Reserved:
        if isinstance(self.client, RedisCluster):
            home = int(reservation_id.partition(".")[0])
            where = self._where(namespace, reservation_id, lines)
            if where != home:
                if step == "hold" and not self._claim_key(namespace, reservation_id, lines,
                                                          buyer, fingerprint):
                    return Reserved("idempotency_key_reused")
                return self.home_step(step, namespace, reservation_id, lines, ttl_ms=ttl_ms,
                                      buyer=buyer, fingerprint=fingerprint, key=key,
                                      open_cap=open_cap, at=where, sale=sale)
            if any(self.keys.partition(namespace, sku) != home for sku, _ in lines):
                return redis_carts.step(self, step, namespace, reservation_id, lines,
                                        ttl_ms=ttl_ms, buyer=buyer, fingerprint=fingerprint,
                                        key=key, open_cap=open_cap)
        return self.home_step(step, namespace, reservation_id, lines, ttl_ms=ttl_ms,
                              buyer=buyer, fingerprint=fingerprint, key=key, open_cap=open_cap,
                              sale=sale)

    def home_step(self, op: str, namespace: str, reservation_id: str, lines: Sequence[Line],
                  *, ttl_ms: int = 0, buyer: str | None = None, fingerprint: str = "",
                  whole: bool = True, every_line: Sequence[Line] = (),
                  refusal: tuple[str, str, int] = ("", "", -1), key: str = "",
                  open_cap: int = 0, at: int | None = None,
                  sale: str | None = None) -> Reserved:
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
        if sale is not None:  # a hold here checks the items' gates (a cluster cart does not)
            args.append(sale)
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
