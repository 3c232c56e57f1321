"""Which of the package's files one decrement crosses, from the HTTP bytes to the Lua reply.

Serves one ``POST .../decrements`` through the app ``allocation serve`` hands granian (the RSGI
bridge, access, the fast lane, the bus, the counter) over the Redis at ``REDIS_URL``, with the
Python profiler on, and prints each file of ``src/allocation`` in the order a call first entered
it (docs/architecture.md). No database: the item is loaded into the counter directly, and a
unit of work asked for fails the run.

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python scripts/decrement_path.py
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import secrets
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import allocation
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain.outcome import Figures
from allocation.entrypoints import route_table
from allocation.entrypoints.flask_app import create_app
from allocation.entrypoints.movement_requests import MAX_BODY
from allocation.entrypoints.rsgi_bridge import RsgiBridge
from allocation.service_layer.unit_of_work import AbstractUnitOfWork

PACKAGE = pathlib.Path(allocation.__file__).parent


class Headers:
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def items(self) -> list[tuple[str, str]]:
        return self.pairs

    def keys(self) -> list[str]:
        return [name for name, _ in self.pairs]


class Scope:
    proto, method, http_version, scheme = "http", "POST", "1.1", "http"
    server, client, query_string = "127.0.0.1:8000", "127.0.0.1:40000", ""

    def __init__(self, path: str, headers: Headers) -> None:
        self.path, self.headers = path, headers


class Protocol:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.answer: tuple[int, list[tuple[str, str]], bytes] | None = None

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.answer = (status, headers, data)


def no_units() -> AbstractUnitOfWork:
    raise AssertionError("a decrement in async mode asks the record nothing")


class Crossed:
    """The package's files entered, in order, by any thread."""

    def __init__(self) -> None:
        self.files: dict[str, None] = {}
        self.on = False

    def __call__(self, frame: types.FrameType, event: str, arg: Any) -> None:
        if self.on and event == "call":
            path = pathlib.Path(frame.f_code.co_filename)
            if path.is_relative_to(PACKAGE):
                self.files.setdefault(str(path.relative_to(PACKAGE.parent)))

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)


def main() -> int:
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    prefix = f"path-{secrets.token_hex(4)}"
    app = bootstrap(Config(redis_url=redis_url, redis_key_prefix=prefix), uow_factory=no_units)
    flask = create_app(application=app)
    guard = flask.wsgi_app if isinstance(flask.wsgi_app, route_table.AccessGuard) else None
    bridge = RsgiBridge(flask, threads=1, body_timeout=5, max_body=MAX_BODY, application=app,
                        guard=guard)
    app.counter.load("ns", "sku", Figures(100, 0, seq=0, gen="g1"))
    body = b'{"qty": 1}'

    def request(key: str) -> Protocol:
        protocol = Protocol(body)
        headers = Headers([("content-type", "application/json"),
                           ("content-length", str(len(body))), ("idempotency-key", key)])
        scope: Any = Scope("/v1/ns/items/sku/decrements", headers)  # granian's, in part
        asyncio.run(bridge.__rsgi__(scope, protocol))  # type: ignore[arg-type]
        return protocol

    crossed = Crossed()
    try:
        threading.setprofile(crossed)  # before the bridge's request thread starts
        sys.setprofile(crossed)
        try:
            request("warm")  # lazy imports and caches, as on a server that has served a while
            crossed.on = True
            answered = request("traced")
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
    finally:
        assert app.redis is not None
        for key in app.redis.scan_iter(f"*{prefix}*"):
            app.redis.delete(key)
    assert answered.answer is not None and answered.answer[0] == 200, answered.answer
    files = list(crossed)
    for number, name in enumerate(files, 1):
        print(f"{number:2} {name}")
    print(f"{len(files)} files of src/allocation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
