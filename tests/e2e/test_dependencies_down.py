"""A server whose Redis or database cannot be reached answers 503 with Retry-After and stays up."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import requests

from allocation.config import Config
from tests.helpers.processes import free_port, serve


@pytest.fixture
def api_without_redis(service_config: Config) -> Iterator[str]:
    yield from serve(dataclasses.replace(
        service_config, redis_url=f"redis://127.0.0.1:{free_port()}/0"))


@pytest.fixture
def api_without_database(service_config: Config) -> Iterator[str]:
    yield from serve(dataclasses.replace(
        service_config,
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"))


def test_redis_unreachable(api_without_redis: str) -> None:
    ready = requests.get(f"{api_without_redis}/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["redis"] == "unavailable"
    sale = requests.post(f"{api_without_redis}/v1/ns/items/sku/decrements", json={"qty": 1},
                         headers={"Idempotency-Key": "k"}, timeout=10)
    assert sale.status_code == 503 and sale.headers["Retry-After"].isdigit()
    assert sale.json()["error"] == "unavailable"
    assert requests.get(f"{api_without_redis}/healthz", timeout=5).status_code == 200


def test_database_unreachable(api_without_database: str) -> None:
    ready = requests.get(f"{api_without_database}/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["database"] == "unavailable"
    assert ready.json()["redis"] == "ok"
    created = requests.put(f"{api_without_database}/v1/ns/items/sku", json={"total": 1},
                           timeout=15)
    assert created.status_code == 503 and "Retry-After" in created.headers
    assert requests.get(f"{api_without_database}/healthz", timeout=5).status_code == 200
