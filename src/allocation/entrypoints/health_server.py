"""The consumer's health: each loop's state (connected and reading, or not), the supervised run
that keeps a loop going through any failure, and the server that answers ``/healthz``,
``/readyz`` and ``/metrics`` on the consumer's health port."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import redis
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from allocation.entrypoints import replies, route_table
from allocation.runtime.supervised import Backoff, LoopHealth, supervise

logger = logging.getLogger(__name__)

RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS = 0.1, 5.0
HEALTH_REQUEST_SECONDS = 10.0  # a health port's request is read within this

CONSUMER_UP = Gauge("allocation_consumer_up",
                    "1 while the consumer loop is connected to Redis and reading", ["channel"],
                    multiprocess_mode="livemax")
CONSUMER_ERRORS = Counter("allocation_consumer_errors_total",
                          "Errors that interrupted a consumer loop (it reconnects)", ["channel"])


class LoopState(LoopHealth):
    """Whether one consumer loop is connected and reading: for /readyz and the metrics."""

    def __init__(self, channel: str) -> None:
        super().__init__(channel, CONSUMER_UP.labels(channel))
        self.channel = channel


class SessionEnded(Exception):
    """A session returned while nobody asked it to stop."""


def run_reconnecting(stopping: threading.Event, session: Callable[[], None],
                     state: LoopState) -> None:
    """Run ``session`` until ``stopping``. Whatever ends it otherwise (any Redis error, any
    other exception) is logged and counted, and it starts again after a backoff: doubling from
    0.1 s to 5 s, from the start again once a session got up."""
    errors_total = CONSUMER_ERRORS.labels(state.channel)

    def attempt() -> float:
        session()
        if not stopping.is_set():
            raise SessionEnded
        return 0.0

    def failed(exc: BaseException, delay: float, _: int) -> None:
        if isinstance(exc, SessionEnded):
            logger.warning("the %s consumer's session ended; starting it again", state.channel)
        elif isinstance(exc, redis.RedisError):
            logger.warning("the %s consumer lost redis (%s: %s); retrying", state.channel,
                           type(exc).__name__, exc)
        else:
            logger.error("the %s consumer failed; retrying", state.channel, exc_info=exc)
        errors_total.inc()
        logger.info("the %s consumer retries in %.1fs", state.channel, delay)

    supervise(attempt, stopping, Backoff(RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS),
              failed=failed, health=state)


class HealthServer:
    """``GET /healthz``, ``/readyz`` (both loops connected) and ``/metrics``, from a thread.
    ``/metrics`` (every tenant's figures) is behind the API's own ``Access`` check: a ``*``
    token when ``AUTH=required`` (API.md, Access)."""

    def __init__(self, host: str, port: int, loops: Sequence[LoopHealth],
                 guard: route_table.Access | None = None) -> None:
        self.loops = loops
        handler = _health_handler(self.readiness, guard or route_table.Access(None))
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="health",
                                       daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def readiness(self) -> tuple[bool, dict[str, str]]:
        states = {loop.name: "ok" if loop.ready.is_set() else "unavailable"
                  for loop in self.loops}
        return all(s == "ok" for s in states.values()), states

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _health_handler(readiness: Callable[[], tuple[bool, dict[str, str]]],
                    guard: route_table.Access) -> type[BaseHTTPRequestHandler]:
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
