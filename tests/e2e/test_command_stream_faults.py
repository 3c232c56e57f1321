"""The command stream under faults, with the real `allocation consume` process against a real
Redis and PostgreSQL: a Redis error ends neither loop (it shows on /readyz and in the metrics,
and passes); a passing failure leaves the entry pending until it passes, then the command takes
effect once; a poison entry goes to the dead-letter stream; answered entries leave the stream."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from allocation import views
from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands
from allocation.entrypoints.redis_consumer import STREAM_GROUP
from tests.helpers.processes import (
    Process,
    allocation_command,
    free_port,
    service_env,
    wait_until,
)
from tests.helpers.tcp_proxy import proxy_to


@pytest.fixture
def config(service_config: Config, namespace: str) -> Config:
    """A stream and channels of this test's own (under the run's key prefix, removed after)."""
    own = f"{service_config.redis_key_prefix}:{namespace}"
    return dataclasses.replace(service_config, commands_stream=f"{own}:commands",
                               commands_channel=f"{own}:commands",
                               events_channel=f"{own}:events")


@pytest.fixture
def app(config: Config) -> Iterator[Application]:
    application = bootstrap(config)
    yield application
    if application.engine is not None:
        application.engine.dispose()


class Stream:
    """The test's side of the command stream and the events channel."""

    def __init__(self, config: Config) -> None:
        assert config.redis_url is not None
        self.client: redis.Redis[bytes] = redis.Redis.from_url(config.redis_url)
        self.name = config.commands_stream
        self.dead = f"{config.commands_stream}:dead"
        self.events = self.client.pubsub(ignore_subscribe_messages=True)
        self.events.subscribe(config.events_channel)
        self.received: list[dict[str, Any]] = []

    def add(self, **message: Any) -> str:
        return self.add_raw(json.dumps(message))

    def add_raw(self, raw: str) -> str:
        entry_id: bytes = self.client.xadd(self.name, {"message": raw})
        return entry_id.decode()

    def collect(self) -> None:
        while (message := self.events.get_message(timeout=0.01)) is not None:
            self.received.append(json.loads(message["data"]))

    def matching(self, **match: Any) -> list[dict[str, Any]]:
        self.collect()
        return [e for e in self.received if all(e.get(k) == v for k, v in match.items())]

    def wait_for(self, seconds: float = 15, **match: Any) -> dict[str, Any]:
        wait_until(lambda: bool(self.matching(**match)), seconds, f"an event matching {match}")
        return self.matching(**match)[0]

    def length(self) -> int:
        return int(self.client.xlen(self.name))

    def pending(self) -> int:
        summary: dict[str, Any] = self.client.xpending(self.name, STREAM_GROUP)  # type: ignore[no-untyped-call]
        return int(summary["pending"])

    def deliveries(self, entry_id: str) -> int:
        rows = self.client.xpending_range(self.name, STREAM_GROUP, min=entry_id, max=entry_id,
                                          count=1)
        return int(rows[0]["times_delivered"]) if rows else 0

    def close(self) -> None:
        self.events.close()
        self.client.close()


@pytest.fixture
def stream(config: Config) -> Iterator[Stream]:
    s = Stream(config)
    yield s
    s.close()


class Consumer:
    """`allocation consume` with its health port."""

    def __init__(self, config: Config, **env: str) -> None:
        self.port = free_port()
        self.process = Process(
            allocation_command("consume", "--name", "faults", "--health-port", str(self.port)),
            {**service_env(config), **env})
        self.base = f"http://127.0.0.1:{self.port}"

    def readiness(self) -> tuple[int, dict[str, Any]]:
        if not self.process.alive():
            raise AssertionError(f"the consumer exited: {self.process.stderr_tail()}")
        try:
            response = requests.get(f"{self.base}/readyz", timeout=5)
        except requests.ConnectionError:
            return 0, {}
        return response.status_code, response.json()

    def ready(self) -> bool:
        return self.readiness() == (200, {"pubsub": "ok", "stream": "ok"})

    def metric(self, name: str, **labels: str) -> float:
        text = requests.get(f"{self.base}/metrics", timeout=5).text
        return next((s.value for family in text_string_to_metric_families(text)
                     for s in family.samples if s.name == name and s.labels == labels), 0.0)


@pytest.fixture
def start_consumer(config: Config) -> Iterator[Any]:
    started: list[Consumer] = []

    def start(**env: str) -> Consumer:
        consumer = Consumer(config, **env)
        started.append(consumer)
        consumer.process.start()
        wait_until(consumer.ready, 30, "the consumer to be ready (/readyz)")
        return consumer

    yield start
    for consumer in started:
        consumer.process.stop()


def test_a_wrong_type_error_shows_on_readyz_and_passes(
        start_consumer: Any, stream: Stream, app: Application, namespace: str) -> None:
    consumer = start_consumer()
    assert requests.get(f"{consumer.base}/healthz", timeout=5).json() == {"status": "ok"}
    assert consumer.metric("allocation_consumer_up", channel="stream") == 1
    errors_before = consumer.metric("allocation_consumer_errors_total", channel="stream")

    stream.client.set(stream.name, "not a stream")  # the key replaced under the consumer
    wait_until(lambda: consumer.readiness() == (503, {"pubsub": "ok", "stream": "unavailable"}),
               15, "/readyz to name the stream loop")
    assert consumer.metric("allocation_consumer_up", channel="stream") == 0
    assert consumer.metric("allocation_consumer_up", channel="pubsub") == 1
    wait_until(lambda: consumer.metric("allocation_consumer_errors_total", channel="stream")
               >= errors_before + 2, 15, "the stream loop to keep retrying")
    assert consumer.process.alive()

    stream.client.delete(stream.name)  # restored: the consumer makes the stream again
    wait_until(consumer.ready, 30, "the stream loop to recover")
    assert consumer.metric("allocation_consumer_up", channel="stream") == 1
    stream.add(command="InitInventory", namespace=namespace, sku="after", total=4)
    assert stream.wait_for(event="InventoryInitialized", namespace=namespace)["total"] == 4
    assert (views.item(app, namespace, "after").total, consumer.process.alive()) == (4, True)
    wait_until(lambda: stream.length() == 0, 15, "the answered entry to leave the stream")


def test_a_fenced_item_leaves_the_command_pending_then_it_takes_effect_once(
        start_consumer: Any, stream: Stream, app: Application, namespace: str,
        ledger_workers: Process) -> None:
    app.bus.handle(commands.InitInventory(namespace, "s", 5))
    app.counter.fence_many(namespace, ["s"])  # as a rebuild does: movements answer "retry"
    consumer = start_consumer(COMMAND_MAX_DELIVERIES="100")
    entry = stream.add(command="Decrement", namespace=namespace, sku="s", qty=2,
                       idempotency_key="while-fenced")

    wait_until(lambda: stream.deliveries(entry) >= 3, 30, "the entry to be delivered again")
    assert stream.matching(idempotency_key="while-fenced") == []  # no answer: not final
    assert (stream.length(), stream.pending()) == (1, 1)  # not acknowledged, not trimmed
    assert consumer.metric("allocation_consumer_commands_total", channel="stream",
                           outcome="unavailable") >= 2
    assert views.item(app, namespace, "s").consumed == 0

    app.counter.unfence(namespace, "s")  # the rebuild is over
    sold = stream.wait_for(event="Decremented", idempotency_key="while-fenced")
    assert (sold["qty"], sold["available"]) == (2, 3)
    wait_until(lambda: (stream.length(), stream.pending()) == (0, 0), 15,
               "the entry to be acknowledged and trimmed")
    figures = views.item(app, namespace, "s")
    assert (figures.total, figures.consumed) == (5, 2)

    def in_ledger() -> bool:
        return any(e.kind == "decrement" for e in views.ledger(app, namespace, "s", 0, 100))

    wait_until(in_ledger, 30, "the ledger worker to write the decrement")
    ledger = [(e.kind, e.qty, e.idempotency_key)
              for e in views.ledger(app, namespace, "s", 0, 100)]
    assert ledger == [("init", 5, None), ("decrement", 2, "while-fenced")]
    assert len(stream.matching(event="Decremented", idempotency_key="while-fenced")) == 1
    assert stream.matching(event="CommandRejected") == []


def test_a_redis_error_while_applying_is_retried_then_applied_once(
        start_consumer: Any, stream: Stream, app: Application, namespace: str,
        ledger_workers: Process) -> None:
    app.bus.handle(commands.InitInventory(namespace, "s", 5))
    item_key = app.health.keys.item(namespace, "s")
    stream.client.delete(item_key)
    stream.client.set(item_key, "corrupt")  # every movement of it now fails with WRONGTYPE
    start_consumer(COMMAND_MAX_DELIVERIES="100")
    entry = stream.add(command="Decrement", namespace=namespace, sku="s", qty=1,
                       idempotency_key="wrongtype")
    wait_until(lambda: stream.deliveries(entry) >= 2, 30, "the entry to be delivered again")
    assert stream.matching(idempotency_key="wrongtype") == []
    stream.client.delete(item_key)  # Redis lost the item: it is rebuilt from the database
    assert stream.wait_for(event="Decremented", idempotency_key="wrongtype")["available"] == 4
    wait_until(lambda: (stream.length(), stream.pending()) == (0, 0), 15,
               "the entry to be acknowledged and trimmed")
    assert views.item(app, namespace, "s").consumed == 1


def test_a_database_outage_during_a_rebuild_leaves_the_command_pending_then_applies_it_once(
        start_consumer: Any, stream: Stream, app: Application, config: Config,
        namespace: str, ledger_workers: Process) -> None:
    app.bus.handle(commands.InitInventory(namespace, "s", 5))
    stream.client.delete(app.health.keys.item(namespace, "s"))  # Redis lost it: a rebuild
    direct = make_url(config.database_url)
    with proxy_to(direct.port or 5432) as proxy:
        via_proxy = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False)
        start_consumer(DATABASE_URL=via_proxy, COMMAND_MAX_DELIVERIES="3")
        proxy.cut_on(b"")  # the next bytes to the database cut it off, until restored
        entry = stream.add(command="Decrement", namespace=namespace, sku="s", qty=2,
                           idempotency_key="outage")

        # Past COMMAND_MAX_DELIVERIES while the database is away: still pending, unanswered.
        wait_until(lambda: stream.deliveries(entry) >= 5 or bool(stream.client.exists(stream.dead)),
                   30, "the entry to be delivered again and again")
        assert (proxy.cuts, stream.client.exists(stream.dead)) == (1, 0)
        assert stream.matching(idempotency_key="outage") == []
        assert (stream.length(), stream.pending()) == (1, 1)

        proxy.restore()
        sold = stream.wait_for(event="Decremented", idempotency_key="outage")
        assert (sold["qty"], sold["available"]) == (2, 3)
        wait_until(lambda: (stream.length(), stream.pending()) == (0, 0), 15,
                   "the entry to be acknowledged and trimmed")

    def in_ledger() -> bool:
        return any(e.kind == "decrement" for e in views.ledger(app, namespace, "s", 0, 100))

    wait_until(in_ledger, 30, "the ledger worker to write the decrement")
    assert [(e.kind, e.qty, e.idempotency_key)
            for e in views.ledger(app, namespace, "s", 0, 100)] == [
        ("init", 5, None), ("decrement", 2, "outage")]
    assert len(stream.matching(event="Decremented", idempotency_key="outage")) == 1
    assert stream.matching(event="CommandRejected") == []
    assert stream.client.exists(stream.dead) == 0


def test_a_poison_entry_goes_to_the_dead_letter_stream(
        start_consumer: Any, stream: Stream, app: Application, namespace: str) -> None:
    app.bus.handle(commands.InitInventory(namespace, "poisoned", 5))
    item_key = app.health.keys.item(namespace, "poisoned")
    stream.client.delete(item_key)
    stream.client.set(item_key, "corrupt")
    consumer = start_consumer(COMMAND_MAX_DELIVERIES="3")
    message = json.dumps({"command": "Decrement", "namespace": namespace, "sku": "poisoned",
                          "qty": 1, "idempotency_key": "poison"})
    entry = stream.add_raw(message)

    answer = stream.wait_for(event="CommandRejected", idempotency_key="poison")
    assert (answer["reason"], answer["command"], answer["sku"]) == (
        "dead_lettered", "Decrement", "poisoned")
    [(_, dead)] = stream.client.xrange(stream.dead)
    assert (dead[b"entry"].decode(), dead[b"message"].decode(), dead[b"deliveries"]) == (
        entry, message, b"3")
    assert b"WRONGTYPE" in dead[b"reason"]
    wait_until(lambda: (stream.length(), stream.pending()) == (0, 0), 15,
               "the dead-lettered entry to leave the stream")
    assert consumer.metric("allocation_consumer_dead_letters_total") >= 1
    assert consumer.metric("allocation_consumer_commands_total", channel="stream",
                           outcome="dead_lettered") >= 1

    stream.add(command="InitInventory", namespace=namespace, sku="healthy", total=1)
    stream.wait_for(event="InventoryInitialized", sku="healthy")  # the stream goes on
    assert consumer.ready()


def test_answered_entries_leave_the_stream(start_consumer: Any, stream: Stream,
                                           app: Application, namespace: str) -> None:
    consumer = start_consumer()
    stream.add(command="InitInventory", namespace=namespace, sku="s", total=3)
    stream.add(command="Decrement", namespace=namespace, sku="s", qty=2, idempotency_key="a")
    stream.add(command="Decrement", namespace=namespace, sku="s", qty=2, idempotency_key="a")
    stream.add(command="Decrement", namespace=namespace, sku="s", qty=5, idempotency_key="b")
    stream.add(command="Decrement", namespace=namespace, sku="missing", qty=1,
               idempotency_key="c")
    stream.add_raw("{not json")
    assert stream.wait_for(event="CommandRejected", idempotency_key="b")["reason"] == (
        "insufficient_stock")
    assert stream.wait_for(event="CommandRejected", idempotency_key="c")["reason"] == (
        "not_found")
    stream.wait_for(event="CommandRejected", reason="invalid_message")
    wait_until(lambda: (stream.length(), stream.pending()) == (0, 0), 15,
               "every answered entry to be acknowledged and deleted")
    assert stream.client.exists(stream.dead) == 0
    assert [e.get("replayed", False) for e in stream.matching(
        event="Decremented", namespace=namespace)] == [False, True]  # applied once
    assert views.item(app, namespace, "s").consumed == 2
    assert consumer.metric("allocation_consumer_commands_total", channel="stream",
                           outcome="applied") >= 3
