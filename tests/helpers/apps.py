"""The HTTP app over in-memory fakes, for unit tests, and reading its answers."""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from allocation.adapters.redis_counter import RedisCounter
from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import events
from allocation.entrypoints.flask_app import create_app
from allocation.service_layer.messagebus import MessageBus
from tests.helpers.counter_contract import set_clock
from tests.helpers.embedded import embedded_client, fresh_prefix
from tests.helpers.fakes import FakeStore, FakeUnitOfWork
from tests.helpers.ledger import drain


class FakeApp:
    """The Flask app over the fake unit of work and the production counter on the embedded
    Redis, in a key space of its own. No ledger worker runs: ``drain`` writes the outbox (so the
    default, async, durability). Setting ``now`` stops the scripts' clock there."""

    def __init__(self, config: Config | None = None, fast: bool = True) -> None:
        self.store = FakeStore()
        self.published: list[events.Event] = []
        self.application: Application = bootstrap(
            dataclasses.replace(config or Config(), redis_key_prefix=fresh_prefix()),
            uow_factory=lambda: FakeUnitOfWork(self.store), redis_client=embedded_client(),
            publish=self.published.append)
        assert isinstance(self.application.counter, RedisCounter)
        self.counter: RedisCounter = self.application.counter
        self._now: int | None = None
        self.app: Flask = create_app(application=self.application, fast=fast)
        self.client: FlaskClient = self.app.test_client()

    @property
    def bus(self) -> MessageBus:
        return self.application.bus

    @property
    def now(self) -> int:
        assert self._now is not None, "set the clock first"
        return self._now

    @now.setter
    def now(self, ms: int) -> None:
        self._now = ms
        set_clock(self.counter, ms)

    def drain(self) -> None:
        drain(self.application)

    def snapshot(self) -> tuple[object, ...]:
        """Everything a request could change."""
        items = sorted((k, v.total, v.consumed, v.last_seq) for k, v in self.store.items.items())
        client = self.counter.client
        figures = sorted(  # by "namespace:sku", as two apps' key spaces differ
            (key.decode().split(":item:", 1)[1],
             tuple(client.hmget(key, ["total", "consumed", "seq", "fenced"])))
            for key in client.scan_iter(match=f"{self.counter.keys.prefix}:*:item:*",
                                        count=100_000))  # one round trip, however many keys
        return tuple(items), len(self.store.ledger), tuple(figures), len(self.published)


def body(response: Any) -> dict[str, Any]:
    data = response.get_json()
    assert isinstance(data, dict), response.data
    return data
