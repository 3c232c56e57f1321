"""The Redis counter: one Lua script per operation, atomic per item, loaded once (EVALSHA).
Its reservations are in ``redis_reservations``, its rebuilding in ``redis_rebuilding``; here
are the movements, the reads, and what every part shares."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from allocation.adapters.counter import Line
from allocation.adapters.redis_client import RedisClient, unavailable_on_connection_error
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_rebuilding import RedisRebuilding
from allocation.adapters.redis_reservations import RedisReservations
from allocation.adapters.redis_scripts import ScriptBatcher, fingerprint, lua
from allocation.adapters.redis_scripts import figures as _figures
from allocation.adapters.redis_scripts import reply_text as _text
from allocation.domain.outcome import Figures, Outcome
from allocation.domain.rules import Kind


class RedisCounter(RedisReservations, RedisRebuilding):
    def __init__(self, client: RedisClient, keys: KeySpace,
                 idempotency_ttl: int = 48 * 3600, events_channel: str | None = None,
                 refusal_ttl: int = 300) -> None:
        self.client = client
        self.keys = keys
        # An item's keys, named once: a sale's movements of a few items each look them up.
        self._of_item = functools.lru_cache(maxsize=4096)(keys.of_item)
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
              buyer: str | None = None, sale: str = "") -> Outcome:
        item, idempotency = self._of_item(namespace, sku)
        reply: Any = self._move(
            keys=[*item, idempotency + idempotency_key] if idempotency_key is not None
            else [*item],
            args=[kind, qty, fingerprint(kind, qty, buyer), self._ttl, "1" if record else "0",
                  namespace, sku, idempotency_key or "", self.events_channel,
                  self._refusal_ttl, buyer or "", sale])
        status, total, consumed, replayed, seq, gen, remaining, limit, held = reply
        return Outcome(_text(status), _figures(total, consumed, held, limit, seq, gen),
                       bool(replayed), False, None if int(remaining) < 0 else int(remaining))

    def _item_keys(self, namespace: str, sku: str) -> tuple[str, ...]:
        return self._of_item(namespace, sku)[0]

    def read_many(self, namespace: str, skus: Sequence[str]) -> list[Figures | None]:
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
              ) -> tuple[list[Figures | None], list[str]]:
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
        figures: list[Figures | None] = []
        due: list[str] = []
        for sku, (total, consumed, seq, gen, limit, held), expired in zip(
                skus, replies[::2], replies[1::2], strict=True):
            figures.append(None if total is None else _figures(
                total, consumed, held, limit, seq, gen))
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
