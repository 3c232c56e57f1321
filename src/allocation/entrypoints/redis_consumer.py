"""The pub/sub command consumer: messages on the commands channel become commands on the bus;
outcomes and refusals are answered on the events channel. Pub/sub is at-most-once: a message sent
while no consumer listens is lost; the idempotency key makes resending safe."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

import redis
from pydantic import ValidationError

from allocation.adapters.event_publisher import RedisEventPublisher
from allocation.adapters.redis_client import RedisClient
from allocation.domain import commands, errors
from allocation.domain.outcome import Outcome
from allocation.entrypoints import schemas
from allocation.service_layer.messagebus import MessageBus

logger = logging.getLogger(__name__)


def parse(raw: bytes | str) -> commands.Command:
    """A message as a command; raises ``ValueError`` naming what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    try:
        message = schemas.CommandEnvelope.model_validate(data).root
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}: {first['msg']}" if where else first["msg"]) from None
    if isinstance(message, schemas.InitMessage):
        return commands.InitInventory(message.namespace, message.sku, message.total)
    if isinstance(message, schemas.AdjustMessage):
        return commands.AdjustTotal(message.namespace, message.sku, message.delta,
                                    message.idempotency_key)
    if isinstance(message, schemas.DecrementMessage):
        return commands.Decrement(message.namespace, message.sku, message.qty,
                                  message.idempotency_key)
    return commands.Refund(message.namespace, message.sku, message.qty, message.idempotency_key)


def _rejection(raw: Any, reason: str, message: str,
               figures: Outcome | None = None) -> dict[str, Any]:
    data = _loose(raw)
    body: dict[str, Any] = {
        "event": "CommandRejected", "reason": reason, "message": message,
        "command": data.get("command"), "idempotency_key": data.get("idempotency_key"),
        "namespace": data.get("namespace"), "sku": data.get("sku")}
    if figures is not None:
        body.update(total=figures.total, consumed=figures.consumed, available=figures.available)
    return body


def _loose(raw: Any) -> dict[str, Any]:
    """Whatever fields of a rejected message can be echoed back."""
    try:
        data = json.loads(raw)
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str | int | None)}


def handle_message(raw: bytes | str, bus: MessageBus, publisher: RedisEventPublisher) -> None:
    """One message, one unit of work. Never raises: a bad message is logged and answered."""
    try:
        command = parse(raw)
    except ValueError as exc:
        logger.warning("rejected malformed message %r: %s", raw[:200], exc)
        publisher.publish_message(_rejection(raw, "invalid_message", str(exc)))
        return
    try:
        result = bus.handle(command)
    except errors.DomainError as exc:
        publisher.publish_message(_rejection(raw, exc.code, exc.message))
        return
    except errors.Unavailable as exc:
        logger.warning("could not apply %r: %s", command, exc.message)
        publisher.publish_message(_rejection(raw, "unavailable", exc.message))
        return
    if isinstance(result, Outcome) and not result.ok:
        publisher.publish_message(_rejection(raw, result.status, result.error().message, result))


def run_reconnecting(stopping: threading.Event, session: Callable[[], None],
                     on_lost: Callable[[], None] = lambda: None) -> None:
    """Run ``session`` until ``stopping``; when Redis goes away, wait (backing off) and again."""
    backoff = 0.1
    while not stopping.is_set():
        try:
            session()
            backoff = 0.1
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            on_lost()
            logger.warning("redis connection lost (%s); reconnecting in %.1fs", exc, backoff)
            stopping.wait(backoff)
            backoff = min(backoff * 2, 5.0)


class Consumer:
    def __init__(self, bus: MessageBus, client: RedisClient, commands_channel: str,
                 publisher: RedisEventPublisher) -> None:
        self.bus, self.client, self.channel, self.publisher = bus, client, commands_channel, \
            publisher
        self.stopping = threading.Event()
        self.subscribed = threading.Event()

    def run(self) -> None:
        """Listen until ``stop``; reconnect with backoff when Redis goes away."""
        run_reconnecting(self.stopping, self._listen, on_lost=self.subscribed.clear)

    def _listen(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            self.subscribed.set()
            logger.info("listening on %s", self.channel)
            while not self.stopping.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    handle_message(message["data"], self.bus, self.publisher)
        finally:
            pubsub.close()

    def stop(self) -> None:
        self.stopping.set()


STREAM_GROUP = "allocation"


class StreamConsumer:
    """The reliable channel: commands added to a stream wait there while no consumer runs, and
    one that died holding some is relieved of them by another. Each entry is acknowledged after
    its unit of work; idempotency keys make a redelivered command take effect once."""

    def __init__(self, bus: MessageBus, client: RedisClient, stream: str,
                 publisher: RedisEventPublisher, name: str, claim_idle_ms: int = 30_000) -> None:
        self.bus, self.client, self.stream, self.publisher = bus, client, stream, publisher
        self.name, self.claim_idle_ms = name, claim_idle_ms
        self.stopping = threading.Event()

    def run(self) -> None:
        run_reconnecting(self.stopping, self._consume)

    def _consume(self) -> None:
        try:
            self._ensure_group()
            while not self.stopping.is_set():
                self.client.xautoclaim(self.stream, STREAM_GROUP, self.name,
                                       min_idle_time=self.claim_idle_ms, count=100)
                self._drain("0")  # this consumer's unacknowledged entries first
                self._drain(">", block_ms=1000)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            logger.warning("the command stream's group is gone (Redis lost it); making it")

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, STREAM_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _drain(self, start: str, block_ms: int | None = None) -> None:
        reply = self.client.xreadgroup(STREAM_GROUP, self.name, {self.stream: start},
                                       count=100, block=block_ms)
        for _, entries in reply:
            for entry_id, fields in entries:
                if fields:
                    handle_message(fields.get(b"message", b""), self.bus, self.publisher)
                self.client.xack(self.stream, STREAM_GROUP, entry_id)  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        self.stopping.set()


def run(bus: MessageBus, consumer_name: str) -> None:
    """Listen on the pub/sub channel and read the command stream, until SIGTERM."""
    config = bus.dependencies["config"]
    client: RedisClient | None = bus.dependencies.get("redis")
    if client is None:
        raise SystemExit("the consumer needs REDIS_URL: pub/sub lives in Redis")
    publisher = bus.dependencies["publish"]
    assert isinstance(publisher, RedisEventPublisher)
    listeners: list[Consumer | StreamConsumer] = [
        Consumer(bus, client, config.commands_channel, publisher),
        StreamConsumer(bus, client, config.commands_stream, publisher, consumer_name)]
    signal.signal(signal.SIGTERM, lambda *_: [c.stop() for c in listeners])
    threads = [threading.Thread(target=c.run, name=type(c).__name__) for c in listeners]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)
    except KeyboardInterrupt:
        for c in listeners:
            c.stop()
