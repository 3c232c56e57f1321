"""The command consumers: messages on the commands channel (pub/sub) and entries of the command
stream become commands on the bus; outcomes and refusals are answered on the events channel.

Pub/sub is at-most-once: a message sent while no consumer listens is lost, and one that meets a
passing failure is answered ``CommandRejected`` ``unavailable`` (the publisher resends it with the
same idempotency key). The stream is the reliable channel (``command_stream``).

Neither loop ends while the process runs: any error (of Redis or not) is logged, counted and
retried with a capped backoff. ``/readyz`` and the ``allocation_consumer_*`` metrics show it
(``health_server``)."""

from __future__ import annotations

import logging
import threading

from allocation.adapters.event_publisher import RedisEventPublisher
from allocation.adapters.redis_client import RedisClient
from allocation.bootstrap import Application
from allocation.entrypoints import route_table, tokens
from allocation.entrypoints.command_messages import (
    CONSUMER_COMMANDS,
    POISON_DELIVERIES,
    PUBSUB,
    Bus,
    Publisher,
    Verdict,
    judge,
    parse,
    stream_action,
)
from allocation.entrypoints.command_stream import (
    DEFAULT_CLAIM_IDLE_MS,
    DEFAULT_MAX_DELIVERIES,
    STREAM_GROUP,
    StreamConsumer,
)
from allocation.entrypoints.health_server import HealthServer, LoopState, run_reconnecting
from allocation.runtime.process import Loop, ProcessLoops
from allocation.service_layer.messagebus import MessageBus

__all__ = ["POISON_DELIVERIES", "STREAM_GROUP", "Consumer", "HealthServer", "LoopState",
           "StreamConsumer", "Verdict", "handle_message", "judge", "parse", "run",
           "run_reconnecting", "stream_action"]

logger = logging.getLogger(__name__)


def handle_message(raw: bytes | str, bus: MessageBus,
                   publisher: RedisEventPublisher) -> Verdict:
    """One pub/sub message, one unit of work, answered at once: with no redelivery, a passing
    failure too is answered (``unavailable``: resend it with the same key)."""
    return _answer(raw, bus, publisher)


def _answer(raw: bytes | str, bus: Bus, publisher: Publisher) -> Verdict:
    verdict = judge(raw, bus)
    CONSUMER_COMMANDS.labels(PUBSUB, verdict.outcome).inc()
    for message in verdict.answers:
        publisher.publish_message(message)
    return verdict


class Consumer:
    """The pub/sub loop."""

    def __init__(self, bus: Bus, client: RedisClient, commands_channel: str,
                 publisher: Publisher) -> None:
        self.bus, self.client, self.channel, self.publisher = bus, client, commands_channel, \
            publisher
        self.stopping = threading.Event()
        self.state = LoopState(PUBSUB)
        self.subscribed = self.state.ready

    def run(self) -> None:
        """Listen until ``stop``; on any error, reconnect with backoff."""
        run_reconnecting(self.stopping, self._listen, self.state)

    def _listen(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            self.state.up()
            logger.info("listening on %s", self.channel)
            while not self.stopping.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    _answer(message["data"], self.bus, self.publisher)
        finally:
            pubsub.close()

    def stop(self) -> None:
        self.stopping.set()


def run(app: Application, consumer_name: str, *,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS,
        health_host: str = "127.0.0.1", health_port: int | None = None) -> None:
    """Listen on the pub/sub channel and read the command stream, until SIGTERM. With a
    ``health_port``, serve /healthz, /readyz and /metrics (behind a token, as the API's) on it."""
    config, client, publisher, bus = app.config, app.redis, app.publish, app.bus
    if client is None:
        raise SystemExit("the consumer needs REDIS_URL: pub/sub lives in Redis")
    assert isinstance(publisher, RedisEventPublisher)
    listeners: list[Consumer | StreamConsumer] = [
        Consumer(bus, client, config.commands_channel, publisher),
        StreamConsumer(bus, client, config.commands_stream, publisher, consumer_name,
                       claim_idle_ms=claim_idle_ms, max_deliveries=max_deliveries)]
    health = None
    if health_port is not None:
        health = HealthServer(health_host, health_port, [c.state for c in listeners],
                              route_table.Access(tokens.token_cache(app)))
        health.start()
        logger.info("health on http://%s:%d (/healthz, /readyz, /metrics)", health_host,
                    health.port)
    loops = [Loop(f"{c.state.channel}-consumer", c.run, c.stop) for c in listeners]
    try:
        ProcessLoops(loops, if_one_ends="restart").run()
    finally:
        if health is not None:
            health.stop()
