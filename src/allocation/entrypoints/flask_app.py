"""The HTTP API (API.md). Routes parse and validate, build a command, and hand it to the bus."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
from flask import Flask, Response, g, jsonify, request
from pydantic import BaseModel, ValidationError
from sqlalchemy import text

from allocation import views
from allocation.adapters.redis_keys import KeySpace
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from allocation.domain.model import LedgerEntry
from allocation.domain.outcome import Outcome
from allocation.entrypoints import (
    cpu_pinning,
    fast_lane,
    http_errors,
    ledger_worker,
    metrics,
    openapi,
    replies,
    schemas,
    worker_start,
)
from allocation.entrypoints.fast_lane import DECREMENTS, ITEM, REFUNDS
from allocation.entrypoints.replies import BadRequest
from allocation.service_layer.messagebus import MessageBus

M = TypeVar("M", bound=BaseModel)
MAX_BODY = 64 * 1024


def create_server_app() -> Flask:
    """The factory `allocation serve` hands granian: called once in each worker process, before
    granian starts the threads that serve requests (they inherit the worker's core)."""
    cpu_pinning.pin_from_env()
    app = create_app()
    worker_start.announce()
    return app


def create_app(config: Config | None = None, bus: MessageBus | None = None,
               fast: bool = True) -> Flask:
    """The API; ``fast=False`` leaves every route to Flask (to compare the two: tests, bench)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.url_map.merge_slashes = False  # an empty SKU is a 404, not a redirect
    app.json.sort_keys = False  # type: ignore[attr-defined]
    bus = bus or bootstrap(config)
    app.extensions["bus"] = bus
    settings: Config = bus.dependencies["config"]
    if settings.embedded and settings.durability == "async" and bus.dependencies.get("engine"):
        # The in-process outbox lives here, so its worker does too.
        app.extensions["ledger_worker"] = ledger_worker.from_bus(bus)
        app.extensions["ledger_worker"].start_thread()
    http_errors.register(app)
    _observe(app)
    if fast:
        fast_lane.install(app, bus)

    def item_path(namespace: str, sku: str) -> schemas.ItemPath:
        return _validate(schemas.ItemPath, {"namespace": namespace, "sku": sku})

    @app.put(ITEM)
    def init_item(namespace: str, sku: str) -> Response:
        path = item_path(namespace, sku)
        body = _body(schemas.InitBody)
        outcome = bus.handle(commands.InitInventory(path.namespace, path.sku, body.total))
        return _item(path, outcome, 201 if outcome.created else 200)

    @app.get(ITEM)
    def get_item(namespace: str, sku: str) -> Response:
        path = item_path(namespace, sku)
        return _item(path, views.item(bus, path.namespace, path.sku))

    @app.get("/v1/<namespace>/items")
    def list_items(namespace: str) -> Response:
        ns = _validate(schemas.ItemPath, {"namespace": namespace, "sku": "x"}).namespace
        query = _validate(schemas.ListQuery, request.args.to_dict())
        page, after = views.items(bus, ns, query.after, query.limit)
        return jsonify({"items": [replies.item_body(ns, sku, o) for sku, o in page],
                        "next": after})

    @app.post("/v1/<namespace>/items/<sku>/adjustments")
    def adjust(namespace: str, sku: str) -> Response:
        path = item_path(namespace, sku)
        key = _idempotency_key(required=False)
        body = _body(schemas.AdjustBody)
        outcome = bus.handle(commands.AdjustTotal(path.namespace, path.sku, body.delta, key))
        return _movement(path, "adjust", outcome)

    def keyed_movement(namespace: str, sku: str, kind: str,
                       command: type[commands.Decrement] | type[commands.Refund]) -> Response:
        path = item_path(namespace, sku)
        key = _idempotency_key(required=True)
        body = _body(schemas.QtyBody)
        assert key is not None
        outcome = bus.handle(command(path.namespace, path.sku, body.qty, key))
        return _movement(path, kind, outcome)

    @app.post(DECREMENTS)
    def decrement(namespace: str, sku: str) -> Response:
        return keyed_movement(namespace, sku, "decrement", commands.Decrement)

    @app.post(REFUNDS)
    def refund(namespace: str, sku: str) -> Response:
        return keyed_movement(namespace, sku, "refund", commands.Refund)

    @app.get("/v1/<namespace>/items/<sku>/ledger")
    def ledger(namespace: str, sku: str) -> Response:
        path = item_path(namespace, sku)
        query = _validate(schemas.LedgerQuery, request.args.to_dict())
        entries = views.ledger(bus, path.namespace, path.sku, query.after_seq, query.limit)
        return jsonify({"entries": [_entry_body(e) for e in entries]})

    @app.post("/v1/<namespace>/items/<sku>/refresh")
    def refresh_item(namespace: str, sku: str) -> Response:
        path = item_path(namespace, sku)
        return _item(path, bus.handle(commands.Refresh(path.namespace, path.sku)))

    @app.post("/v1/<namespace>/refresh")
    def refresh_namespace(namespace: str) -> Response:
        ns = _validate(schemas.ItemPath, {"namespace": namespace, "sku": "x"}).namespace
        return jsonify({"items": bus.handle(commands.RefreshAll(ns)).refreshed})

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    startup = worker_start.Startup()

    @app.get("/readyz")
    def readyz() -> Response:
        parts = {"database": _check(lambda: _ping_database(bus)),
                 "redis": _check(bus.dependencies["counter"].ping)}
        if (pending := startup.pending()) is not None:
            parts["workers"] = pending  # named only while some are loading, as "ledger" below
        failing = any(state != "ok" for state in parts.values())
        if settings.durability == "async" and parts["redis"] == "ok":
            # Named only when it lags: the healthy body stays as API.md gives it.
            ledger = _ledger_state(bus, settings.ledger_lag_threshold_seconds)
            if ledger != "ok":
                parts["ledger"] = ledger
        response = jsonify(parts)
        if failing:
            response.status_code = 503
            response.headers["Retry-After"] = "1"
        return response

    @app.get("/metrics")
    def metrics_text() -> Response:
        backlog = drift = None
        with contextlib.suppress(errors.Unavailable):
            backlog = bus.dependencies["outbox"].backlog()
        if bus.dependencies.get("redis") is not None:
            with contextlib.suppress(redis.RedisError):
                stored = bus.dependencies["redis"].hgetall(
                    KeySpace(settings.redis_key_prefix).drift())
                drift = {k.decode(): int(v) for k, v in stored.items()}
        body, content_type = metrics.exposition(backlog, drift)
        return Response(body, content_type=content_type)

    @app.get("/openapi.json")
    def openapi_json() -> Response:
        return jsonify(openapi.document())

    @app.get("/docs")
    def docs() -> Response:
        return Response(openapi.DOCS_PAGE, content_type="text/html")

    return app


def _validate(model: type[M], data: Any, fields: dict[str, str] | None = None) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest.from_validation(exc, fields) from None


def _body(model: type[M]) -> M:
    if not request.is_json:
        raise BadRequest("unsupported_media_type", "the body must be JSON "
                         "(Content-Type: application/json)", status=415)
    try:
        data = json.loads(request.get_data(cache=True))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("malformed_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed_json", "the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("invalid_field", "the body must be a JSON object")
    return _validate(model, data)


def _idempotency_key(required: bool) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        if required:
            raise BadRequest("idempotency_key_required", "this request needs an "
                             "Idempotency-Key header", field="Idempotency-Key")
        return None
    if not schemas.is_idempotency_key(key):
        raise BadRequest("invalid_field", "Idempotency-Key must be 1 to 128 printable ASCII "
                         "characters", field="Idempotency-Key")
    return key


def _item(path: schemas.ItemPath, outcome: Outcome, status: int = 200) -> Response:
    return http_errors.to_response(replies.item(path.namespace, path.sku, outcome, status))


def _movement(path: schemas.ItemPath, kind: str, outcome: Outcome) -> Response:
    metrics.count_movement(kind, outcome.status)
    return http_errors.to_response(replies.movement(path.namespace, path.sku, outcome))


def _entry_body(entry: LedgerEntry) -> dict[str, Any]:
    return {"seq": entry.seq, "kind": entry.kind, "qty": entry.qty,
            "total_after": entry.total_after, "available_after": entry.available_after,
            "idempotency_key": entry.idempotency_key,
            "created_at": _utc(entry.created_at).isoformat()}


def _utc(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ping_database(bus: MessageBus) -> None:
    engine = bus.dependencies.get("engine")
    if engine is not None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))


def _ledger_state(bus: MessageBus, threshold_seconds: float) -> str:
    """"ok", or "degraded: ..." when the write-behind ledger lags (the service still serves)."""
    try:
        entries, age = bus.dependencies["outbox"].backlog()
    except errors.Unavailable as exc:
        return f"unavailable: {exc.message}"
    if entries and age > threshold_seconds:
        return f"degraded: {entries} movements not yet in the ledger, oldest {age:.0f}s"
    return "ok"


def _check(probe: Callable[[], None]) -> str:
    try:
        probe()
    except errors.Unavailable as exc:
        return f"unavailable: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure by name
        return f"unavailable: {type(exc).__name__}"
    return "ok"


def _observe(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _record(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.count_request(request.method, route, response.status_code,
                              time.perf_counter() - g.get("started", 0.0))
        return response
