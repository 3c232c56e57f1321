"""The consumer's health port over HTTP, as compose runs it (`allocation consume --health-port`):
its /metrics shows every tenant's figures, so it takes a `*` token as the API's does (API.md,
Access); /healthz and /readyz stay open for the orchestrator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import create_engine

from allocation.adapters.token_store import TokenStore
from allocation.config import Config
from tests.helpers.processes import (
    Process,
    allocation_command,
    free_port,
    service_env,
    wait_until,
)

NO_TOKEN: dict[str, str | None] = {"Authorization": None}


@pytest.fixture
def health(service_config: Config) -> Iterator[str]:
    """A consumer serving its health port; the port's base URL."""
    port = free_port()
    process = Process(allocation_command("consume", "--health-port", str(port)),
                      service_env(service_config))
    process.start()
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.alive(), process.stderr_tail()
        try:
            return requests.get(f"{base}/readyz", headers=NO_TOKEN, timeout=5).ok
        except requests.ConnectionError:
            return False

    try:
        wait_until(ready, 30, "the consumer's /readyz, without a token")
        yield base
    finally:
        process.stop()


@pytest.fixture
def tokens(service_config: Config) -> Iterator[TokenStore]:
    engine = create_engine(service_config.database_url)
    yield TokenStore(engine)
    engine.dispose()


def bearer(token: str) -> dict[str, str | None]:
    return {"Authorization": f"Bearer {token}"}


def test_the_consumers_metrics_need_a_token_of_every_namespace(
        health: str, tokens: TokenStore) -> None:
    _, own = tokens.create("shop-a", "admin", "one namespace's")
    _, every = tokens.create("*", "read", "prometheus")

    anonymous = requests.get(f"{health}/metrics", headers=NO_TOKEN, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "unauthorized"
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert "allocation_consumer" not in anonymous.text
    unknown = requests.get(f"{health}/metrics", headers=bearer("alloc_" + "x" * 43), timeout=10)
    assert unknown.status_code == 401

    narrow = requests.get(f"{health}/metrics", headers=bearer(own), timeout=10)
    assert (narrow.status_code, narrow.json()["error"]) == (403, "forbidden")
    assert "allocation_consumer" not in narrow.text

    allowed = requests.get(f"{health}/metrics", headers=bearer(every), timeout=10)
    assert allowed.status_code == 200
    assert 'allocation_consumer_up{channel="stream"} 1.0' in allowed.text

    # Another spelling of the guarded path reaches nothing (decoded once, as the API's).
    for spelling in ("//metrics", "/metrics/", "/./metrics", "/metric%73"):
        answer = requests.get(f"{health}{spelling}", headers=NO_TOKEN, timeout=10)
        assert answer.status_code in (401, 404), spelling
        assert "allocation_consumer" not in answer.text, spelling
    # The orchestrator's probes need none.
    assert requests.get(f"{health}/healthz", headers=NO_TOKEN, timeout=10).json() == {
        "status": "ok"}
    assert requests.get(f"{health}/readyz", headers=NO_TOKEN, timeout=10).status_code == 200
