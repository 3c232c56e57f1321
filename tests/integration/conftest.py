from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from tests.helpers.ledger import running_worker


@pytest.fixture(params=["sync", "async"])
def app(request: pytest.FixtureRequest, service_config: Config) -> Iterator[Application]:
    """The application in each durability mode, with a ledger worker thread of its own."""
    app = bootstrap(dataclasses.replace(service_config, durability=request.param))
    with running_worker(app):
        yield app
    assert app.engine is not None
    app.engine.dispose()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()
