"""The WSGI app served through granian's RSGI interface, so that waiting on a client never takes
a request thread.

Under plain WSGI a request thread reads the body itself: a client that sends its headers and
then a body slowly (or never) holds that thread, and a few dozen such clients hold them all.
Here access is decided first (API.md: before the body is read); then the event loop reads each
body whole, within ``body_timeout`` seconds and up to ``max_body`` bytes, and only then hands
the complete request to the WSGI app on a thread of a fixed pool. A body that does not come in
time is answered 408; one that stops short of its Content-Length reaches the app short, and
the app refuses it (it is never applied).
"""

from __future__ import annotations

import asyncio
import functools
import io
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from allocation.domain import errors
from allocation.entrypoints import (
    metrics,
    replies,
    route_table,
    sale_replies,
    sale_requests,
    stock_stream,
    ticket_stream,
    worker_start,
)
from allocation.entrypoints.routes import readiness_reply
from allocation.service_layer import sales

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment
    from granian._granian import RSGIHTTPProtocol as HTTPProtocol
    from granian.rsgi import Scope

    from allocation.bootstrap import Application
    from allocation.entrypoints.tokens import TokenCache
    from allocation.service_layer.durability import Pending

Headers = list[tuple[str, str]]
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
_HEALTH = frozenset({"/healthz", "/readyz"})
_ALIVE = replies.Reply(200, {"status": "ok"})


class RsgiBridge:
    def __init__(self, wsgi_app: WSGIApplication, threads: int, body_timeout: float,
                 max_body: int, application: Application | None = None,
                 guard: route_table.AccessGuard | None = None,
                 tokens: TokenCache | None = None) -> None:
        self.wsgi_app = wsgi_app
        self.guard = guard  # asked before a body is read (API.md, Access)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="request")
        self.body_timeout = body_timeout
        self.max_body = max_body
        self.application = application
        self.tokens = tokens  # streams end when their token is revoked
        self.hub: stock_stream.Hub | None = None  # made with the first stream client
        self.startup = worker_start.Startup()

    async def __rsgi__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        if scope.proto != "http":
            return  # no websockets here
        # (With a query string, the guard below refuses it: the health routes define none.)
        if scope.method == "GET" and scope.path in _HEALTH and self.application is not None and (
                not scope.query_string):
            started = time.perf_counter()
            reply = await self._health(scope.path, self.application)
            metrics.count_request("GET", scope.path, reply.status, time.perf_counter() - started)
            return _reply(protocol, reply)
        headers = scope.headers.items()
        length = _content_length(headers)
        # A body is announced. Every answer below is given before it is read whole, and granian
        # then closes the connection, not always saying so: the answer says so, or the client
        # sends its next request down a connection that is gone.
        announced = bool(length) or (length is None and scope.method not in _NO_BODY)
        unread = set(scope.headers.keys()) - {name for name, _ in headers}
        # granian leaves out a header whose value is not visible ASCII. An Authorization header
        # left out carries no token anyone was given: the guard answers it 401 (API.md).
        unreadable_token = "authorization" in unread
        unread.discard("authorization")
        if unread:
            # Any other: an Idempotency-Key of that kind would vanish, and an adjustment be
            # applied without its key. Refuse.
            field = sorted(unread)[0]
            return _reply(protocol, replies.error(
                400, "invalid_field", f"header {field}: must be printable ASCII",
                field=field), close=announced)
        environ = _environ(scope, headers)
        if unreadable_token:
            environ[route_table.UNREADABLE_TOKEN] = True
        loop = asyncio.get_running_loop()
        if self.guard is not None:
            refusal = await self.guard.refusal_soon(environ)
            if refusal is not None:
                return _reply(protocol, refusal, close=announced)
            environ[route_table.CHECKED] = True
        if length is not None and length > self.max_body:
            return _reply(protocol, replies.error(413, "payload_too_large",
                                                  "the body is over 64 KiB"), close=announced)
        found = route_table.TABLE.match(scope.method, environ["PATH_INFO"])
        if found is not None and found[0].loop and not announced and (
                self.application is not None):
            started = time.perf_counter()
            at_once = _AT_ONCE[found[0].name](self.application, *found[1])
            if at_once is not None:  # else the app answers it, on a request thread
                metrics.count_request(scope.method, found[0].path, at_once.status,
                                      time.perf_counter() - started)
                return _reply(protocol, at_once, as_flask=True)
        body = b""
        if announced:
            try:
                async with asyncio.timeout(self.body_timeout):
                    body = await self._body(protocol, length)
            except TimeoutError:
                return _reply(protocol, replies.error(
                    408, "request_timeout", "the body did not arrive in time"), close=announced)
            except _TooLarge:
                return _reply(protocol, replies.error(413, "payload_too_large",
                                                      "the body is over 64 KiB"), close=announced)
        environ["wsgi.input"] = io.BytesIO(body)
        environ[route_table.MATCHED] = found
        key = _stream_key(found)
        hub = self._hub(loop) if key is not None else None
        if hub is None:
            status, response_headers, data = await self._answer(loop, environ)
            return protocol.response_bytes(status, response_headers, data)
        assert key is not None
        grant = environ.get(route_table.GRANT)
        stream = hub.open(key, grant.id if grant is not None else None)
        if isinstance(stream, replies.Reply):
            return _reply(protocol, stream)
        stream.last_id = environ.get("HTTP_LAST_EVENT_ID")
        try:
            status, response_headers, data = await loop.run_in_executor(self.pool, self._call,
                                                                        environ)
            if status != 200:
                return protocol.response_bytes(status, response_headers, data)
            # Authorized and answered its first event by the app: the rest of the stream is
            # served here, on the loop, taking no request thread. An event stream is never
            # followed by another request, and its end must reach the client as a close.
            streamed = [(n, v) for n, v in response_headers if n.lower() != "content-length"]
            transport = protocol.response_stream(status, [*streamed, ("connection", "close")])
            disconnected = asyncio.ensure_future(protocol.client_disconnect())
            try:
                await stock_stream.serve(hub, stream, data, transport.send_bytes, disconnected)
            finally:
                disconnected.cancel()  # ended by the server (revoked): nothing to wait for
        finally:
            hub.close(stream)

    async def _answer(self, loop: asyncio.AbstractEventLoop, environ: WSGIEnvironment
                      ) -> tuple[int, Headers, bytes]:
        """The app's answer. In sync durability a movement's wait for the ledger is awaited
        here, on the loop, after the app has run: it holds no request thread."""
        app = self.application
        if app is None or app.durability.mode != "sync":
            return await loop.run_in_executor(self.pool, self._call, environ)

        def call() -> tuple[tuple[int, Headers, bytes], list[Pending]]:
            assert app is not None
            with app.durability.deferred() as pending:
                return self._call(environ), pending

        answered, pending = await loop.run_in_executor(self.pool, call)
        if pending and answered[0] < 300:
            try:
                await app.durability.settled(
                    pending, lambda blocking: loop.run_in_executor(self.pool, blocking))
            except errors.Unavailable as exc:
                # Not logged here: a log write that blocks (a full pipe) must not stop the loop.
                reply = replies.unavailable(exc.message, exc.retry_after)
                return reply.status, [("content-type", "application/json"),
                                      *reply.headers], replies.encode(reply)
        return answered

    async def _health(self, path: str, app: Application) -> replies.Reply:
        """Liveness and readiness from the loop, needing no request thread: a pool that sales
        (or a database that does not answer) keep busy must not fail an orchestrator's probe."""
        if path == "/healthz":
            return _ALIVE
        parts = await app.health.readiness_async(app.config.ledger_lag_threshold_seconds)
        return readiness_reply(parts, self.startup.pending())

    def _hub(self, loop: asyncio.AbstractEventLoop) -> stock_stream.Hub | None:
        app = self.application
        if self.hub is None and app is not None and app.redis is not None:
            self.hub = ticket_stream.StreamHub(
                app.redis, app.counter, app.config.events_channel, loop,
                per_token=app.config.streams_per_token, per_process=stock_stream.process_cap(),
                revoked=self.tokens.revoked if self.tokens is not None else None,
                tickets=functools.partial(_ticket_event, app),
                genuine=functools.partial(_genuine_ticket, app))
            self.hub.start()
        return self.hub

    async def _body(self, protocol: HTTPProtocol, length: int | None) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            if length is not None:  # within max_body: read in one go
                return await protocol()
            async for chunk in protocol:
                size += len(chunk)
                if size > self.max_body:
                    raise _TooLarge
                chunks.append(chunk)
        except (RuntimeError, OSError):
            pass  # the client went: what came is all there is (the app refuses it short)
        return b"".join(chunks)

    def _call(self, environ: WSGIEnvironment) -> tuple[int, Headers, bytes]:
        started: list[Any] = []
        written: list[bytes] = []

        def start_response(status: str, headers: Headers, exc_info: Any = None) -> Any:
            started[:] = [status, headers]
            return written.append

        result = self.wsgi_app(environ, start_response)
        try:
            written.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, response_headers = started
        return int(status.split(" ", 1)[0]), list(response_headers), b"".join(written)


def _ticket_event(app: Application, namespace: str, sale: str, ticket: str) -> bytes:
    return sale_replies.ticket_event(sales.poll_ticket(app.bus.services, namespace, sale,
                                                      ticket))


def _genuine_ticket(app: Application, namespace: str, sale: str, ticket: str) -> bool:
    """Signed for the sale (no I/O); without a key the app answers it (503)."""
    try:
        return app.bus.services.signing.read_ticket(namespace, sale, ticket) is not None
    except errors.Unavailable:
        return True


class _TooLarge(Exception):
    pass


def _stream_key(found: tuple[route_table.Route, tuple[str, ...]] | None
                ) -> tuple[str, str] | None:
    """The hub's key of a matched stream request: an item's (GET /v1/{ns}/items/{sku}/stream)
    or a ticket's (GET /v1/{ns}/sales/{sale}/queue/{ticket}/stream), else None."""
    if found is None or not found[0].stream:
        return None
    params = found[1]
    return ticket_stream.ticket_key(*params) if len(params) == 3 else (params[0], params[1])


# The table's ``loop`` routes: each one's answer from what the process holds, or None.
_AT_ONCE: dict[str, Callable[..., replies.Reply | None]] = {
    "poll_ticket": sale_requests.poll_at_once}
if {name for name, route in route_table.BY_NAME.items() if route.loop} != set(_AT_ONCE):
    raise ValueError("the bridge answers on its loop the table's loop routes, and no other")


def _content_length(headers: Headers) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            return int(value) if value.isascii() and value.isdecimal() else None
    return None


def _environ(scope: Scope, headers: Headers) -> WSGIEnvironment:
    """As PEP 3333 has it; a header sent twice is joined with a comma, as WSGI servers do."""
    host, _, port = scope.server.rpartition(":")
    client, _, client_port = scope.client.rpartition(":")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.method, "SCRIPT_NAME": "",
        # granian hands the path decoded once (as UTF-8): PEP 3333 wants those bytes as
        # latin-1, and no second decoding (``te%2565`` is not ``tee``). The query string it
        # hands as sent (not percent-decoded), its bytes decoded as UTF-8: as latin-1 too, or
        # Werkzeug reads ``é`` as the byte E9 and fails on it (a 500), and a character past
        # latin-1 fails before any route is reached.
        "PATH_INFO": scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
        "QUERY_STRING": scope.query_string.encode("utf-8", "surrogateescape").decode("latin-1"),
        "SERVER_NAME": host, "SERVER_PORT": port,
        "SERVER_PROTOCOL": f"HTTP/{scope.http_version}", "REMOTE_ADDR": client,
        "REMOTE_PORT": client_port, "wsgi.version": (1, 0), "wsgi.url_scheme": scope.scheme,
        "wsgi.input": io.BytesIO(), "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    for name, value in headers:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = f"HTTP_{key}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _reply(protocol: HTTPProtocol, reply: replies.Reply, close: bool = False,
           as_flask: bool = False) -> None:
    """``as_flask``: with the headers Flask's answer has (``replies.send_wsgi``), for a route
    the app answers too."""
    data = replies.encode(reply)
    if as_flask:
        protocol.response_bytes(reply.status, replies.flask_headers(reply, data), data)
        return
    protocol.response_bytes(reply.status, [("content-type", "application/json"),
                                           *reply.headers,
                                           *([("connection", "close")] if close else [])], data)
