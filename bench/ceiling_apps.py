"""The HTTP ceilings: WSGI apps served by granian exactly as `allocation serve` serves the API
(bench/serving.py), driven by the same wrk load, to show what the server and Redis allow on this
machine before the service's own work.

- ``empty_app``: reads the body, answers a constant JSON. What granian and wrk allow.
- ``evalsha_app``: one EVALSHA of ``CHECK_AND_DECREMENT`` per request on one key, no framework,
  one redis-py client per worker process: a decrement over HTTP with nothing else around it.
  (Not a hard limit: the service shares Redis round trips among concurrent requests, which
  this app does not, so a busy service can pass it.)

Both are factories (granian's ``--factory``, as `allocation serve`), called once in each worker
process. Configured by CEILING_REDIS_URL and CEILING_KEY.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis

from bench.serving import as_served

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# The least a check-and-decrement can be: KEYS[1] holds what is available, ARGV[1] the
# quantity. Returns {1, available after} or {0, available}. redis-benchmark runs it too.
CHECK_AND_DECREMENT = """
local available = tonumber(redis.call('GET', KEYS[1]) or '0')
local qty = tonumber(ARGV[1])
if available >= qty then
  return {1, redis.call('DECRBY', KEYS[1], qty)}
end
return {0, available}
"""
CHECK_AND_DECREMENT_SHA = hashlib.sha1(CHECK_AND_DECREMENT.encode()).hexdigest()

_CONSTANT = b'{"status":"ok","total":1,"consumed":0,"available":1}\n'
_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(_CONSTANT)))]
_HEALTHY = b'{"status":"ok"}\n'


def _body(environ: WSGIEnvironment) -> bytes:
    length = environ.get("CONTENT_LENGTH", "")
    if not length.isdecimal():
        return b""
    data: bytes = environ["wsgi.input"].read(int(length))
    return data


def _json(start_response: StartResponse, status: str, data: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])
    return [data]


def empty_app() -> Any:
    return as_served(_empty)


def evalsha_app() -> Any:
    return as_served(_evalsha)


def _empty() -> WSGIApplication:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        _body(environ)
        start_response("200 OK", _HEADERS)
        return [_CONSTANT]

    return app


def _evalsha() -> WSGIApplication:
    client = redis.Redis.from_url(os.environ["CEILING_REDIS_URL"])  # this worker's own
    key = os.environ["CEILING_KEY"]
    client.script_load(CHECK_AND_DECREMENT)  # type: ignore[no-untyped-call]

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            return _json(start_response, "200 OK", _HEALTHY)
        try:
            qty = int(json.loads(_body(environ))["qty"])
        except (ValueError, KeyError, TypeError):
            return _json(start_response, "400 BAD REQUEST", b'{"error":"bad body"}\n')
        applied, available = client.evalsha(  # type: ignore[no-untyped-call]
            CHECK_AND_DECREMENT_SHA, 1, key, qty)
        if not applied:
            return _json(start_response, "409 CONFLICT", b'{"error":"insufficient_stock"}\n')
        return _json(start_response, "200 OK", b'{"available":%d}\n' % int(available))

    return app
