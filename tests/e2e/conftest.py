"""Fixtures for real processes: the API server (`allocation serve`), the ledger worker and the
consumer, against real services. The helpers they use are in tests.helpers.processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import requests
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from allocation.adapters.token_store import TokenStore
from allocation.config import Config
from tests.helpers.processes import (
    PrivateRedis,
    Process,
    allocation_command,
    serve,
    service_env,
)


@pytest.fixture(scope="session", autouse=True)
def admin_token(database_url: str) -> Iterator[str]:
    """Servers here require tokens, as deployed: every request to /v1/ and /metrics carries
    this run's admin token (of every namespace) unless the test gives an Authorization header
    of its own (None: none at all)."""
    engine = create_engine(database_url)
    _, token = TokenStore(engine).create("*", "admin", "e2e session")
    engine.dispose()
    original = requests.Session.request

    def request(self: requests.Session, method: str | bytes, url: str | bytes,
                *args: Any, **kwargs: Any) -> requests.Response:
        if "/v1/" in str(url) or str(url).endswith("/metrics"):
            headers = dict(kwargs.get("headers") or {})
            headers.setdefault("Authorization", f"Bearer {token}")
            kwargs["headers"] = headers
        return original(self, method, url, *args, **kwargs)

    with mock.patch.object(requests.Session, "request", request):
        yield token


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the run's database, for reading what the services wrote."""
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def ledger_workers(service_config: Config) -> Iterator[Process]:
    """One ledger worker process for the session, writing the outbox to PostgreSQL."""
    worker = Process(allocation_command("ledger-worker"), service_env(service_config))
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def api(service_config: Config, ledger_workers: Process) -> Iterator[str]:
    yield from serve(service_config)


@pytest.fixture
def consumer(service_config: Config) -> Iterator[Process]:
    process = Process(allocation_command("consume"), service_env(service_config))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A Redis of the module's own, to cut, partition or restart."""
    server = PrivateRedis(tmp_path_factory.mktemp("own-redis"))
    server.start()
    yield server
    server.stop()
