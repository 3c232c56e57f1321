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
from tests.fakes import FakeStore, FakeUnitOfWork


class FakeApp:
    """The Flask app over the fake unit of work and the in-process counter."""

    def __init__(self) -> None:
        self.store = FakeStore()
        self.counter = InProcessCounter()
        self.published: list[events.Event] = []
        self.bus = bootstrap(Config(), uow_factory=lambda: FakeUnitOfWork(self.store),
                             counter=self.counter, publish=self.published.append)
        self.app: Flask = create_app(bus=self.bus)
        self.client: FlaskClient = self.app.test_client()

    def snapshot(self) -> tuple[object, ...]:
        """Everything a request could change."""
        items = sorted((k, v.total, v.consumed, v.last_seq) for k, v in self.store.items.items())
        figures = sorted(self.counter._figures.items())
        return tuple(items), len(self.store.ledger), tuple(figures), len(self.published)


@pytest.fixture
def fake_app() -> FakeApp:
    return FakeApp()


def body(response: Any) -> dict[str, Any]:
    data = response.get_json()
    assert isinstance(data, dict), response.data
    return data
