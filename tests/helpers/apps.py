"""The HTTP app over in-memory fakes, for unit tests, and reading its answers."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from allocation.adapters.memory_counter import InProcessCounter
from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import events
from allocation.entrypoints.flask_app import create_app
from allocation.service_layer.messagebus import MessageBus
from tests.helpers.fakes import FakeStore, FakeUnitOfWork
from tests.helpers.ledger import drain


class FakeApp:
    """The Flask app over the fake unit of work and the in-process counter. No ledger worker
    runs: ``drain`` writes the outbox (so the default, async, durability)."""

    def __init__(self, config: Config | None = None, fast: bool = True) -> None:
        self.store = FakeStore()
        self.counter = InProcessCounter()
        self.published: list[events.Event] = []
        self.application: Application = bootstrap(
            config or Config(), uow_factory=lambda: FakeUnitOfWork(self.store),
            counter=self.counter, publish=self.published.append)
        self.app: Flask = create_app(application=self.application, fast=fast)
        self.client: FlaskClient = self.app.test_client()

    @property
    def bus(self) -> MessageBus:
        return self.application.bus

    def drain(self) -> None:
        drain(self.application)

    def snapshot(self) -> tuple[object, ...]:
        """Everything a request could change."""
        items = sorted((k, v.total, v.consumed, v.last_seq) for k, v in self.store.items.items())
        figures = sorted((k, (i.total, i.consumed, i.seq, i.fenced))
                         for k, i in self.counter._items.items())
        return tuple(items), len(self.store.ledger), tuple(figures), len(self.published)


def body(response: Any) -> dict[str, Any]:
    data = response.get_json()
    assert isinstance(data, dict), response.data
    return data
