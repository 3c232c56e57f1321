"""The HTTP API's routes (API.md): each decodes its request, hands a command or a query to the
application, and answers. Movements are decoded and answered by ``movement_requests``, which the
fast lane shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from flask import Response, abort, jsonify, request
from pydantic import BaseModel
from werkzeug.exceptions import ClientDisconnected

from allocation import views
from allocation.domain import commands, errors
from allocation.entrypoints import (
    metrics,
    openapi,
    replies,
    route_table,
    sale_replies,
    schemas,
    stock_stream,
    token_holds,
    worker_start,
)
from allocation.entrypoints.http_errors import to_response
from allocation.entrypoints.movement_requests import (
    KINDS,
    MovementRequest,
    answer_item,
    answer_movement,
    idempotency_key,
    json_object,
    no_body,
    validate,
)
from allocation.service_layer import reservations
from allocation.service_layer.results import Reservation

if TYPE_CHECKING:
    from allocation.bootstrap import Application

M = TypeVar("M", bound=BaseModel)


class Routes:
    def __init__(self, app: Application) -> None:
        self.app = app
        self.startup = worker_start.Startup()
        self.token_holds = token_holds.TokenHolds(app.config.max_open_reservations_per_token)

    def init_item(self, namespace: str, sku: str) -> Response:
        path = _path(namespace, sku)
        body = _body(schemas.InitBody)
        outcome = self.app.bus.handle(commands.InitInventory(path.namespace, path.sku,
                                                             body.total, body.limit_per_buyer))
        status = 201 if outcome.created else 200
        return to_response(replies.item(path.namespace, path.sku, outcome.figures, status))

    def set_limit(self, namespace: str, sku: str) -> Response:
        path = _path(namespace, sku)
        limit = _body(schemas.LimitBody).limit_per_buyer
        figures = self.app.bus.handle(commands.SetLimit(path.namespace, path.sku, limit))
        return to_response(replies.item(path.namespace, path.sku, figures))

    def reserve(self, namespace: str) -> Response:
        ns = _path(namespace, "x").namespace
        key = idempotency_key(request.headers.get("Idempotency-Key"), required=True)
        assert key is not None
        body = _body(schemas.ReserveBody)
        command = commands.Reserve(ns, tuple((line.sku, line.qty) for line in body.lines), key,
                                   body.ttl_seconds, body.buyer, request.headers.get("Sale-Pass"))
        grant = request.environ.get(route_table.GRANT)
        token = grant.id if grant is not None and self.token_holds.cap > 0 else None
        place = None if token is None else self.token_holds.claim(token)
        if token is not None and place is None and self.app.counter.reservation_lines(
                ns, self.app.counter.reservation_id(ns, key)) is None:
            # Not a repeat of a create (those answer as they first did): a new hold, refused.
            refusal = errors.TooManyOpenReservations(
                f"the token holds {self.token_holds.cap} open reservations, as many as "
                "allowed: confirm or release one first", limit=self.token_holds.cap)
            metrics.count_answer(command, refusal)
            raise refusal
        made: Reservation | None = None
        try:
            made = self.app.bus.handle(command)
        except errors.DomainError as exc:
            metrics.count_answer(command, exc)
            if exc.replayed:
                reply = replies.domain_error(exc)
                return to_response(replies.Reply(reply.status, reply.body,
                                                  (("Idempotent-Replayed", "true"),)))
            raise
        finally:
            if token is not None and place is not None:
                if made is None or made.replayed:
                    self.token_holds.settle(token, place, None)
                else:
                    self.token_holds.settle(token, place, made.id, made.expires_ms)
        return to_response(replies.reservation(made, 201))

    def get_reservation(self, namespace: str, reservation_id: str) -> Response:
        path = _reservation_path(namespace, reservation_id)
        return to_response(replies.reservation(reservations.reservation(
            self.app.counter, self.app.uow_factory(), path.namespace, path.reservation_id)))

    def end_reservation(self, namespace: str, reservation_id: str) -> Response:
        path = _reservation_path(namespace, reservation_id)
        step = request.path.rsplit("/", 1)[-1]
        command: commands.Command
        if step == "extend":
            ttl = _body(schemas.ExtendBody).ttl_seconds
            command = commands.ExtendReservation(path.namespace, path.reservation_id, ttl)
        elif step == "confirm":
            no_request_body()
            command = commands.ConfirmReservation(path.namespace, path.reservation_id)
        else:
            no_request_body()
            command = commands.ReleaseReservation(path.namespace, path.reservation_id)
        try:
            ended: Reservation = self.app.bus.handle(command)
        except errors.DomainError as exc:
            metrics.count_answer(command, exc)
            raise
        metrics.count_answer(command, ended)
        if ended.state != "held":
            self.token_holds.end(ended.id)
        return to_response(replies.reservation(ended))

    def get_item(self, namespace: str, sku: str) -> Response:
        return to_response(answer_item(self.app, namespace, sku))

    def list_items(self, namespace: str) -> Response:
        ns = _path(namespace, "x").namespace
        query = _query(schemas.ListQuery)
        page, after = views.items(self.app, ns, query.after, query.limit)
        return jsonify({"items": [replies.item_body(ns, sku, o) for sku, o in page],
                        "next": after})

    def move(self, namespace: str, sku: str) -> Response:
        kind = KINDS[request.path.rsplit("/", 1)[-1]]
        return to_response(answer_movement(self.app, MovementRequest(
            kind, namespace, sku, request.headers.get("Idempotency-Key"),
            request.content_type or "", request.content_length, raw_body(),
            request.headers.get("Sale-Pass"))))

    def stream(self, namespace: str, sku: str) -> Response:
        """The stream's first event. Served through RSGI (the default) the connection then
        stays open for the item's changes; under plain WSGI it ends here, and a client's
        EventSource comes back with ``Last-Event-ID``."""
        path = _path(namespace, sku)
        data = stock_stream.first_event(self.app, path.namespace, path.sku,
                                        request.headers.get("Last-Event-ID"))
        return Response(data, content_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def ledger(self, namespace: str, sku: str) -> Response:
        path = _path(namespace, sku)
        query = _query(schemas.LedgerQuery)
        entries = views.ledger(self.app, path.namespace, path.sku, query.after_seq, query.limit)
        return jsonify({"entries": [replies.ledger_entry(e) for e in entries]})

    def refresh_item(self, namespace: str, sku: str) -> Response:
        path = _path(namespace, sku)
        no_request_body()
        figures = self.app.bus.handle(commands.Refresh(path.namespace, path.sku))
        return to_response(replies.item(path.namespace, path.sku, figures))

    def refresh_namespace(self, namespace: str) -> Response:
        ns = _path(namespace, "x").namespace
        no_request_body()
        return jsonify({"items": self.app.bus.handle(commands.RefreshAll(ns)).refreshed})

    def healthz(self) -> Response:
        return jsonify({"status": "ok"})

    def readyz(self) -> Response:
        """Under RSGI the bridge answers this on its event loop (``readiness_reply``)."""
        parts = self.app.health.readiness(self.app.config.ledger_lag_threshold_seconds)
        return to_response(readiness_reply(parts, self.startup.pending()))

    def metrics(self) -> Response:
        health = self.app.health
        body, content_type = metrics.exposition(health.backlog(), health.drift(),
                                                health.redis_memory(), health.hold_tally(),
                                                sale_replies.sale_gauges(self.app))
        return Response(body, content_type=content_type)

    def stats(self, namespace: str) -> Response:
        ns = _path(namespace, "x").namespace
        health = self.app.health
        return jsonify({**metrics.namespace_figures(ns, health.hold_tally(), health.drift()),
                        "sales": sale_replies.sale_stats(self.app, ns)})

    def openapi_json(self) -> Response:
        return jsonify(openapi.document())

    def docs(self) -> Response:
        return Response(openapi.DOCS_PAGE, content_type="text/html",
                        headers=openapi.DOCS_HEADERS)

    def docs_asset(self, name: str) -> Response:
        found = openapi.docs_asset(name)
        if found is None:
            abort(404)
        data, media_type = found
        response = Response(data, content_type=media_type, headers=openapi.DOCS_HEADERS)
        response.cache_control.max_age = 86400
        return response


def readiness_reply(parts: dict[str, str], pending_workers: str | None) -> replies.Reply:
    """/readyz's answer: 503 with Retry-After naming the parts that fail; the ledger is named
    only when it lags, the workers only while some are loading, and neither fails it."""
    body = {"database": parts["database"], "redis": parts["redis"]}
    if pending_workers is not None:
        body["workers"] = pending_workers
    failing = any(state != "ok" for state in body.values())
    if "ledger" in parts:
        body["ledger"] = parts["ledger"]
    if failing:
        return replies.Reply(503, body, (("Retry-After", "1"),))
    return replies.Reply(200, body)


def _path(namespace: str, sku: str) -> schemas.ItemPath:
    return validate(schemas.ItemPath, {"namespace": namespace, "sku": sku})


def _reservation_path(namespace: str, reservation_id: str) -> schemas.ReservationPath:
    return validate(schemas.ReservationPath, {"namespace": namespace,
                                              "reservation_id": reservation_id})


def _query(model: type[M]) -> M:
    # Two values of one name: a cache reading the first would disagree with one reading the last.
    for name, values in request.args.lists():
        if len(values) > 1:
            raise replies.BadRequest("invalid_field", f"{name}: given more than once",
                                     field=name)
    return validate(model, request.args.to_dict())


def _body(model: type[M]) -> M:
    return validate(model, json_object(request.content_type or "", request.content_length,
                                       raw_body()))


def no_request_body() -> None:
    no_body(request.content_type or "", request.content_length, raw_body())


def raw_body() -> bytes:
    """The request's body, as far as it came (a short one is refused by what reads it)."""
    try:
        return request.get_data(cache=True)
    except ClientDisconnected:
        return b""  # shorter than its Content-Length: json_object refuses it as such

