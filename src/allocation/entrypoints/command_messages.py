"""What a command message comes to: parsed (strictly), applied on the bus, judged (applied,
refused, invalid, or a passing failure, an outage among them) and answered on the events channel.
Both command consumers (pub/sub and the stream) judge messages here; only what they do with a
passing failure differs."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import redis
from prometheus_client import Counter
from pydantic import Field, RootModel, ValidationError
from pydantic_core import ErrorDetails

from allocation.adapters.event_publisher import event_message
from allocation.adapters.outages import is_outage
from allocation.domain import commands, errors, events
from allocation.domain.outcome import Outcome
from allocation.entrypoints import metrics, replies, schemas
from allocation.entrypoints.sale_schemas import JoinQueueMessage
from allocation.service_layer.results import Reservation
from allocation.service_layer.sales import TicketAnswer

logger = logging.getLogger(__name__)

PUBSUB, STREAM = "pubsub", "stream"  # the two loops, as /readyz and the metrics name them

# What became of a command: final (applied, refused, invalid) or passing (unavailable, failed:
# an unexpected error, logged with its traceback); dead_lettered: passing too many times.
APPLIED, REFUSED, INVALID = "applied", "refused", "invalid"
UNAVAILABLE, FAILED, DEAD_LETTERED = "unavailable", "failed", "dead_lettered"
POISON_DELIVERIES = 50

CONSUMER_COMMANDS = Counter("allocation_consumer_commands_total",
                            "Commands read, by channel and what became of them",
                            ["channel", "outcome"])


class CommandEnvelope(RootModel[Annotated[schemas.CommandMessage | JoinQueueMessage,
                                          Field(discriminator="command")]]):
    """Any one command message (API.md, "Redis pub/sub" and "Waiting room"), told apart by its
    ``command``."""


class Bus(Protocol):
    def handle(self, message: Any) -> Any: ...


class Publisher(Protocol):
    def publish_message(self, message: dict[str, Any]) -> None: ...


def parse(raw: bytes | str) -> commands.Command:
    """A message as a command; raises ``ValueError`` naming what is wrong."""
    try:
        data = schemas.strict_json(raw)
    except schemas.RepeatedKey as exc:
        raise ValueError(f"the message repeats the key {exc.key!r}") from None
    except ValueError as exc:  # NotUtf8 among them: its text is ours, not the codec's
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    try:
        message = CommandEnvelope.model_validate(data).root
    except ValidationError as exc:
        raise ValueError(_complaint(exc.errors()[0], data)) from None
    if isinstance(message, JoinQueueMessage):
        return commands.JoinQueue(message.namespace, message.sale, message.buyer)
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


def _complaint(error: ErrorDetails, data: Any) -> str:
    """A message's first problem, naming its field as an HTTP answer does (``lines.0.qty``,
    without the command's name pydantic puts first)."""
    kind, where = error["type"], error["loc"]
    if kind == "union_tag_not_found":
        return "command: is required"
    if kind == "union_tag_invalid":
        return f"command: must be one of {error['ctx']['expected_tags']}"
    if where and isinstance(data, dict) and where[0] == data.get("command"):
        where = where[1:]
    message = replies.problem(error, "command")
    field = ".".join(str(p) for p in where)
    return f"{field}: {message}" if field else f"the message {message}"


# What a refusal's details may add to its CommandRejected: a reservation's refusal names the
# line that failed (``sku``), as its HTTP answer does, with what is available or remains.
_ECHOED_DETAILS = ("sku", "available", "remaining")


# The figures a refused movement's answer carries, of those an item's body has.
REFUSAL_FIGURES = ("total", "consumed", "available")


def rejection(raw: Any, reason: str, message: str, outcome: Outcome | None = None,
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
    if outcome is not None:
        figures = replies.figures_body(outcome.figures)
        body.update((name, figures[name]) for name in REFUSAL_FIGURES)
        if outcome.remaining is not None:
            body["remaining"] = outcome.remaining
    return body


def _loose(raw: Any) -> dict[str, Any]:
    """Whatever fields of a rejected message can be echoed back (none of one that is not
    UTF-8: what ``json.loads`` would guess it says is no answer to give)."""
    try:
        data = json.loads(schemas.json_text(raw))
    except (ValueError, TypeError, AttributeError, RecursionError):
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
    # The answer a command has whether or not it is a repeat (QueueJoined: the ticket).
    answered: tuple[dict[str, Any], ...] = ()

    @property
    def answers(self) -> tuple[dict[str, Any], ...]:
        """What to publish for it."""
        return self.replayed + self.answered if self.rejection is None else (self.rejection,)

    @property
    def final(self) -> bool:
        """Applied or refused for good; otherwise the failure may pass and a retry succeed."""
        return self.outcome in (APPLIED, REFUSED, INVALID)


def judge(raw: bytes | str, bus: Bus) -> Verdict:
    """Apply one message. Never raises: every failure, expected or not, is a verdict."""
    try:
        command = parse(raw)
    except ValueError as exc:
        return invalid(raw, str(exc))
    try:
        result = bus.handle(command)
    except errors.DomainError as exc:  # a reservation's refusals, among others, are raised
        metrics.count_answer(command, exc)
        return Verdict(REFUSED, exc.code,
                       rejection(raw, exc.code, exc.message, details=exc.details))
    except Exception as exc:  # noqa: BLE001 - every failure is a verdict
        return _failure(raw, command, exc)
    metrics.count_answer(command, result)
    # Movements answer a refusal as a non-ok Outcome; other handlers (a reservation's return a
    # Reservation) raise theirs, above. Their events are out already, from the counter's
    # script or the service layer.
    if isinstance(result, Outcome) and not result.ok:
        refusal = rejection(raw, result.status, result.error().message, result)
        if result.replayed:
            refusal["replayed"] = True
        return Verdict(REFUSED, result.status, refusal)
    if isinstance(result, TicketAnswer) and isinstance(command, commands.JoinQueue):
        return Verdict(APPLIED, "ok", answered=({
            "event": "QueueJoined", "namespace": command.namespace, "sale": command.sale,
            "buyer": command.buyer, "ticket": result.ticket, "state": result.state,
            "position": result.position, "joined": result.joined},))
    return Verdict(APPLIED, "ok", replayed=_first_answer(command, result))


def invalid(raw: bytes | str, complaint: str) -> Verdict:
    """A malformed message's verdict (final: no retry makes it right), logged."""
    logger.warning("rejected malformed message %r: %s", raw[:200], complaint)
    return Verdict(INVALID, "invalid_message", rejection(raw, "invalid_message", complaint))


def _first_answer(command: commands.Command, result: Any) -> tuple[dict[str, Any], ...]:
    """A repeated command's first answer, marked ``replayed``; nothing for a first one. A
    movement's replay carries the figures of its first answer (the counter keeps them with the
    key); a reservation's (held, confirmed, released), its lines and where it stands now (the
    items' figures of the moment it was held or ended are not kept)."""
    if isinstance(result, Outcome) and result.replayed:
        if isinstance(command, commands.AdjustTotal):
            kind, qty, buyer = "adjust", command.delta, None
        elif isinstance(command, commands.Decrement | commands.Refund):
            kind = "decrement" if isinstance(command, commands.Decrement) else "refund"
            qty, buyer = command.qty, command.buyer
        else:
            return ()
        raised = events.of_movement(kind, command.namespace, command.sku, qty,
                                    command.idempotency_key, result.figures.total,
                                    result.figures.consumed, buyer, held=result.figures.held)
        return tuple({**event_message(e), "replayed": True} for e in raised[:1])
    if isinstance(result, Reservation) and result.replayed and isinstance(command,
                                                                        commands.Reserve):
        return tuple({"event": "Reserved", "namespace": result.namespace, "sku": sku,
                      "reservation_id": result.id, "qty": qty,
                      "idempotency_key": command.idempotency_key, "state": result.state,
                      "expires_at": result.expires_at.isoformat(), "replayed": True}
                     for sku, qty in result.lines)
    if isinstance(result, Reservation) and result.replayed and isinstance(
            command, commands.ConfirmReservation | commands.ReleaseReservation):
        # Confirmed, released, or expired (a release of an expired one answers it so): each
        # line's end, as its first answer published it.
        ended = _ENDED.get(result.state)
        if ended is None:
            return ()
        return tuple({"event": ended, "namespace": result.namespace, "sku": sku,
                      "reservation_id": result.id, "qty": qty, "state": result.state,
                      "replayed": True}
                     for sku, qty in result.lines)
    return ()


# The event each line's end published, by the state the reservation ended in.
_ENDED = {"confirmed": "ReservationConfirmed", "released": "ReservationReleased",
          "expired": "ReservationExpired"}


def _failure(raw: bytes | str, command: commands.Command, exc: Exception) -> Verdict:
    """A command that could not be applied, classified once: an outage (a dependency away,
    however deep in the handler it was met, as a rebuild's lock is) is retried for as long as it
    lasts; any other Redis error (WRONGTYPE, say) may pass; anything else is a bug, logged."""
    outage = is_outage(exc)
    if isinstance(exc, errors.Unavailable):
        logger.warning("could not apply %r: %s", command, exc.message)
        return Verdict(UNAVAILABLE, f"unavailable: {exc.message}",
                       rejection(raw, "unavailable", exc.message), outage=True)
    if outage or isinstance(exc, redis.RedisError):
        logger.warning("could not apply %r: %s: %s", command, type(exc).__name__, exc)
        return Verdict(UNAVAILABLE, f"{type(exc).__name__}: {exc}",
                       rejection(raw, "unavailable", "a dependency is unavailable; resend "
                                  "it with the same key"), outage=outage)
    logger.exception("failed applying %r", command)
    return Verdict(FAILED, f"error: {type(exc).__name__}: {exc}",
                   rejection(raw, "unavailable", "the command could not be applied"))


def stream_action(verdict: Verdict, deliveries: int, max_deliveries: int) -> str:
    """What to do with a stream entry after its ``deliveries``-th attempt: "ack" (final),
    "retry" (leave it pending) or "dead_letter"."""
    if verdict.final:
        return "ack"
    if verdict.outage:
        return "retry"
    return "dead_letter" if deliveries >= max_deliveries else "retry"
