"""The command consumers: messages on the commands channel (pub/sub) and entries of the command
stream become commands on the bus; outcomes and refusals are answered on the events channel.

Pub/sub is at-most-once: a message sent while no consumer listens is lost, and one that meets a
passing failure is answered ``CommandRejected`` ``unavailable`` (the publisher resends it with the
same idempotency key). The stream is the reliable channel: an entry is acknowledged (and deleted)
only once its answer is final, an applied command or a refusal; one that meets a passing failure
stays pending and is delivered again, until ``max_deliveries`` moves it to ``<stream>:dead``.

Neither loop ends while the process runs: any error (of Redis or not) is logged, counted and
retried with a capped backoff. ``/readyz`` and the ``allocation_consumer_*`` metrics show it."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import unquote

import redis
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from pydantic import ValidationError

from allocation.adapters.event_publisher import RedisEventPublisher, event_message
from allocation.adapters.outages import is_outage
from allocation.adapters.redis_client import RedisClient, read_group
from allocation.bootstrap import Application
from allocation.domain import commands, errors, events
from allocation.domain.outcome import Outcome
from allocation.entrypoints import access, metrics, replies, schemas
from allocation.service_layer.messagebus import MessageBus
from allocation.service_layer.results import Reservation

logger = logging.getLogger(__name__)

PUBSUB, STREAM = "pubsub", "stream"  # the two loops, as /readyz and the metrics name them
RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS = 0.1, 5.0
RETRY_MIN_SECONDS, RETRY_MAX_SECONDS = 0.25, 5.0  # re-reading entries that met a passing failure
PENDING_INTERVAL_SECONDS = 1.0  # how often pending entries (own and stale others') are looked at
DEFAULT_MAX_DELIVERIES = 5
DEFAULT_CLAIM_IDLE_MS = 30_000
HEALTH_REQUEST_SECONDS = 10.0  # a health port's request is read within this
STREAM_GROUP = "allocation"

# What became of a command: final (applied, refused, invalid) or passing (unavailable, failed:
# an unexpected error, logged with its traceback); dead_lettered: passing too many times.
APPLIED, REFUSED, INVALID = "applied", "refused", "invalid"
UNAVAILABLE, FAILED, DEAD_LETTERED = "unavailable", "failed", "dead_lettered"

CONSUMER_UP = Gauge("allocation_consumer_up",
                    "1 while the consumer loop is connected to Redis and reading", ["channel"],
                    multiprocess_mode="livemax")
CONSUMER_ERRORS = Counter("allocation_consumer_errors_total",
                          "Errors that interrupted a consumer loop (it reconnects)", ["channel"])
CONSUMER_COMMANDS = Counter("allocation_consumer_commands_total",
                            "Commands read, by channel and what became of them",
                            ["channel", "outcome"])
CONSUMER_DEAD_LETTERS = Counter("allocation_consumer_dead_letters_total",
                                "Stream entries moved to the dead-letter stream")


class Bus(Protocol):
    def handle(self, message: Any) -> Any: ...


class Publisher(Protocol):
    def publish_message(self, message: dict[str, Any]) -> None: ...


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
        if first["type"] == "extra_forbidden":
            first["msg"] = "is not a field of this command"
        raise ValueError(f"{where}: {first['msg']}" if where else first["msg"]) from None
    if isinstance(message, schemas.InitMessage):
        return commands.InitInventory(message.namespace, message.sku, message.total)
    if isinstance(message, schemas.AdjustMessage):
        return commands.AdjustTotal(message.namespace, message.sku, message.delta,
                                    message.idempotency_key)
    if isinstance(message, schemas.DecrementMessage):
        return commands.Decrement(message.namespace, message.sku, message.qty,
                                  message.idempotency_key, message.buyer)
    if isinstance(message, schemas.ReserveMessage):
        return commands.Reserve(message.namespace,
                                tuple((line.sku, line.qty) for line in message.lines),
                                message.idempotency_key, message.ttl_seconds, message.buyer)
    if isinstance(message, schemas.ConfirmReservationMessage):
        return commands.ConfirmReservation(message.namespace, message.reservation_id)
    if isinstance(message, schemas.ReleaseReservationMessage):
        return commands.ReleaseReservation(message.namespace, message.reservation_id)
    return commands.Refund(message.namespace, message.sku, message.qty, message.idempotency_key,
                           message.buyer)


# What a refusal's details may add to its CommandRejected: a reservation's refusal names the
# line that failed (``sku``), as its HTTP answer does, with what is available or remains.
_ECHOED_DETAILS = ("sku", "available", "remaining")


def _rejection(raw: Any, reason: str, message: str, figures: Outcome | None = None,
               details: Mapping[str, int | str] | None = None) -> dict[str, Any]:
    data = _loose(raw)
    body: dict[str, Any] = {
        "event": "CommandRejected", "reason": reason, "message": message,
        "command": data.get("command"), "idempotency_key": data.get("idempotency_key"),
        "namespace": data.get("namespace"), "sku": data.get("sku")}
    if "reservation_id" in data:  # confirm and release carry no key: this tells them apart
        body["reservation_id"] = data["reservation_id"]
    for name in _ECHOED_DETAILS:
        if details and name in details and body.get(name) is None:
            body[name] = details[name]
    if figures is not None:
        body.update(total=figures.total, consumed=figures.consumed, available=figures.available)
        if figures.remaining is not None:
            body["remaining"] = figures.remaining
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


@dataclass(frozen=True)
class Verdict:
    """What applying one message came to. ``reason``: a refusal's code, or what failed (for the
    log and the dead-letter stream); ``rejection``: the ``CommandRejected`` answering it;
    ``replayed``: a repeated command's first answer, published again (its events were published
    when it was applied, and the publisher may have missed them)."""

    outcome: str
    reason: str
    rejection: dict[str, Any] | None = None
    replayed: tuple[dict[str, Any], ...] = ()
    # A dependency away (not this message's fault): retried for as long as it lasts, never
    # counted towards dead-lettering.
    outage: bool = False

    @property
    def answers(self) -> tuple[dict[str, Any], ...]:
        """What to publish for it."""
        return self.replayed if self.rejection is None else (self.rejection,)

    @property
    def final(self) -> bool:
        """Applied or refused for good; otherwise the failure may pass and a retry succeed."""
        return self.outcome in (APPLIED, REFUSED, INVALID)


def judge(raw: bytes | str, bus: Bus) -> Verdict:
    """Apply one message. Never raises: every failure, expected or not, is a verdict."""
    try:
        command = parse(raw)
    except ValueError as exc:
        logger.warning("rejected malformed message %r: %s", raw[:200], exc)
        return Verdict(INVALID, "invalid_message", _rejection(raw, "invalid_message", str(exc)))
    try:
        result = bus.handle(command)
    except errors.DomainError as exc:  # a reservation's refusals, among others, are raised
        metrics.count_answer(command, exc)
        return Verdict(REFUSED, exc.code,
                       _rejection(raw, exc.code, exc.message, details=exc.details))
    except Exception as exc:  # noqa: BLE001 - every failure is a verdict
        return _failure(raw, command, exc)
    metrics.count_answer(command, result)
    # Movements answer a refusal as a non-ok Outcome; other handlers (a reservation's return a
    # Reservation) raise theirs, above. Their events are out already, from the counter's
    # script or the service layer.
    if isinstance(result, Outcome) and not result.ok:
        rejection = _rejection(raw, result.status, result.error().message, result)
        if result.replayed:
            rejection["replayed"] = True
        return Verdict(REFUSED, result.status, rejection)
    return Verdict(APPLIED, "ok", replayed=_first_answer(command, result))


def _first_answer(command: commands.Command, result: Any) -> tuple[dict[str, Any], ...]:
    """A repeated command's first answer, marked ``replayed``; nothing for a first one. A
    movement's replay carries the figures of its first answer (the counter keeps them with the
    key); a reservation's, its lines and where it stands now (the items' figures of the moment
    it was held are not kept)."""
    if isinstance(result, Outcome) and result.replayed:
        if isinstance(command, commands.AdjustTotal):
            kind, qty, buyer = "adjust", command.delta, None
        elif isinstance(command, commands.Decrement | commands.Refund):
            kind = "decrement" if isinstance(command, commands.Decrement) else "refund"
            qty, buyer = command.qty, command.buyer
        else:
            return ()
        raised = events.of_movement(kind, command.namespace, command.sku, qty,
                                    command.idempotency_key, result.total, result.consumed,
                                    buyer, held=result.held)
        return tuple({**event_message(e), "replayed": True} for e in raised[:1])
    if isinstance(result, Reservation) and result.replayed and isinstance(command,
                                                                        commands.Reserve):
        return tuple({"event": "Reserved", "namespace": result.namespace, "sku": sku,
                      "reservation_id": result.id, "qty": qty,
                      "idempotency_key": command.idempotency_key, "state": result.state,
                      "expires_at": result.expires_at.isoformat(), "replayed": True}
                     for sku, qty in result.lines)
    return ()


def _failure(raw: bytes | str, command: commands.Command, exc: Exception) -> Verdict:
    """A command that could not be applied, classified once: an outage (a dependency away,
    however deep in the handler it was met, as a rebuild's lock is) is retried for as long as it
    lasts; any other Redis error (WRONGTYPE, say) may pass; anything else is a bug, logged."""
    outage = is_outage(exc)
    if isinstance(exc, errors.Unavailable):
        logger.warning("could not apply %r: %s", command, exc.message)
        return Verdict(UNAVAILABLE, f"unavailable: {exc.message}",
                       _rejection(raw, "unavailable", exc.message), outage=True)
    if outage or isinstance(exc, redis.RedisError):
        logger.warning("could not apply %r: %s: %s", command, type(exc).__name__, exc)
        return Verdict(UNAVAILABLE, f"{type(exc).__name__}: {exc}",
                       _rejection(raw, "unavailable", "a dependency is unavailable; resend "
                                  "it with the same key"), outage=outage)
    logger.exception("failed applying %r", command)
    return Verdict(FAILED, f"error: {type(exc).__name__}: {exc}",
                   _rejection(raw, "unavailable", "the command could not be applied"))


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


POISON_DELIVERIES = 50


def stream_action(verdict: Verdict, deliveries: int, max_deliveries: int) -> str:
    """What to do with a stream entry after its ``deliveries``-th attempt: "ack" (final),
    "retry" (leave it pending) or "dead_letter"."""
    if verdict.final:
        return "ack"
    if verdict.outage:
        return "retry"
    return "dead_letter" if deliveries >= max_deliveries else "retry"


class LoopState:
    """Whether one consumer loop is connected and reading: for /readyz and the metrics."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.ready = threading.Event()
        self._connected_since_failure = False
        self._gauge = CONSUMER_UP.labels(channel)
        self._gauge.set(0)

    def up(self) -> None:
        self._connected_since_failure = True
        self.ready.set()
        self._gauge.set(1)

    def down(self) -> None:
        self.ready.clear()
        self._gauge.set(0)

    def recovered(self) -> bool:
        """Whether the loop got up since this was last asked (the backoff then starts over)."""
        recovered, self._connected_since_failure = self._connected_since_failure, False
        return recovered


def run_reconnecting(stopping: threading.Event, session: Callable[[], None],
                     state: LoopState) -> None:
    """Run ``session`` until ``stopping``. Whatever ends it otherwise (any Redis error, any
    other exception) is logged and counted, and it starts again after a backoff: doubling from
    0.1 s to 5 s, from the start again once a session got up."""
    backoff = RECONNECT_MIN_SECONDS
    errors_total = CONSUMER_ERRORS.labels(state.channel)
    while not stopping.is_set():
        try:
            session()
            if stopping.is_set():
                break
            logger.warning("the %s consumer's session ended; starting it again", state.channel)
        except redis.RedisError as exc:
            logger.warning("the %s consumer lost redis (%s: %s); retrying", state.channel,
                           type(exc).__name__, exc)
        except Exception:
            logger.exception("the %s consumer failed; retrying", state.channel)
        state.down()
        errors_total.inc()
        if state.recovered():
            backoff = RECONNECT_MIN_SECONDS
        logger.info("the %s consumer retries in %.1fs", state.channel, backoff)
        stopping.wait(backoff)
        backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)


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


def _id(entry_id: Any) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


class StreamConsumer:
    """The reliable channel: commands added to a stream wait there while no consumer runs, and
    one that died holding some is relieved of them by another (after ``claim_idle_ms``). An
    entry is acknowledged and deleted once its answer is final; one that met a passing failure
    stays pending and is read again after a backoff, and after ``max_deliveries`` deliveries it
    is moved to ``<stream>:dead``. Idempotency keys make a redelivered command take effect
    once."""

    def __init__(self, bus: Bus, client: RedisClient, stream: str,
                 publisher: Publisher, name: str, claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS,
                 max_deliveries: int = DEFAULT_MAX_DELIVERIES) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        self.bus, self.client, self.stream, self.publisher = bus, client, stream, publisher
        self.name, self.claim_idle_ms, self.max_deliveries = name, claim_idle_ms, max_deliveries
        self.dead_letters = f"{stream}:dead"
        # Entry id -> its deliveries that met an outage: those count towards no limit, so an
        # entry waits out an outage of any length (kept in Redis: a restart keeps the count).
        self.outages = f"{stream}:outages"
        self.stopping = threading.Event()
        self.state = LoopState(STREAM)
        self._pending_due = 0.0  # monotonic time to look at pending entries again; 0: at once
        self._retry_delay = RETRY_MIN_SECONDS
        self._claim_cursor: Any = "0-0"

    def run(self) -> None:
        run_reconnecting(self.stopping, self._consume, self.state)

    def stop(self) -> None:
        self.stopping.set()

    def _consume(self) -> None:
        self._ensure_group()
        self._pending_due = 0.0  # what this consumer holds first
        self.state.up()
        logger.info("reading stream %s as %s", self.stream, self.name)
        while not self.stopping.is_set():
            self.poll()

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, STREAM_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def poll(self, block_ms: int = 1000) -> None:
        """One round: the pending entries when they are due (this consumer's own, then others'
        idle past ``claim_idle_ms``), then new ones, waiting for them up to ``block_ms``."""
        try:
            if time.monotonic() >= self._pending_due:
                self._schedule_pending(retry=self._read_pending())
            wait = min(block_ms, int((self._pending_due - time.monotonic()) * 1000))
            if self._read_new(wait if wait > 0 else None):  # BLOCK 0 would wait for ever
                self._schedule_pending(retry=True, sooner_only=True)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            logger.warning("the command stream's group is gone (Redis lost it); making it")
            self._ensure_group()

    def _schedule_pending(self, retry: bool, sooner_only: bool = False) -> None:
        now = time.monotonic()
        if not retry:
            self._retry_delay = RETRY_MIN_SECONDS
            self._pending_due = now + PENDING_INTERVAL_SECONDS
        elif sooner_only:
            self._pending_due = min(self._pending_due, now + self._retry_delay)
        else:
            self._pending_due = now + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECONDS)

    def _read_new(self, block_ms: int | None) -> bool:
        """Handle new entries; whether any met a passing failure."""
        reply = read_group(self.client, STREAM_GROUP, self.name, self.stream, ">", 100,
                           block_ms)
        entries = [(i, f) for _, items in reply or [] for i, f in items]
        return self._handle_batch(entries, {_id(i): 1 for i, _ in entries})

    def _read_pending(self) -> bool:
        """Handle this consumer's pending entries, then claim and handle others' stale ones;
        whether any met a passing failure again."""
        retry, start = False, "0"
        for _ in range(100):  # at most 10 000 entries a round; the rest in the next
            reply = read_group(self.client, STREAM_GROUP, self.name, self.stream, start, 100)
            entries = [(i, f) for _, items in reply or [] for i, f in items]
            if not entries:
                break
            retry |= self._handle_batch(entries, self._deliveries(entries))
            start = _id(entries[-1][0])
            if len(entries) < 100:
                break
        claimed = self.client.xautoclaim(self.stream, STREAM_GROUP, self.name,
                                         min_idle_time=self.claim_idle_ms,
                                         start_id=self._claim_cursor, count=100)
        self._claim_cursor = claimed[0]
        entries = list(claimed[1])
        if entries:
            logger.info("claimed %d stale entries of the command stream", len(entries))
            retry |= self._handle_batch(entries, self._deliveries(entries))
        return retry

    def _deliveries(self, entries: Sequence[tuple[Any, Any]]) -> dict[str, int]:
        """How many times each entry has been delivered (this delivery included), but for the
        deliveries that met an outage."""
        pipe = self.client.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipe.xpending_range(self.stream, STREAM_GROUP, min=entry_id, max=entry_id,
                                count=1)
        pipe.hmget(self.outages, [_id(entry_id) for entry_id, _ in entries])
        *pending, outages = pipe.execute()
        found: dict[str, int] = {}
        for rows in pending:
            for row in rows:
                found[_id(row["message_id"])] = int(row["times_delivered"])
        for (entry_id, _), waited in zip(entries, outages, strict=True):
            if waited is not None and _id(entry_id) in found:
                found[_id(entry_id)] = max(1, found[_id(entry_id)] - int(waited))
        return found

    def _handle_batch(self, entries: Iterable[tuple[Any, Any]],
                      deliveries: Mapping[str, int]) -> bool:
        """Handle entries in order, acknowledging (and deleting) the finished ones together;
        whether any is left to retry."""
        done: list[Any] = []
        retry = False
        try:
            for entry_id, fields in entries:
                if not fields:  # deleted while pending: nothing to do
                    done.append(entry_id)
                    continue
                action = self._handle_entry(entry_id, fields,
                                            deliveries.get(_id(entry_id), 1))
                if action == "retry":
                    retry = True
                else:
                    done.append(entry_id)
        finally:
            self._done(done)
        return retry

    def _handle_entry(self, entry_id: Any, fields: Mapping[bytes, bytes],
                      deliveries: int) -> str:
        raw = fields.get(b"message", b"")
        if deliveries > POISON_DELIVERIES * self.max_deliveries:
            # Delivered that often and never answered: its handling kills the consumer, say.
            # (Deliveries that met an outage are not counted: ``_deliveries``.)
            self._dead_letter(entry_id, raw, f"delivered {deliveries} times without an answer",
                              deliveries)
            return "dead_letter"
        verdict = judge(raw, self.bus)
        action = stream_action(verdict, deliveries, self.max_deliveries)
        if action == "ack":
            CONSUMER_COMMANDS.labels(STREAM, verdict.outcome).inc()
            for message in verdict.answers:
                self.publisher.publish_message(message)
        elif action == "retry":
            CONSUMER_COMMANDS.labels(STREAM, verdict.outcome).inc()
            if verdict.outage:
                self.client.hincrby(self.outages, _id(entry_id), 1)
            logger.warning("command stream entry %s left pending (delivery %d of %d): %s",
                           _id(entry_id), deliveries, self.max_deliveries, verdict.reason)
        else:
            self._dead_letter(entry_id, raw, verdict.reason, deliveries)
        return action

    def _dead_letter(self, entry_id: Any, raw: bytes, reason: str, deliveries: int) -> None:
        logger.error("command stream entry %s moved to %s after %d deliveries: %s",
                     _id(entry_id), self.dead_letters, deliveries, reason)
        self.client.xadd(self.dead_letters, {"entry": _id(entry_id), "message": raw,
                                             "reason": reason, "deliveries": deliveries})
        # What failed stays with the operator (the log, the dead letter): a client is told
        # where the command is kept, not the internals that refused it.
        self.publisher.publish_message(_rejection(
            raw, DEAD_LETTERED,
            f"not applied after {deliveries} deliveries; kept in {self.dead_letters}"))
        CONSUMER_COMMANDS.labels(STREAM, DEAD_LETTERED).inc()
        CONSUMER_DEAD_LETTERS.inc()

    def _done(self, ids: list[Any]) -> None:
        if not ids:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.stream, STREAM_GROUP, *ids)
        pipe.xdel(self.stream, *ids)  # answered: keep the stream to what is not
        pipe.hdel(self.outages, *[_id(i) for i in ids])
        pipe.execute()


class HealthServer:
    """``GET /healthz``, ``/readyz`` (both loops connected) and ``/metrics``, from a thread.
    ``/metrics`` (every tenant's figures) is behind the API's own ``Access`` check: a ``*``
    token when ``AUTH=required`` (API.md, Access)."""

    def __init__(self, host: str, port: int, loops: Sequence[LoopState],
                 guard: access.Access | None = None) -> None:
        self.loops = loops
        handler = _health_handler(self.readiness, guard or access.Access(None))
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="health",
                                       daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def readiness(self) -> tuple[bool, dict[str, str]]:
        states = {loop.channel: "ok" if loop.ready.is_set() else "unavailable"
                  for loop in self.loops}
        return all(s == "ok" for s in states.values()), states

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _health_handler(readiness: Callable[[], tuple[bool, dict[str, str]]],
                    guard: access.Access) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = HEALTH_REQUEST_SECONDS  # a client that stops sending frees its thread

        def do_GET(self) -> None:
            path = unquote(self.path.split("?", 1)[0])
            refusal = guard.refusal({"REQUEST_METHOD": "GET", "PATH_INFO": path,
                                     "HTTP_AUTHORIZATION": self.headers.get("Authorization")})
            if refusal is not None:
                self._send(refusal.status, replies.encode(refusal), "application/json",
                           refusal.headers)
            elif path == "/healthz":
                self._json(HTTPStatus.OK, {"status": "ok"})
            elif path == "/readyz":
                ready, states = readiness()
                self._json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, states)
            elif path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not_found",
                                                  "message": "no such path"})

        def _json(self, status: HTTPStatus, body: dict[str, str]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str,
                  headers: Iterable[tuple[str, str]] = ()) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("health: " + format, *args)

    return Handler


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
                              access.Access(access.token_cache(app)))
        health.start()
        logger.info("health on http://%s:%d (/healthz, /readyz, /metrics)", health_host,
                    health.port)
    stopping = threading.Event()

    def stop(*_: Any) -> None:
        stopping.set()
        for c in listeners:
            c.stop()

    signal.signal(signal.SIGTERM, stop)
    threads = [_start(c) for c in listeners]
    try:
        while not stopping.wait(0.5):
            for i, c in enumerate(listeners):
                if not threads[i].is_alive():  # only a BaseException gets here; still, go on
                    logger.error("the %s consumer's thread ended; starting it again",
                                 c.state.channel)
                    threads[i] = _start(c)
    except KeyboardInterrupt:
        stop()
    finally:
        for thread in threads:
            thread.join(timeout=10)
        if health is not None:
            health.stop()


def _start(listener: Consumer | StreamConsumer) -> threading.Thread:
    thread = threading.Thread(target=listener.run, name=f"{listener.state.channel}-consumer",
                              daemon=True)
    thread.start()
    return thread
