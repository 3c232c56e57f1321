"""Fixtures for the real services. Each test run makes its own PostgreSQL database and Redis key
space, and removes them afterwards. A missing service fails the run with a clear message."""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from allocation.adapters import migrate
from allocation.adapters.redis_keys import KeySpace
from allocation.config import Config
from tests.helpers.redis_cluster import LocalCluster, started_cluster
from tests.helpers.tmpdir import tmpdir_at

RUN_ID = uuid.uuid4().hex[:10]


def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """pytest passes over an abstract test class without a word: a contract class missing one
    method would silently run none of its tests. Say so instead."""
    if name.startswith("Test") and inspect.isclass(obj) and inspect.isabstract(obj):
        missing = ", ".join(sorted(obj.__abstractmethods__))
        raise pytest.UsageError(f"{collector.nodeid}::{name} is abstract (no {missing}): "
                                "none of its tests would run")


def test_database_admin_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def test_redis_url() -> str:
    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session", autouse=True)
def own_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This run's temporary files, its servers' included, in pytest's own directory for the
    run, which pytest prunes."""
    scratch = tmp_path_factory.mktemp("tmp")
    with tmpdir_at(scratch):
        yield scratch


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    admin_url = make_url(test_database_admin_url())
    name = f"allocation_test_{RUN_ID}"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure here means "no usable PostgreSQL"
        pytest.fail(f"PostgreSQL is not reachable at {admin_url.render_as_string()} "
                    f"(set TEST_DATABASE_URL; `make services` starts a local one): {exc}",
                    pytrace=False)
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = test_redis_url()
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {url} (set TEST_REDIS_URL; `make services` "
                    f"starts a local one): {exc}", pytrace=False)
    return url


@pytest.fixture(scope="session")
def key_space(redis_url: str) -> Iterator[KeySpace]:
    """This run's own key prefix; every key under it is deleted at the end."""
    keys = KeySpace(prefix=f"test-{RUN_ID}", partitions=8)
    yield keys
    client = redis.Redis.from_url(redis_url)
    batch: list[bytes] = []
    for key in client.scan_iter(match=keys.pattern(), count=1000):
        batch.append(key)
        if len(batch) == 1000:  # a thousand per round trip
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)
    client.close()


@pytest.fixture(scope="session")
def service_config(database_url: str, redis_url: str, key_space: KeySpace) -> Config:
    return Config(database_url=database_url, redis_url=redis_url,
                  redis_key_prefix=key_space.prefix, partitions=key_space.partitions,
                  commands_channel=f"test-{RUN_ID}:commands",
                  events_channel=f"test-{RUN_ID}:events",
                  commands_stream=f"{key_space.prefix}:commands:stream",
                  # Tests start and stop ledger workers on this key space all the time: one
                  # stopped with entries in hand would hold its partition up for the default
                  # 30 s before the others take them over (a replay is harmless).
                  ledger_claim_idle_ms=3000)


@pytest.fixture
def namespace() -> str:
    """A fresh namespace per test keeps tests apart inside the run's database."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three masters on loopback for the whole run."""
    with started_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster
