from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from allocation.adapters.memory_counter import InProcessCounter
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import events
from allocation.entrypoints.flask_app import create_app
from allocation.entrypoints.ledger_worker import LedgerWorker
from tests.fakes import FakeStore, FakeUnitOfWork


class FakeApp:
    """The Flask app over the fake unit of work and the in-process counter."""

    def __init__(self, config: Config | None = None, fast: bool = True) -> None:
        self.store = FakeStore()
        self.counter = InProcessCounter()
        self.published: list[events.Event] = []
        self.bus = bootstrap(config or Config(), uow_factory=lambda: FakeUnitOfWork(self.store),
                             counter=self.counter, publish=self.published.append)
        self.app: Flask = create_app(bus=self.bus, fast=fast)
        self.client: FlaskClient = self.app.test_client()

    def drain(self) -> None:
        worker = LedgerWorker(self.bus.dependencies["outbox"], self.bus.uow_factory)
        while worker.run_once():
            pass

    def snapshot(self) -> tuple[object, ...]:
        """Everything a request could change."""
        items = sorted((k, v.total, v.consumed, v.last_seq) for k, v in self.store.items.items())
        figures = sorted((k, (i.total, i.consumed, i.seq, i.fenced))
                         for k, i in self.counter._items.items())
        return tuple(items), len(self.store.ledger), tuple(figures), len(self.published)


@pytest.fixture
def fake_app() -> FakeApp:
    return FakeApp()


def body(response: Any) -> dict[str, Any]:
    data = response.get_json()
    assert isinstance(data, dict), response.data
    return data
