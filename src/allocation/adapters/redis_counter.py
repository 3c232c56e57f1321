"""The Redis counter: one Lua script per operation, atomic per item, loaded once (EVALSHA)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC
from importlib import resources
from types import TracebackType
from typing import Any

import redis

from allocation.adapters.counter import Allowances, Counter, Figures, fingerprint, unpack
from allocation.adapters.redis_batch import ScriptBatcher, evalsha_many
from allocation.adapters.redis_client import RedisClient
from allocation.adapters.redis_keys import KeySpace
from allocation.domain import errors
from allocation.domain.model import LedgerEntry
from allocation.domain.outcome import OK, Outcome
from allocation.domain.rules import Kind


def lua(name: str) -> str:
    return resources.files("allocation.adapters").joinpath(f"lua/{name}.lua").read_text()


class _Unavailable:
    """Raises ``Unavailable`` for a lost connection (a class: the generator a
    ``contextlib.contextmanager`` builds per use costs a movement a few microseconds)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            raise errors.Unavailable("redis unavailable") from exc


_UNAVAILABLE = _Unavailable()


def unavailable_on_connection_error() -> _Unavailable:
    return _UNAVAILABLE


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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

    def apply(self, namespace: str, sku: str, kind: Kind, qty: int,
              idempotency_key: str | None, *, record: bool = False,
              buyer: str | None = None) -> Outcome:
        keys = [self.keys.item(namespace, sku), self.keys.outbox_of(namespace, sku),
                self.keys.buyers(namespace, sku)]
        if idempotency_key is not None:
            keys.append(self.keys.idempotency(namespace, sku, idempotency_key))
        with unavailable_on_connection_error():
            reply: Any = self._move(keys=keys, args=[
                kind, qty, fingerprint(kind, qty, buyer), self._ttl, "1" if record else "0",
                namespace, sku, idempotency_key or "", self.events_channel,
                self._refusal_ttl, buyer or ""])
        status, total, consumed, replayed, seq, gen, remaining, limit = reply
        return Outcome(_text(status), int(total), int(consumed), replayed=bool(replayed),
                       seq=int(seq), gen=_text(gen),
                       remaining=None if int(remaining) < 0 else int(remaining),
                       limit=int(limit) if limit else None)

    def load_many(self, figures: Iterable[Figures]) -> None:
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            for one in figures:
                namespace, sku, total, consumed, seq, gen = unpack(one)
                # "fenced" 0 rather than a second command to delete it: one command per item.
                # The figures come from the ledger, so it is written up to their seq.
                generation = ("gen", gen) if gen else ()
                pipe.execute_command(  # type: ignore[no-untyped-call]
                    "HSET", self.keys.item(namespace, sku), "total", total, "consumed",
                    consumed, "seq", seq, "fenced", 0, "written", seq, *generation)
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
        now = time.time()
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            for e in entries:
                if e.idempotency_key is None or e.kind not in ("adjust", "decrement", "refund"):
                    continue
                moment = e.created_at if e.created_at.tzinfo else e.created_at.replace(tzinfo=UTC)
                left = int(self._ttl - (now - moment.timestamp()))
                if left > 0:
                    # seq 0: a movement the ledger holds, nothing to wait for.
                    record = (f"{fingerprint(e.kind, e.qty, e.buyer)}|ok|{e.total_after}|"  # type: ignore[arg-type]
                              f"{e.total_after - e.available_after}|0|")
                    pipe.set(self.keys.idempotency(e.namespace, e.sku, e.idempotency_key),
                             record, ex=left, nx=True)
            pipe.execute()

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

    def forget(self, namespace: str, sku: str) -> None:
        with unavailable_on_connection_error():
            self.client.delete(self.keys.item(namespace, sku), self.keys.buyers(namespace, sku))

    def read_many(self, namespace: str, skus: Sequence[str]) -> list[Outcome | None]:
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            for sku in skus:
                pipe.hmget(self.keys.item(namespace, sku),
                           ["total", "consumed", "seq", "gen", "limit"])
            replies = pipe.execute()
        return [None if total is None else Outcome(OK, int(total), int(consumed),
                                                   seq=int(seq or 0), gen=_text(gen or b""),
                                                   limit=int(limit) if limit else None)
                for total, consumed, seq, gen, limit in replies]

    def ping(self) -> None:
        with unavailable_on_connection_error():
            self.client.ping()
