"""HTTP answers as data: status, JSON body and headers (shapes in API.md). Flask's routes and the
fast lane both build their answers here, so the two cannot answer the same request differently."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any

import redis
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy import exc as sa_exc
from werkzeug.http import HTTP_STATUS_CODES

from allocation.domain import errors
from allocation.domain.model import LedgerEntry
from allocation.domain.outcome import Figures, Outcome
from allocation.service_layer.results import Reservation

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse

logger = logging.getLogger(__name__)

STATUS_OF_CODE = {
    "not_found": 404,
    "already_exists": 409,
    "insufficient_stock": 409,
    "below_consumed": 409,
    "total_exceeds_maximum": 409,
    "refund_exceeds_consumed": 409,
    "invalid_quantity": 400,
    "invalid_field": 400,
    "idempotency_key_reused": 422,
    "limit_exceeded": 409,
    "too_many_open_reservations": 429,
    "buyer_required": 400,
    "reservation_expired": 409,
    "reservation_released": 409,
    "reservation_confirmed": 409,
    "reservation_lifetime_exceeded": 409,
    "sale_closed": 409,
    "sku_gated": 409,
    "pass_required": 403,
    "pass_invalid": 403,
}


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


class BadRequest(Exception):
    """Invalid input: 400 (or ``status``), naming the field when there is one."""

    def __init__(self, code: str, message: str, field: str | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.field, self.status = code, message, field, status

    @classmethod
    def from_validation(cls, exc: ValidationError, fields: dict[str, str] | None = None
                        ) -> BadRequest:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        if field and fields:
            field = fields.get(field, field)
        message = problem(first, "request")
        return cls("invalid_field", f"{field}: {message}" if field else message, field)


def problem(error: ErrorDetails, of: str) -> str:
    """What pydantic found wrong with a field, in the API's words: no class of ours named, no
    pydantic prefix. ``of``: what the field is part of ("request", "command")."""
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return f"is not a field of this {of}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a JSON object"
    if kind == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])  # our own validator's words
    return error["msg"]


def error(status: int, code: str, message: str, **extra: Any) -> Reply:
    return Reply(status, {"error": code, "message": message,
                          **{k: v for k, v in extra.items() if v is not None}})


def figures_body(figures: Figures) -> dict[str, Any]:
    """An item's figures as every answer spells them (the JSON body, the stock stream, the CLI;
    a refused command message takes some of them): the one encoder of ``Figures``."""
    return {"total": figures.total, "consumed": figures.consumed, "held": figures.held,
            "available": figures.available, "limit_per_buyer": figures.limit}


def item_body(namespace: str, sku: str, figures: Figures) -> dict[str, Any]:
    return {"namespace": namespace, "sku": sku, **figures_body(figures)}


def item(namespace: str, sku: str, figures: Figures, status: int = 200) -> Reply:
    return Reply(status, item_body(namespace, sku, figures))


def reservation_body(r: Reservation) -> dict[str, Any]:
    return {"id": r.id, "namespace": r.namespace, "state": r.state,
            "lines": [{"sku": sku, "qty": qty} for sku, qty in r.lines], "buyer": r.buyer,
            "created_at": r.created_at.isoformat(), "expires_at": r.expires_at.isoformat()}


def reservation(r: Reservation, status: int = 200) -> Reply:
    headers = (("Idempotent-Replayed", "true"),) if r.replayed and status == 201 else ()
    return Reply(status, reservation_body(r), headers)


def movement(namespace: str, sku: str, outcome: Outcome) -> Reply:
    """A function of the stored outcome, so a replay is the same answer."""
    reply = item(namespace, sku, outcome.figures) if outcome.ok else domain_error(
        outcome.error())
    if outcome.replayed and outcome.status != "idempotency_key_reused":
        return Reply(reply.status, reply.body, (("Idempotent-Replayed", "true"),))
    return reply


def domain_error(exc: errors.DomainError) -> Reply:
    field = exc.field if isinstance(exc, errors.InvalidInput) else (
        "buyer" if isinstance(exc, errors.BuyerRequired) else None)
    reply = error(STATUS_OF_CODE.get(exc.code, 409), exc.code, exc.message, field=field,
                  **exc.details)
    if exc.retry_after is None:
        return reply
    return Reply(reply.status, reply.body, (("Retry-After", str(exc.retry_after)),))


def unavailable(message: str, retry_after: int = 1) -> Reply:
    reply = error(503, "unavailable", message)
    return Reply(reply.status, reply.body, (("Retry-After", str(retry_after)),))


def _bad_request(exc: Exception) -> Reply:
    assert isinstance(exc, BadRequest)
    return error(exc.status, exc.code, exc.message, field=exc.field)


def _domain(exc: Exception) -> Reply:
    assert isinstance(exc, errors.DomainError)
    return domain_error(exc)


def _unavailable(exc: Exception) -> Reply:
    assert isinstance(exc, errors.Unavailable)
    logger.warning("unavailable: %s", exc.message)
    return unavailable(exc.message, exc.retry_after)


def _dependency_down(exc: Exception) -> Reply:
    # Which driver failed, and how, is for the log: a client learns only to come back.
    logger.warning("dependency unavailable: %s: %s", type(exc).__name__, exc)
    return unavailable("a dependency is unavailable; retry shortly")


def _unexpected(exc: Exception) -> Reply:
    logger.error("unexpected error", exc_info=exc)
    return error(500, "internal_error", "unexpected error; it has been logged")


HANDLERS: dict[type[Exception], Callable[[Exception], Reply]] = {
    BadRequest: _bad_request,
    errors.DomainError: _domain,
    errors.Unavailable: _unavailable,
    redis.RedisError: _dependency_down,
    sa_exc.OperationalError: _dependency_down,
    sa_exc.InterfaceError: _dependency_down,
    sa_exc.TimeoutError: _dependency_down,
    Exception: _unexpected,
}


def for_exception(exc: Exception) -> Reply:
    """The answer to a raised exception: the handler of its nearest class, as Flask picks one."""
    for cls in type(exc).__mro__:
        handler = HANDLERS.get(cls)
        if handler is not None:
            return handler(exc)
    return _unexpected(exc)


# As Flask's jsonify writes a body outside debug mode (compact, keys in order, ASCII), then a
# newline; one encoder for every answer rather than one built per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(reply: Reply) -> bytes:
    return f"{_ENCODER.encode(reply.body)}\n".encode()


def send_wsgi(reply: Reply, start_response: StartResponse) -> list[bytes]:
    """Answer a bare WSGI call with ``reply``, byte for byte as Flask would."""
    data = encode(reply)
    start_response(f"{reply.status} {HTTP_STATUS_CODES[reply.status].upper()}",
                   flask_headers(reply, data))
    return [data]


def flask_headers(reply: Reply, data: bytes) -> list[tuple[str, str]]:
    """The headers Flask sends with ``reply`` encoded as ``data``."""
    return [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
            *reply.headers]


def ledger_entry(entry: LedgerEntry) -> dict[str, Any]:
    """A ledger entry as the API and the command show it, its time in UTC (API.md) whatever
    the database session's zone; SQLite hands times back without one (written in UTC)."""
    at = entry.created_at
    at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    shown = {"seq": entry.seq, "kind": entry.kind, "qty": entry.qty,
             "total_after": entry.total_after, "available_after": entry.available_after,
             "idempotency_key": entry.idempotency_key, "created_at": at.isoformat(),
             "reservation_id": entry.reservation_id, "held_after": entry.held_after}
    if entry.kind == "extend" and entry.expires_at is not None:
        expires = entry.expires_at
        shown["expires_at"] = (expires.astimezone(UTC) if expires.tzinfo
                               else expires.replace(tzinfo=UTC)).isoformat()
    return shown
