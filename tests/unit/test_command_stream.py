"""The command consumers' decisions, over fakeredis and a scripted bus: a final answer (applied,
refused, malformed) is acknowledged and trimmed; a passing failure leaves the entry pending to be
delivered again; too many deliveries move it to the dead-letter stream. Neither loop ends on an
error. (The same against a real Redis and a real process: tests/e2e/test_command_stream_faults.)"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import fakeredis
import psycopg2
import pytest
import redis
import requests
from prometheus_client import REGISTRY
from sqlalchemy import exc as sa_exc

from allocation.domain import commands, errors
from allocation.domain.outcome import Figures, Outcome
from allocation.entrypoints import command_stream, health_server, redis_consumer
from allocation.entrypoints.redis_consumer import (
    POISON_DELIVERIES,
    STREAM_GROUP,
    Consumer,
    HealthServer,
    LoopState,
    StreamConsumer,
    Verdict,
    judge,
    run_reconnecting,
    stream_action,
)
from tests.helpers.processes import wait_until

STREAM = "cmds"
DECREMENT = json.dumps({"command": "Decrement", "namespace": "ns", "sku": "s", "qty": 1,
                        "idempotency_key": "k1"})
APPLIED = Outcome("ok", Figures(5, 1))


class ScriptedBus:
    """Answers each command with the next of ``answers`` (the last one for ever after)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.seen: list[commands.Command] = []

    def handle(self, command: Any) -> Any:
        self.seen.append(command)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def publish_message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries and reconnections at once: the decisions are under test here, not the pace."""
    for name in ("RETRY_MIN_SECONDS", "RETRY_MAX_SECONDS"):
        monkeypatch.setattr(command_stream, name, 0.0)
    for name in ("RECONNECT_MIN_SECONDS", "RECONNECT_MAX_SECONDS"):
        monkeypatch.setattr(health_server, name, 0.0)


@pytest.fixture
def client() -> Iterator[redis.Redis[bytes]]:
    server = fakeredis.FakeServer()
    fake: redis.Redis[bytes] = fakeredis.FakeRedis(server=server)
    yield fake
    fake.close()


def stream_consumer(client: redis.Redis[bytes], bus: ScriptedBus, publisher: Recorder,
                    **kwargs: Any) -> StreamConsumer:
    consumer = StreamConsumer(bus, client, STREAM, publisher, "me", **kwargs)
    consumer._ensure_group()
    return consumer


def pending(client: redis.Redis[bytes]) -> int:
    summary: dict[str, Any] = client.xpending(STREAM, STREAM_GROUP)  # type: ignore[no-untyped-call]
    return int(summary["pending"])


# The decision itself.

@pytest.mark.parametrize("answer, outcome, final", [
    (APPLIED, "applied", True),
    (Outcome("insufficient_stock", Figures(1, 1)), "refused", True),
    (errors.NotFound("no such item"), "refused", True),
    (errors.Unavailable("ns/s is being rebuilt; retry"), "unavailable", False),
    (errors.Unavailable("database unavailable"), "unavailable", False),
    (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
     "unavailable", False),
    (redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
     "unavailable", False),
    (redis.ReadOnlyError("You can't write against a read only replica."), "unavailable",
     False),
    (RuntimeError("a bug"), "failed", False),
])
def test_a_refusal_is_final_and_a_passing_failure_is_not(
        answer: Any, outcome: str, final: bool) -> None:
    verdict = judge(DECREMENT, ScriptedBus(answer))
    assert (verdict.outcome, verdict.final) == (outcome, final)
    if outcome == "applied":
        assert verdict.rejection is None
    else:
        assert verdict.rejection is not None
        assert verdict.rejection["event"] == "CommandRejected"
        assert verdict.rejection["idempotency_key"] == "k1"


def database_refused() -> sa_exc.OperationalError:
    """What a rebuild's advisory lock raises when the database refuses the connection."""
    cause = psycopg2.OperationalError("connection to server at 127.0.0.1 failed: refused")
    return sa_exc.OperationalError("SELECT count(pg_advisory_lock(...))", {}, cause)


def test_a_database_outage_met_anywhere_is_an_outage_retried_without_limit() -> None:
    verdict = judge(DECREMENT, ScriptedBus(database_refused()))
    assert (verdict.outcome, verdict.outage) == ("unavailable", True)
    assert stream_action(verdict, 500, max_deliveries=5) == "retry"
    assert verdict.rejection is not None
    assert "OperationalError" not in verdict.rejection["message"]  # internals stay in the log


def test_a_failing_statement_is_no_outage() -> None:
    failing = sa_exc.ProgrammingError("SELECT", {}, psycopg2.ProgrammingError("syntax error"))
    verdict = judge(DECREMENT, ScriptedBus(failing))
    assert (verdict.outcome, verdict.outage) == ("failed", False)
    assert stream_action(verdict, 5, max_deliveries=5) == "dead_letter"


def test_a_malformed_message_is_final_and_reaches_no_handler() -> None:
    bus = ScriptedBus(APPLIED)
    verdict = judge(b"{not json", bus)
    assert (verdict.outcome, verdict.final, bus.seen) == ("invalid", True, [])
    assert verdict.rejection is not None and verdict.rejection["reason"] == "invalid_message"


def test_the_refusal_names_its_code_and_figures() -> None:
    verdict = judge(DECREMENT, ScriptedBus(Outcome("insufficient_stock", Figures(1, 1))))
    assert verdict.rejection is not None
    assert (verdict.rejection["reason"], verdict.rejection["available"]) == (
        "insufficient_stock", 0)


@pytest.mark.parametrize("verdict, deliveries, action", [
    (Verdict("applied", "ok"), 1, "ack"),
    (Verdict("applied", "ok"), 9, "ack"),
    (Verdict("refused", "not_found"), 5, "ack"),
    (Verdict("invalid", "invalid_message"), 1, "ack"),
    (Verdict("unavailable", "redis: ResponseError: WRONGTYPE"), 1, "retry"),
    (Verdict("unavailable", "redis: ResponseError: WRONGTYPE"), 4, "retry"),
    (Verdict("unavailable", "redis: ResponseError: WRONGTYPE"), 5, "dead_letter"),
    (Verdict("failed", "error: RuntimeError"), 5, "dead_letter"),
    # An outage is nobody's fault: retried for as long as it lasts.
    (Verdict("unavailable", "unavailable: fenced", outage=True), 5, "retry"),
    (Verdict("unavailable", "unavailable: fenced", outage=True), 500, "retry"),
])
def test_what_becomes_of_a_stream_entry(verdict: Verdict, deliveries: int,
                                        action: str) -> None:
    assert stream_action(verdict, deliveries, max_deliveries=5) == action


def test_pubsub_answers_a_passing_failure_at_once() -> None:
    publisher = Recorder()
    redis_consumer._answer(DECREMENT, ScriptedBus(errors.Unavailable("redis unavailable")),
                           publisher)
    assert [(m["event"], m["reason"]) for m in publisher.messages] == [
        ("CommandRejected", "unavailable")]


# The stream consumer over fakeredis.

def test_answered_entries_are_acknowledged_and_trimmed(client: redis.Redis[bytes]) -> None:
    publisher = Recorder()
    bus = ScriptedBus(APPLIED, Outcome("insufficient_stock", Figures(5, 5)))
    consumer = stream_consumer(client, bus, publisher)
    client.xadd(STREAM, {"message": DECREMENT})
    client.xadd(STREAM, {"message": DECREMENT.replace("k1", "k2")})
    client.xadd(STREAM, {"message": "{broken"})
    client.xadd(STREAM, {"other": "field"})  # no message at all
    consumer.poll(block_ms=0)
    assert len(bus.seen) == 2
    assert [(m["idempotency_key"], m["reason"]) for m in publisher.messages] == [
        ("k2", "insufficient_stock"), (None, "invalid_message"), (None, "invalid_message")]
    assert (client.xlen(STREAM), pending(client)) == (0, 0)


def test_a_passing_failure_leaves_the_entry_pending_until_it_passes(
        client: redis.Redis[bytes]) -> None:
    publisher = Recorder()
    fenced = errors.Unavailable("ns/s is being rebuilt; retry")
    bus = ScriptedBus(fenced, redis.ResponseError("READONLY You can't write against a read "
                                                  "only replica."), APPLIED)
    consumer = stream_consumer(client, bus, publisher)
    client.xadd(STREAM, {"message": DECREMENT})
    consumer.poll(block_ms=0)
    assert (len(bus.seen), pending(client), client.xlen(STREAM)) == (1, 1, 1)
    assert publisher.messages == []  # no CommandRejected: it is not final
    consumer.poll(block_ms=0)  # read again from this consumer's pending entries
    assert (len(bus.seen), pending(client), publisher.messages) == (2, 1, [])
    consumer.poll(block_ms=0)
    assert len(bus.seen) == 3
    assert bus.seen == [commands.Decrement("ns", "s", 1, "k1")] * 3  # the same command
    assert (pending(client), client.xlen(STREAM), publisher.messages) == (0, 0, [])


def test_a_poison_entry_is_dead_lettered_after_max_deliveries(
        client: redis.Redis[bytes]) -> None:
    publisher = Recorder()
    bus = ScriptedBus(RuntimeError("a bug this message trips"))
    consumer = stream_consumer(client, bus, publisher, max_deliveries=3)
    entry_id = client.xadd(STREAM, {"message": DECREMENT})
    before = sample("allocation_consumer_dead_letters_total")
    for _ in range(3):
        consumer.poll(block_ms=0)
    assert len(bus.seen) == 3
    [(_, fields)] = client.xrange(f"{STREAM}:dead")
    assert fields == {b"entry": entry_id, b"message": DECREMENT.encode(),
                      b"reason": b"error: RuntimeError: a bug this message trips",
                      b"deliveries": b"3"}
    [answer] = publisher.messages
    assert (answer["event"], answer["reason"], answer["idempotency_key"]) == (
        "CommandRejected", "dead_lettered", "k1")
    assert (pending(client), client.xlen(STREAM)) == (0, 0)
    assert sample("allocation_consumer_dead_letters_total") == before + 1
    consumer.poll(block_ms=0)
    assert len(bus.seen) == 3  # gone: never applied again


def test_an_entry_delivered_too_often_without_an_answer_is_not_tried_again(
        client: redis.Redis[bytes]) -> None:
    """A consumer that died while handling it, again and again: the entry is set aside."""
    publisher = Recorder()
    bus = ScriptedBus(APPLIED)
    consumer = stream_consumer(client, bus, publisher, max_deliveries=1)
    client.xadd(STREAM, {"message": DECREMENT})
    client.xreadgroup(STREAM_GROUP, "me", {STREAM: ">"})
    for _ in range(POISON_DELIVERIES):  # delivered that often, never acknowledged
        client.xreadgroup(STREAM_GROUP, "me", {STREAM: "0"})
    consumer.poll(block_ms=0)
    assert bus.seen == []
    [(_, fields)] = client.xrange(f"{STREAM}:dead")
    deliveries = POISON_DELIVERIES + 2
    assert (fields[b"reason"], fields[b"deliveries"]) == (
        f"delivered {deliveries} times without an answer".encode(), str(deliveries).encode())
    assert (pending(client), client.xlen(STREAM)) == (0, 0)


def test_an_outage_of_any_length_never_dead_letters_the_entry(
        client: redis.Redis[bytes]) -> None:
    """Deliveries that met an outage count towards neither limit, however many they are."""
    publisher = Recorder()
    waits = POISON_DELIVERIES + 5
    bus = ScriptedBus(*[errors.Unavailable("database unavailable")] * waits, APPLIED)
    consumer = stream_consumer(client, bus, publisher, max_deliveries=1)
    client.xadd(STREAM, {"message": DECREMENT})
    for _ in range(waits + 1):
        consumer.poll(block_ms=0)
    assert len(bus.seen) == waits + 1
    assert (client.exists(f"{STREAM}:dead"), publisher.messages) == (0, [])
    assert (pending(client), client.xlen(STREAM)) == (0, 0)
    assert client.exists(consumer.outages) == 0  # its count goes with the entry


def test_deliveries_that_met_an_outage_do_not_count_towards_max_deliveries(
        client: redis.Redis[bytes]) -> None:
    publisher = Recorder()
    bus = ScriptedBus(errors.Unavailable("database unavailable"),
                      errors.Unavailable("database unavailable"),
                      RuntimeError("a bug"), RuntimeError("a bug"))
    consumer = stream_consumer(client, bus, publisher, max_deliveries=2)
    client.xadd(STREAM, {"message": DECREMENT})
    for _ in range(3):
        consumer.poll(block_ms=0)
    assert (client.exists(f"{STREAM}:dead"), pending(client)) == (0, 1)  # one bug: 1 of 2
    consumer.poll(block_ms=0)
    [(_, fields)] = client.xrange(f"{STREAM}:dead")
    assert fields[b"deliveries"] == b"2"


def test_a_dead_consumers_entries_are_claimed_after_they_idle(
        client: redis.Redis[bytes]) -> None:
    publisher = Recorder()
    bus = ScriptedBus(APPLIED)
    client.xgroup_create(STREAM, STREAM_GROUP, id="0", mkstream=True)
    client.xadd(STREAM, {"message": DECREMENT})
    client.xreadgroup(STREAM_GROUP, "gone", {STREAM: ">"})  # then it died
    consumer = stream_consumer(client, bus, publisher, claim_idle_ms=1)

    def applied() -> bool:
        consumer._pending_due = 0.0  # look at pending entries every round
        consumer.poll(block_ms=0)
        return bool(bus.seen)

    wait_until(applied, 5, "the stale entry to be claimed")
    assert (pending(client), client.xlen(STREAM)) == (0, 0)


def test_a_lost_group_is_made_again(client: redis.Redis[bytes]) -> None:
    bus = ScriptedBus(APPLIED)
    consumer = stream_consumer(client, bus, Recorder())
    client.xgroup_destroy(STREAM, STREAM_GROUP)  # type: ignore[no-untyped-call]
    consumer.poll(block_ms=0)  # NOGROUP: made again
    client.xadd(STREAM, {"message": DECREMENT})
    consumer.poll(block_ms=0)
    assert len(bus.seen) == 1 and client.xlen(STREAM) == 0


def test_the_stream_loop_survives_a_wrong_type_and_recovers(
        client: redis.Redis[bytes]) -> None:
    bus = ScriptedBus(APPLIED)
    consumer = StreamConsumer(bus, client, STREAM, Recorder(), "me")
    thread = threading.Thread(target=consumer.run)
    thread.start()
    try:
        wait_until(consumer.state.ready.is_set, 5, "the stream loop to start")
        errors_before = sample("allocation_consumer_errors_total", channel="stream")
        client.delete(STREAM)
        client.set(STREAM, "not a stream")
        wait_until(lambda: not consumer.state.ready.is_set(), 5, "the loop to report it")
        assert sample("allocation_consumer_up", channel="stream") == 0
        wait_until(lambda: sample("allocation_consumer_errors_total", channel="stream")
                   >= errors_before + 2, 5, "the loop to keep trying")
        client.delete(STREAM)
        wait_until(consumer.state.ready.is_set, 5, "the loop to recover")
        client.xadd(STREAM, {"message": DECREMENT})
        wait_until(lambda: bool(bus.seen), 5, "a command after the recovery")
        assert thread.is_alive()
    finally:
        consumer.stop()
        thread.join(timeout=10)


# Both loops survive any error.

@pytest.mark.parametrize("failure", [
    redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
    redis.ReadOnlyError("You can't write against a read only replica."),
    redis.ConnectionError("Connection refused"),
    RuntimeError("a bug in the loop"),
])
def test_a_loop_survives_any_error(failure: Exception) -> None:
    stopping = threading.Event()
    state = LoopState("test")
    sessions: list[int] = []

    def session() -> None:
        sessions.append(1)
        if len(sessions) <= 3:
            raise failure
        state.up()
        stopping.set()

    run_reconnecting(stopping, session, state)
    assert len(sessions) == 4 and state.ready.is_set()
    assert sample("allocation_consumer_errors_total", channel="test") >= 3


class FlakyClient:
    """A Redis whose first pub/sub subscriptions fail (a replica that was just demoted)."""

    def __init__(self, real: redis.Redis[bytes], failures: int) -> None:
        self.real, self.failures = real, failures

    def pubsub(self, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise redis.ReadOnlyError("You can't write against a read only replica.")
        return self.real.pubsub(**kwargs)


def test_the_pubsub_loop_survives_errors_and_its_handlers_failures(
        client: redis.Redis[bytes]) -> None:
    publisher = Recorder()
    bus = ScriptedBus(RuntimeError("a handler's bug"), APPLIED)
    consumer = Consumer(bus, FlakyClient(client, failures=2), "commands",  # type: ignore[arg-type]
                        publisher)
    thread = threading.Thread(target=consumer.run)
    thread.start()
    try:
        wait_until(consumer.state.ready.is_set, 5, "the pub/sub loop to subscribe")
        client.publish("commands", DECREMENT)
        wait_until(lambda: len(bus.seen) == 1, 5, "the first message")
        client.publish("commands", DECREMENT.replace("k1", "k2"))
        wait_until(lambda: len(bus.seen) == 2, 5, "the second message")
        assert [(m["idempotency_key"], m["reason"]) for m in publisher.messages] == [
            ("k1", "unavailable")]
        assert thread.is_alive()
    finally:
        consumer.stop()
        thread.join(timeout=10)


# Readiness.

def test_readiness_names_the_loop_that_is_down() -> None:
    pubsub, stream = LoopState("pubsub"), LoopState("stream")
    server = HealthServer("127.0.0.1", 0, [pubsub, stream])
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
        pubsub.up()
        down = requests.get(f"{base}/readyz", timeout=5)
        assert (down.status_code, down.json()) == (503, {"pubsub": "ok",
                                                         "stream": "unavailable"})
        stream.up()
        up = requests.get(f"{base}/readyz", timeout=5)
        assert (up.status_code, up.json()) == (200, {"pubsub": "ok", "stream": "ok"})
        metrics = requests.get(f"{base}/metrics", timeout=5)
        assert 'allocation_consumer_up{channel="stream"} 1.0' in metrics.text
        assert requests.get(f"{base}/nothing", timeout=5).status_code == 404
    finally:
        server.stop()


def test_an_entry_naming_message_twice_is_invalid_and_neither_command_is_applied(
        client: redis.Redis[bytes]) -> None:
    """redis-py folds an entry's fields into a dict, the last of two winning."""
    publisher = Recorder()
    bus = ScriptedBus(APPLIED)
    consumer = stream_consumer(client, bus, publisher)
    client.execute_command("XADD", STREAM, "*", "message", DECREMENT, "message",
                           DECREMENT.replace('"qty": 1', '"qty": 2'))
    client.xadd(STREAM, {"message": DECREMENT.replace("k1", "k2")})
    consumer.poll(block_ms=0)
    assert [(m["event"], m["reason"]) for m in publisher.messages] == [
        ("CommandRejected", "invalid_message")]
    assert "more than one message field" in publisher.messages[0]["message"]
    assert len(bus.seen) == 1  # the second entry only
    assert (client.xlen(STREAM), pending(client)) == (0, 0)


def test_an_entry_with_a_repeated_key_is_invalid(client: redis.Redis[bytes]) -> None:
    publisher = Recorder()
    bus = ScriptedBus(APPLIED)
    consumer = stream_consumer(client, bus, publisher)
    client.xadd(STREAM, {"message": DECREMENT.replace('"qty": 1', '"qty": 1, "qty": 2')})
    consumer.poll(block_ms=0)
    assert [(m["reason"], m["message"]) for m in publisher.messages] == [
        ("invalid_message", "the message repeats the key 'qty'")]
    assert bus.seen == [] and (client.xlen(STREAM), pending(client)) == (0, 0)
