"""The routes a flash sale hammers, served without Flask's per-request machinery.

A sale is decrements, refunds and stock reads of one item, thousands a second. Flask's request
context, routing, hooks and response object cost about as much CPU as the rest of a decrement,
so this WSGI middleware in front of Flask serves those routes itself. It keeps only the WSGI
parsing: decoding, handling and answering are ``movement_requests``', which Flask's routes call
too (tests/unit/test_fast_lane.py compares the two answers byte for byte). Anything else goes
on to Flask.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Flask

from allocation.entrypoints import metrics, route_table, schemas
from allocation.entrypoints.movement_requests import (
    KINDS,
    MovementRequest,
    answer_item,
    answer_movement,
)
from allocation.entrypoints.replies import send_wsgi

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from allocation.bootstrap import Application

ITEM = route_table.ITEM
DECREMENTS = route_table.BY_NAME["decrement"].path
REFUNDS = route_table.BY_NAME["refund"].path


def _lane() -> tuple[dict[str, str], re.Pattern[str]]:
    """The table's fast routes, as one pattern: an item's GET and POSTs to its movements. A
    path whose names pass the schema's pattern is one Flask routes the same way."""
    fast = [route for route in route_table.ROUTES if route.fast]
    moves = {r.path.removeprefix(f"{ITEM}/"): r.path for r in fast if r.method == "POST"}
    if [r.path for r in fast if r.method != "POST"] != [ITEM] or len(fast) != 1 + len(moves) or (
            any(f"{ITEM}/{move}" != path or move not in KINDS for move, path in moves.items())):
        raise ValueError("the fast lane serves an item's GET and its movements' POSTs alone")
    movement = "|".join(re.escape(move) for move in moves)
    return moves, re.compile(rf"{route_table.pattern(ITEM, schemas.NAME.pattern)}"
                             rf"(?:/({movement}))?")


_ROUTES, _PATH = _lane()


class FastLane:
    def __init__(self, flask_wsgi: WSGIApplication, app: Application, max_body: int) -> None:
        self._flask = flask_wsgi
        self._app = app
        self._max_body = max_body

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        match = _PATH.fullmatch(environ.get("PATH_INFO", ""))
        if match is None:
            return self._flask(environ, start_response)
        started = time.perf_counter()
        namespace, sku, movement = match.groups()
        method = environ.get("REQUEST_METHOD", "")
        if movement is None:
            if method != "GET":
                return self._flask(environ, start_response)
            route, reply = ITEM, answer_item(self._app, namespace, sku)
        else:
            length = environ.get("CONTENT_LENGTH", "")
            if method != "POST" or not (length.isascii() and length.isdecimal()) or (
                    int(length) > self._max_body):
                return self._flask(environ, start_response)  # Flask's 405, chunked, 413
            route = _ROUTES[movement]
            reply = answer_movement(self._app, MovementRequest(
                KINDS[movement], namespace, sku, environ.get("HTTP_IDEMPOTENCY_KEY"),
                environ.get("CONTENT_TYPE", ""), int(length), _read(environ, int(length)),
                environ.get("HTTP_SALE_PASS")))
        metrics.count_request(method, route, reply.status, time.perf_counter() - started)
        return send_wsgi(reply, start_response)


def _read(environ: WSGIEnvironment, length: int) -> bytes:
    """The body, or what arrived of it before the client went (the decoder refuses it)."""
    try:
        data: bytes = environ["wsgi.input"].read(length)
    except (OSError, ValueError):
        return b""
    return data


def install(flask: Flask, app: Application) -> None:
    """Put the lane in front of a Flask app's WSGI callable (Flask's middleware pattern)."""
    flask.wsgi_app = FastLane(  # type: ignore[method-assign]
        flask.wsgi_app, app, flask.config["MAX_CONTENT_LENGTH"])
