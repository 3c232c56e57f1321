from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest
import redis
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


@pytest.fixture
def own_config(service_config: Config) -> Iterator[Config]:
    """The run's services under a key prefix and channels of the test's own, for a test whose
    ledger writer must meet only its own entries (not what other tests' writers left pending in
    the run's shared outbox, nor have its entries read by them); its keys removed at the end."""
    prefix = f"{service_config.redis_key_prefix}-own-{uuid.uuid4().hex[:8]}"
    yield dataclasses.replace(service_config, redis_key_prefix=prefix,
                              commands_channel=f"{prefix}:commands",
                              events_channel=f"{prefix}:events",
                              commands_stream=f"{prefix}:commands:stream")
    client = redis.Redis.from_url(service_config.redis_url or "", socket_timeout=10)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.unlink(*keys)
    client.close()
