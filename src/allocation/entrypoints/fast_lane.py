"""The routes a flash sale hammers, served without Flask's per-request machinery.

A sale is decrements, refunds and stock reads of one item, and a waiting room's joins,
thousands a second. Flask's request context, routing, hooks and response object cost about as
much CPU as the rest of a decrement, so this WSGI middleware in front of Flask serves those
routes itself (the table's ``fast`` ones). It keeps only the WSGI parsing: decoding, handling
and answering are ``movement_requests``' (``sale_requests``' for a join), which Flask's routes
call too (tests/unit/test_fast_lane.py compares the two answers byte for byte). Anything else
goes on to Flask.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Flask

from allocation.entrypoints import metrics, route_table
from allocation.entrypoints.movement_requests import (
    KINDS,
    MovementRequest,
    answer_item,
    answer_movement,
)
from allocation.entrypoints.replies import send_wsgi
from allocation.entrypoints.route_table import MATCHED
from allocation.entrypoints.sale_requests import answer_join
from allocation.entrypoints.schemas import NAME

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from allocation.bootstrap import Application

ITEM = route_table.ITEM
DECREMENTS = route_table.BY_NAME["decrement"].path
REFUNDS = route_table.BY_NAME["refund"].path
# The table's fast routes this lane answers, by name: an item's GET, the POSTs of its movements
# (the route's last segment names the movement) and a queue's join.
_MOVEMENTS = {"decrement": "decrements", "refund": "refunds"}
_SERVED = frozenset({"get_item", "join_queue", *_MOVEMENTS})


def _check_table() -> None:
    fast = {route.name for route in route_table.ROUTES if route.fast}
    if fast != _SERVED or any(route_table.BY_NAME[name].path != f"{ITEM}/{segment}"
                              or segment not in KINDS for name, segment in _MOVEMENTS.items()):
        raise ValueError(f"the fast lane serves {sorted(_SERVED)}, the table marks {sorted(fast)}")


_check_table()


class FastLane:
    def __init__(self, flask_wsgi: WSGIApplication, app: Application, max_body: int) -> None:
        self._flask = flask_wsgi
        self._app = app
        self._max_body = max_body

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        found = environ[MATCHED] if MATCHED in environ else route_table.TABLE.match(
            method, environ.get("PATH_INFO", ""))
        # A path whose names pass the schema's pattern is one Flask routes the same way.
        if found is None or not found[0].fast or not all(NAME.fullmatch(p) for p in found[1]):
            return self._flask(environ, start_response)
        started = time.perf_counter()
        route, (namespace, name) = found  # each fast route's path: a namespace and a name
        if route.method == "GET":
            reply = answer_item(self._app, namespace, name)
        else:
            length = environ.get("CONTENT_LENGTH", "")
            if not (length.isascii() and length.isdecimal()) or int(length) > self._max_body:
                return self._flask(environ, start_response)  # Flask's chunked body, 413
            size = int(length)
            if route.name == "join_queue":
                reply = answer_join(self._app, namespace, name, environ.get("CONTENT_TYPE", ""),
                                    size, lambda: _read(environ, size))
            else:
                reply = answer_movement(self._app, MovementRequest(
                    KINDS[_MOVEMENTS[route.name]], namespace, name,
                    environ.get("HTTP_IDEMPOTENCY_KEY"),
                    environ.get("CONTENT_TYPE", ""), size, _read(environ, size),
                    environ.get("HTTP_SALE_PASS")))
        metrics.count_request(method, route.path, reply.status, time.perf_counter() - started)
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
