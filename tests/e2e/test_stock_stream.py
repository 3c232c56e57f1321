"""The stock stream over real HTTP from `allocation serve` (RSGI): the first event at once, then
the item's changes at most once a second, selling out at once, Last-Event-ID resume, stream
clients that take no request thread, and a revoked token's streams closed."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from sqlalchemy.engine import Engine

from allocation.adapters.token_store import TokenStore
from allocation.config import Config
from tests.helpers.cli_runs import run_cli
from tests.helpers.processes import service_env, wait_until


class Events:
    """A stream client reading events off a raw socket (no thread of the server's per event)."""

    def __init__(self, base: str, path: str, token: str, last_event_id: str | None = None
                 ) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                           f"Accept: text/event-stream\r\n{extra}\r\n").encode())
        self.buffer = b""
        head = self._until(b"\r\n\r\n", 10)
        self.status = int(head.split(b" ", 2)[1])
        self.head = head.decode("latin-1").lower()

    def _until(self, mark: bytes, seconds: float) -> bytes:
        deadline = time.monotonic() + seconds
        while mark not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"nothing ending {mark!r} within {seconds} s")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the stream")
            self.buffer += chunk
        found, _, self.buffer = self.buffer.partition(mark)
        return found

    def next(self, seconds: float = 5) -> dict[str, Any]:
        """The next event (keep-alive comments skipped): its id and data."""
        while True:
            block = self._until(b"\n\n", seconds).decode()
            lines = [line for line in block.split("\n") if line and not line.startswith(":")]
            # chunked transfer: drop the chunk-size lines around the event's text
            fields = dict(line.split(": ", 1) for line in lines if ": " in line)
            if "data" in fields:
                return {"event": fields.get("event"), "id": fields.get("id"),
                        "data": json.loads(fields["data"])}

    def close(self) -> None:
        self.sock.close()


@contextmanager
def stream(api: str, namespace: str, sku: str, token: str,
           last_event_id: str | None = None) -> Iterator[Events]:
    events = Events(api, f"/v1/{namespace}/items/{sku}/stream", token, last_event_id)
    try:
        yield events
    finally:
        events.close()


def sell(api: str, namespace: str, sku: str, key: str, qty: int = 1) -> None:
    r = requests.post(f"{api}/v1/{namespace}/items/{sku}/decrements", json={"qty": qty},
                      headers={"Idempotency-Key": key}, timeout=10)
    assert r.status_code == 200, r.text


def test_the_first_event_then_each_change_and_selling_out_at_once(
        api: str, admin_token: str, namespace: str) -> None:
    assert requests.put(f"{api}/v1/{namespace}/items/badge", json={"total": 5},
                        timeout=10).status_code == 201
    with stream(api, namespace, "badge", admin_token) as events:
        assert events.status == 200 and "text/event-stream" in events.head
        first = events.next()
        assert (first["event"], first["data"]["available"], first["data"]["held"]) == (
            "stock", 5, 0)
        sell(api, namespace, "badge", "s1")
        moved = events.next()
        at = time.monotonic()
        assert moved["data"]["available"] == 4 and int(moved["id"]) > int(first["id"])
        sell(api, namespace, "badge", "s2")
        sell(api, namespace, "badge", "s3")
        later = events.next()  # both, as a rule (the second after "moved" had not passed)
        assert time.monotonic() - at >= 0.9  # at most one event a second
        if later["data"]["available"] == 3:  # a slow machine: s3 came after that second
            later = events.next()
        assert later["data"]["available"] == 2
        t0 = time.monotonic()
        sell(api, namespace, "badge", "s4", qty=2)  # sold out: at once, inside the second
        gone = events.next(seconds=3)
        assert gone["data"]["available"] == 0 and time.monotonic() - t0 < 1.0


def test_last_event_id_resumes_with_what_changed(api: str, admin_token: str,
                                                 namespace: str) -> None:
    requests.put(f"{api}/v1/{namespace}/items/r", json={"total": 5}, timeout=10)
    with stream(api, namespace, "r", admin_token) as events:
        seen = events.next()["id"]
    sell(api, namespace, "r", "k")
    with stream(api, namespace, "r", admin_token, last_event_id=seen) as events:
        assert events.next()["data"]["available"] == 4  # changed since: at once
    with stream(api, namespace, "r", admin_token) as events:
        current = events.next()["id"]
    with stream(api, namespace, "r", admin_token, last_event_id=current) as events:
        sell(api, namespace, "r", "k2")  # nothing at once; this change comes as it happens
        assert events.next()["data"]["available"] == 3


def test_refusals_are_json_and_streams_take_no_request_thread(api: str, admin_token: str,
                                                              namespace: str) -> None:
    requests.put(f"{api}/v1/{namespace}/items/busy", json={"total": 100}, timeout=10)
    unknown = requests.get(f"{api}/v1/{namespace}/items/none/stream", timeout=10)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
    anonymous = requests.get(f"{api}/v1/{namespace}/items/busy/stream", timeout=10,
                             headers={"Authorization": None})
    assert anonymous.status_code == 401
    # More open streams than the server has request threads (8 a worker): sales go on.
    clients = [Events(api, f"/v1/{namespace}/items/busy/stream", admin_token)
               for _ in range(40)]
    try:
        for client in clients:
            client.next()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: sell(api, namespace, "busy", f"b{n}"), range(16)))
        wait_until(lambda: all(c.next()["data"]["available"] <= 99 for c in clients[:3]), 10,
                   "the streams to see the sale")
    finally:
        for client in clients:
            client.close()


def test_revoking_a_token_closes_its_open_streams_within_5_s(
        api: str, admin_token: str, service_config: Config, engine: Engine,
        namespace: str) -> None:
    requests.put(f"{api}/v1/{namespace}/items/rev", json={"total": 5}, timeout=10)
    token_id, token = TokenStore(engine).create(namespace, "read", "e2e revoked stream")
    with stream(api, namespace, "rev", token) as revoked, \
            stream(api, namespace, "rev", admin_token) as kept:
        revoked.next()
        kept.next()
        run_cli(["token", "revoke", token_id], service_env(service_config), check=True)
        at = time.monotonic()
        with pytest.raises(ConnectionError):  # the server closes it; no event comes first
            revoked.next(seconds=5)
        assert time.monotonic() - at < 5
        sell(api, namespace, "rev", "after-revoke")
        assert kept.next()["data"]["available"] == 4  # another token's stream goes on


    def refused() -> bool:  # a new stream of it, within 5 s of the revoke (API.md, Access)
        again = Events(api, f"/v1/{namespace}/items/rev/stream", token)
        again.close()
        return again.status == 401

    wait_until(refused, max(0.1, at + 5 - time.monotonic()), "the revoked token refused")
