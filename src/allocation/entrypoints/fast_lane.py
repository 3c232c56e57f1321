"""The routes a flash sale hammers, served without Flask's per-request machinery.

A sale is decrements, refunds and stock reads of one item, thousands a second. Flask's request
context, routing, hooks and response object cost about as much CPU as the rest of a decrement
together (``make bench``: the same server does 2-3 times the decrements with the lane), so this
WSGI middleware, in front of Flask, serves a well-formed call itself: the same validation models,
the same bus command, the same ``replies`` and the same metrics as the Flask route, so the answer
is the route's answer byte for byte (tests/unit/test_fast_lane.py compares them). Anything else,
including every malformed call, goes on to Flask (with the body the lane read), which answers it.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from flask import Flask
from pydantic import ValidationError
from werkzeug.http import HTTP_STATUS_CODES

from allocation import views
from allocation.domain import commands
from allocation.entrypoints import metrics, replies, schemas
from allocation.service_layer.messagebus import MessageBus

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

ITEM = "/v1/<namespace>/items/<sku>"
DECREMENTS = f"{ITEM}/decrements"
REFUNDS = f"{ITEM}/refunds"
# A path whose names pass the schema's pattern is one Flask routes the same way.
_PATH = re.compile(rf"/v1/({schemas.NAME.pattern})/items/({schemas.NAME.pattern})"
                   r"(/decrements|/refunds)?")
# As Flask's jsonify writes a body outside debug mode (compact, keys in order, ASCII), then a
# newline; one encoder for every answer rather than one built per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_MOVEMENTS: dict[str, tuple[str, str, type[commands.Decrement] | type[commands.Refund]]] = {
    "/decrements": (DECREMENTS, "decrement", commands.Decrement),
    "/refunds": (REFUNDS, "refund", commands.Refund),
}


class FastLane:
    def __init__(self, flask_wsgi: WSGIApplication, bus: MessageBus, max_body: int) -> None:
        self._flask = flask_wsgi
        self._bus = bus
        self._max_body = max_body

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        match = _PATH.fullmatch(environ.get("PATH_INFO", ""))
        if match is None:
            return self._flask(environ, start_response)
        started = time.perf_counter()
        namespace, sku, suffix = match.groups()
        method = environ.get("REQUEST_METHOD")
        if suffix is None:
            if method != "GET":
                return self._flask(environ, start_response)
            route = ITEM
            reply = self._answer(lambda: replies.item(
                namespace, sku, views.item(self._bus, namespace, sku)))
        else:
            route, kind, command = _MOVEMENTS[suffix]
            key = environ.get("HTTP_IDEMPOTENCY_KEY")
            if method != "POST" or key is None or not schemas.is_idempotency_key(key):
                return self._flask(environ, start_response)
            read, body = self._qty_body(environ)
            if body is None:
                if read is not None:  # Flask reads it again
                    environ = {**environ, "wsgi.input": io.BytesIO(read)}
                return self._flask(environ, start_response)
            reply = self._answer(lambda: self._move(
                kind, command(namespace, sku, body.qty, key), namespace, sku))
        metrics.count_request(method, route, reply.status, time.perf_counter() - started)
        return self._send(reply, start_response)

    def _qty_body(self, environ: WSGIEnvironment
                  ) -> tuple[bytes | None, schemas.QtyBody | None]:
        """The bytes read (None if none were) and the body, if it is a valid one."""
        mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        length = environ.get("CONTENT_LENGTH", "")
        if mimetype != "application/json" or not (length.isascii() and length.isdecimal()) or (
                int(length) > self._max_body):
            return None, None
        read: bytes = environ["wsgi.input"].read(int(length))
        try:
            return read, schemas.QtyBody.model_validate(json.loads(read))
        except (ValueError, ValidationError, RecursionError):
            return read, None

    def _move(self, kind: str, command: commands.Decrement | commands.Refund,
              namespace: str, sku: str) -> replies.Reply:
        outcome = self._bus.handle(command)
        metrics.count_movement(kind, outcome.status)
        return replies.movement(namespace, sku, outcome)

    @staticmethod
    def _answer(call: Callable[[], replies.Reply]) -> replies.Reply:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - answered as Flask's error handlers would
            return replies.for_exception(exc)

    def _send(self, reply: replies.Reply, start_response: StartResponse) -> list[bytes]:
        data = f"{_ENCODER.encode(reply.body)}\n".encode()
        start_response(f"{reply.status} {HTTP_STATUS_CODES[reply.status].upper()}",
                       [("Content-Type", "application/json"),
                        ("Content-Length", str(len(data))), *reply.headers])
        return [data]


def install(app: Flask, bus: MessageBus) -> None:
    """Put the lane in front of a Flask app's WSGI callable (Flask's middleware pattern)."""
    app.wsgi_app = FastLane(  # type: ignore[method-assign]
        app.wsgi_app, bus, app.config["MAX_CONTENT_LENGTH"])
