"""The Redis counter: one Lua script per movement, atomic per item, loaded once (EVALSHA)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from typing import Any

import redis

from allocation.adapters.counter import Counter, fingerprint
from allocation.adapters.redis_keys import KeySpace
from allocation.domain import errors
from allocation.domain.outcome import OK, Outcome
from allocation.domain.rules import Kind


def _script(name: str) -> str:
    return resources.files("allocation.adapters").joinpath(f"lua/{name}.lua").read_text()


@contextlib.contextmanager
def unavailable_on_connection_error() -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise errors.Unavailable(f"redis unavailable: {exc}") from exc


class RedisCounter(Counter):
    def __init__(self, client: redis.Redis[bytes], keys: KeySpace,
                 idempotency_ttl: int = 48 * 3600) -> None:
        self.client = client
        self.keys = keys
        self._ttl = idempotency_ttl
        # register_script runs EVALSHA and reloads the script on NOSCRIPT.
        self._move = client.register_script(_script("move"))
        self._revert = client.register_script(_script("revert"))

    def _item_keys(self, namespace: str, sku: str, idempotency_key: str | None) -> list[str]:
        keys = [self.keys.item(namespace, sku)]
        if idempotency_key is not None:
            keys.append(self.keys.idempotency(namespace, sku, idempotency_key))
        return keys

    def apply(self, namespace: str, sku: str, kind: Kind, qty: int,
              idempotency_key: str | None, *, probe: bool = False) -> Outcome:
        with unavailable_on_connection_error():
            reply: Any = self._move(
                keys=self._item_keys(namespace, sku, idempotency_key),
                args=[kind, qty, fingerprint(kind, qty), self._ttl, "1" if probe else "0"],
            )
        status, total, consumed, replayed = reply
        if isinstance(status, bytes):
            status = status.decode()
        return Outcome(status, int(total), int(consumed), replayed=bool(replayed))

    def revert(self, namespace: str, sku: str, kind: Kind, qty: int,
               idempotency_key: str | None) -> None:
        with unavailable_on_connection_error():
            self._revert(keys=self._item_keys(namespace, sku, idempotency_key), args=[kind, qty])

    def load(self, namespace: str, sku: str, total: int, consumed: int) -> None:
        self.load_many([(namespace, sku, total, consumed)])

    def load_many(self, figures: Iterable[tuple[str, str, int, int]]) -> None:
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            for namespace, sku, total, consumed in figures:
                pipe.hset(self.keys.item(namespace, sku),
                          mapping={"total": total, "consumed": consumed})
            pipe.execute()

    def forget(self, namespace: str, sku: str) -> None:
        with unavailable_on_connection_error():
            self.client.delete(self.keys.item(namespace, sku))

    def read_many(self, namespace: str, skus: Sequence[str]) -> list[Outcome | None]:
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            for sku in skus:
                pipe.hmget(self.keys.item(namespace, sku), "total", "consumed")
            replies = pipe.execute()
        return [None if total is None else Outcome(OK, int(total), int(consumed))
                for total, consumed in replies]

    def ping(self) -> None:
        with unavailable_on_connection_error():
            self.client.ping()
