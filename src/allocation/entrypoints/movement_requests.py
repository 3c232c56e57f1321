"""A request to move stock, from its parts to its answer, with no web framework in sight.

Both HTTP front ends (the fast lane's bare WSGI and Flask's routes) hand over the path's names,
the Idempotency-Key header and the body's bytes, and send back the ``Reply``: one decoder, one
command, one answer, so the two cannot answer the same request differently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from allocation import views
from allocation.domain import commands, errors
from allocation.entrypoints import metrics, replies, schemas
from allocation.entrypoints.replies import BadRequest, Reply

if TYPE_CHECKING:
    from allocation.bootstrap import Application

M = TypeVar("M", bound=BaseModel)
Kind = Literal["adjust", "decrement", "refund"]
MAX_BODY = 64 * 1024
# The path's last segment, and the movement it asks for.
KINDS: dict[str, Kind] = {"adjustments": "adjust", "decrements": "decrement",
                          "refunds": "refund"}


@dataclass(frozen=True)
class MovementRequest:
    kind: Kind
    namespace: str
    sku: str
    idempotency_key: str | None  # the header as received (a server joins repeats with commas)
    content_type: str
    content_length: int | None  # as the client declared it; None when it did not
    body: bytes
    sale_pass: str | None = None  # the Sale-Pass header: a gated sku's sale needs one


def answer_movement(app: Application, request: MovementRequest) -> Reply:
    try:
        command = decode(request)
    except Exception as exc:  # noqa: BLE001 - every failure has its answer (replies)
        return replies.for_exception(exc)
    try:
        outcome = app.bus.handle(command)
    except Exception as exc:  # noqa: BLE001 - every failure has its answer (replies)
        if isinstance(exc, errors.DomainError):  # a refusal the handler raised (not_found)
            metrics.count_answer(command, exc)
        return replies.for_exception(exc)
    metrics.count_movement(request.kind, outcome.status)
    metrics.count_answer(command, outcome)
    return replies.movement(request.namespace, request.sku, outcome)


def answer_item(app: Application, namespace: str, sku: str) -> Reply:
    return _answer(lambda: replies.item(*_path(namespace, sku),
                                        views.item(app, *_path(namespace, sku))))


def decode(request: MovementRequest) -> commands.Command:
    """The command a request asks for, or ``BadRequest`` naming what is wrong with it."""
    namespace, sku = _path(request.namespace, request.sku)
    key = idempotency_key(request.idempotency_key, required=request.kind != "adjust")
    data = json_object(request.content_type, request.content_length, request.body)
    if request.kind == "adjust":
        return commands.AdjustTotal(namespace, sku, validate(schemas.AdjustBody, data).delta,
                                    key)
    body = validate(schemas.QtyBody, data)
    assert key is not None
    if request.kind == "decrement":
        return commands.Decrement(namespace, sku, body.qty, key, body.buyer, request.sale_pass)
    return commands.Refund(namespace, sku, body.qty, key, body.buyer)


def _path(namespace: str, sku: str) -> tuple[str, str]:
    path = validate(schemas.ItemPath, {"namespace": namespace, "sku": sku})
    return path.namespace, path.sku


def _answer(call: Callable[[], Reply]) -> Reply:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - every failure has its answer (replies)
        return replies.for_exception(exc)


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest.from_validation(exc) from None


def idempotency_key(value: str | None, required: bool) -> str | None:
    if value is None:
        if required:
            raise BadRequest("idempotency_key_required", "this request needs an "
                             "Idempotency-Key header", field="Idempotency-Key")
        return None
    if not value:  # spaces inside a key are kept; those around it are not part of it (HTTP)
        raise BadRequest("invalid_field", "Idempotency-Key is empty (the spaces around a "
                         "header's value are not part of it)", field="Idempotency-Key")
    if schemas.KEY.fullmatch(value) is None:
        raise BadRequest("invalid_field", "Idempotency-Key must be one header of 1 to 128 "
                         "printable ASCII characters other than the comma",
                         field="Idempotency-Key")
    return value


def is_json(content_type: str) -> bool:
    mimetype = content_type.partition(";")[0].strip().lower()
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json"))


def json_object(content_type: str, content_length: int | None, body: bytes) -> dict[str, Any]:
    """The body as a JSON object: all of it there, no key twice."""
    if not is_json(content_type):
        raise BadRequest("unsupported_media_type", "the body must be JSON "
                         "(Content-Type: application/json)", status=415)
    if content_length is not None and len(body) < content_length:
        raise BadRequest("incomplete_body", "the body is shorter than its Content-Length")
    if len(body) > MAX_BODY:
        raise BadRequest("payload_too_large", "the body is over 64 KiB", status=413)
    try:
        data = schemas.strict_json(body)
    except schemas.RepeatedKey as exc:
        raise BadRequest("malformed_json", f"the body repeats the key {exc.key!r}",
                         field=exc.key) from None
    except schemas.NotUtf8:
        raise BadRequest("malformed_json", "the body is not UTF-8 (JSON is sent as UTF-8)"
                         ) from None
    except ValueError:
        raise BadRequest("malformed_json", "the body is not valid JSON") from None
    except RecursionError:
        raise BadRequest("malformed_json", "the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("invalid_field", "body: must be a JSON object", field="body")
    return data


def no_body(content_type: str, content_length: int | None, body: bytes) -> None:
    """An operation that takes no body: none, an empty one (whatever its type) or ``{}``.
    Anything else is refused as any body is (415 not JSON, 400 malformed, a repeated key, a
    field named), before the operation is done."""
    if body or content_length:
        validate(schemas.NoBody, json_object(content_type, content_length, body))
