from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from tests.helpers.key_spaces import own_key_space
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


@pytest.fixture
def own_config(service_config: Config) -> Iterator[Config]:
    """The run's services under a key prefix and channels of the test's own, for a test whose
    ledger writer must meet only its own entries (not what other tests' writers left pending in
    the run's shared outbox, nor have its entries read by them); its keys removed at the end."""
    yield from own_key_space(service_config, service_config.redis_url or "",
                             f"{service_config.redis_key_prefix}-own-{uuid.uuid4().hex[:8]}")
