"""The ledger over real HTTP in sync mode (`allocation serve`, a ledger worker process,
PostgreSQL, Redis): an extension is in the ledger and comes back with a rebuild after Redis lost
the namespace; an extension past a day from creation is refused; a retry whose key Redis lost is
answered from the ledger."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest
import redis
import requests

from allocation.config import Config
from tests.helpers.processes import ledger_worker, serve


@pytest.fixture
def sync_config(service_config: Config) -> Config:
    """Streams of this test's own (the session's ledger worker keeps out)."""
    return dataclasses.replace(service_config, durability="sync",
                               redis_key_prefix=f"{service_config.redis_key_prefix}:"
                                                f"x{uuid.uuid4().hex[:8]}")


@pytest.fixture
def base(sync_config: Config, namespace: str) -> Iterator[str]:
    worker = ledger_worker(sync_config)
    api = serve(sync_config)
    try:
        yield f"{next(api)}/v1/{namespace}"
    finally:
        next(api, None)
        worker.stop()


def lose(config: Config, namespace: str, *only: str) -> None:
    """A FLUSHDB of this test's keys of the namespace (the Redis is shared): ``only`` those
    whose names contain one of these."""
    assert config.redis_url is not None
    client = redis.Redis.from_url(config.redis_url)
    keys = [k for k in client.scan_iter(match=f"{config.redis_key_prefix}:*:{namespace}:*",
                                        count=1000)
            if not only or any(part.encode() in k for part in only)]
    assert keys
    client.delete(*keys)
    client.close()


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_an_extension_comes_back_with_a_rebuild_after_redis_lost_the_namespace(
        base: str, sync_config: Config, namespace: str) -> None:
    http = requests.Session()
    assert http.put(f"{base}/items/tee", json={"total": 10}, timeout=10).status_code == 201
    made = http.post(f"{base}/reservations", headers={"Idempotency-Key": "r"}, timeout=10,
                     json={"lines": [{"sku": "tee", "qty": 3}], "ttl_seconds": 60})
    assert made.status_code == 201, made.text
    rid = made.json()["id"]
    extended = http.post(f"{base}/reservations/{rid}/extend", json={"ttl_seconds": 900},
                         timeout=10)
    assert extended.status_code == 200, extended.text
    expires = extended.json()["expires_at"]
    assert (moment(expires) - moment(made.json()["expires_at"])).total_seconds() > 800
    entries = http.get(f"{base}/items/tee/ledger", timeout=10).json()["entries"]
    assert [(e["kind"], e["qty"], e["reservation_id"]) for e in entries] == [
        ("init", 10, None), ("hold", 3, rid), ("extend", 3, rid)]
    assert moment(entries[-1]["expires_at"]) == moment(expires)

    lose(sync_config, namespace)
    assert http.post(f"{base}/refresh", timeout=10).json() == {"items": 1}
    item = http.get(f"{base}/items/tee", timeout=10).json()
    assert (item["held"], item["available"]) == (3, 7)
    shown = http.get(f"{base}/reservations/{rid}", timeout=10)
    assert shown.status_code == 200, shown.text
    assert (shown.json()["state"], moment(shown.json()["expires_at"])) == (
        "held", moment(expires))


def test_an_extension_past_a_day_from_creation_is_409_and_changes_nothing(
        base: str, namespace: str) -> None:
    http = requests.Session()
    assert http.put(f"{base}/items/tee", json={"total": 10}, timeout=10).status_code == 201
    made = http.post(f"{base}/reservations", headers={"Idempotency-Key": "r"}, timeout=10,
                     json={"lines": [{"sku": "tee", "qty": 1}], "ttl_seconds": 86_400})
    assert made.status_code == 201, made.text
    rid = made.json()["id"]
    refused = http.post(f"{base}/reservations/{rid}/extend", json={"ttl_seconds": 86_400},
                        timeout=10)
    assert refused.status_code == 409
    assert refused.json()["error"] == "reservation_lifetime_exceeded"
    assert "Error" not in refused.json()["message"]
    shown = http.get(f"{base}/reservations/{rid}", timeout=10).json()
    assert shown["expires_at"] == made.json()["expires_at"]
    kinds = [e["kind"] for e in
             http.get(f"{base}/items/tee/ledger", timeout=10).json()["entries"]]
    assert kinds == ["init", "hold"]


def test_a_retry_of_an_item_redis_lost_is_answered_from_the_ledger(
        base: str, sync_config: Config, namespace: str) -> None:
    http = requests.Session()
    assert http.put(f"{base}/items/tee", json={"total": 10}, timeout=10).status_code == 201
    first = http.post(f"{base}/items/tee/decrements", json={"qty": 2},
                      headers={"Idempotency-Key": "k"}, timeout=10)
    assert first.status_code == 200, first.text
    lose(sync_config, namespace)  # Redis lost the namespace: a FLUSHDB, a failover
    again = http.post(f"{base}/items/tee/decrements", json={"qty": 2},
                      headers={"Idempotency-Key": "k"}, timeout=10)
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (200, "true")
    assert again.json() == first.json()
    assert http.get(f"{base}/items/tee", timeout=10).json()["consumed"] == 2
    entries = http.get(f"{base}/items/tee/ledger", timeout=10).json()["entries"]
    assert [(e["kind"], e["idempotency_key"]) for e in entries] == [
        ("init", None), ("decrement", "k")]
