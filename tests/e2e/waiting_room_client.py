"""A client of the waiting room as API.md describes it, for the contract tests: a namespace's
sales, queue, tickets and gated sales over real HTTP, and the scripts' test clock (ADR 0031)."""

from __future__ import annotations

import datetime
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any, TypeVar

import redis
import requests

from allocation.adapters.redis_keys import KeySpace
from allocation.config import Config
from tests.helpers import key_spaces
from tests.helpers.processes import Process

T = TypeVar("T")
TIMEOUT = 10  # seconds: every call here has a deadline
LAG = 1.2  # seconds: a poll may lag the truth by one (API.md), and a little for the poll itself
TICKET_FIELDS = {"ticket", "state", "position", "pass", "pass_expires_at"}
SALE_FIELDS = {"namespace", "sale", "skus", "state", "opens_at", "admit_factor",
               "pass_ttl_seconds", "max_admitted", "waiting", "admitted", "used", "expired",
               "available"}
NO_TOKEN = {"Authorization": None}  # the e2e session adds its admin token unless told


def given(**fields: Any) -> dict[str, Any]:
    """The fields that have a value: a body or headers without the optional ones left out."""
    return {k: v for k, v in fields.items() if v is not None}


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat()


def moment(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def until(read: Callable[[], T], holds: Callable[[T], bool], seconds: float, what: str) -> T:
    """Read until what is read holds, failing at the deadline with the last reading."""
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if holds(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}: {value!r}")
        time.sleep(0.05)


def steady(read: Callable[[], T], holds: Callable[[T], bool], what: str,
           seconds: float = 10) -> T:
    """Read until what is read has held for longer than a poll may lag the truth (API.md: one
    second; each server process refreshes its own figures), failing at the deadline."""
    deadline, since = time.monotonic() + seconds, None
    while True:
        value = read()
        now = time.monotonic()
        if not holds(value):
            since = None
        elif since is None:
            since = now
        elif now - since > LAG:
            return value
        if now > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what} to hold "
                                 f"{LAG}s: {value!r}")
        time.sleep(0.05)


def observe(read: Callable[[], T], seconds: float) -> Iterator[T]:
    """Readings for ``seconds``: to show that something does not happen within the contract's
    lag (a poll may lag the truth by one second), not to wait for something."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        yield read()
        time.sleep(0.05)


class Shop:
    """One namespace of one server, as a client sees it (the session's admin token unless a
    token is given)."""

    def __init__(self, base: str, namespace: str, token: str | None = None) -> None:
        self.base, self.namespace = base, namespace
        self.root = f"{base}/v1/{namespace}"
        self.session = requests.Session()
        self.auth: dict[str, str | None] = (
            {} if token is None else {"Authorization": f"Bearer {token}"})

    def as_token(self, token: str | None) -> Shop:
        """The same namespace with another token (None: no Authorization header at all)."""
        other = Shop(self.base, self.namespace)
        other.auth = dict(NO_TOKEN) if token is None else {"Authorization": f"Bearer {token}"}
        return other

    def _send(self, method: str, path: str, headers: dict[str, Any] | None = None,
              **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.root}{path}", timeout=TIMEOUT,
                                    headers={**self.auth, **(headers or {})}, **kwargs)

    def open_sale(self, sale: str, stock: dict[str, int], **terms: Any) -> dict[str, Any]:
        """Items of these totals and a sale gating them, created (201)."""
        for sku, total in stock.items():
            self.item(sku, total)
        made = self.put_sale(sale, {"skus": list(stock), **terms})
        assert made.status_code == 201, made.text
        return dict(made.json())

    def sold_nothing(self, sku: str, total: int) -> bool:
        f = self.figures(sku)
        return (f["consumed"], f["held"], f["available"]) == (0, 0, total)

    # items
    def item(self, sku: str, total: int, limit_per_buyer: int | None = None) -> dict[str, Any]:
        r = self._send("PUT", f"/items/{sku}",
                       json=given(total=total, limit_per_buyer=limit_per_buyer))
        assert r.status_code == 201, r.text
        return dict(r.json())

    def figures(self, sku: str) -> dict[str, Any]:
        r = self._send("GET", f"/items/{sku}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def _movement(self, path: str, body: dict[str, Any], sale_pass: str | None,
                  key: str | None = None) -> requests.Response:
        headers = given(**{"Idempotency-Key": key or uuid.uuid4().hex, "Sale-Pass": sale_pass})
        return self._send("POST", path, headers=headers, json=body)

    def decrement(self, sku: str, qty: int = 1, buyer: str | None = None,
                  sale_pass: str | None = None, key: str | None = None) -> requests.Response:
        return self._movement(f"/items/{sku}/decrements", given(qty=qty, buyer=buyer),
                              sale_pass, key)

    def refund(self, sku: str, qty: int = 1, buyer: str | None = None) -> requests.Response:
        return self._movement(f"/items/{sku}/refunds", given(qty=qty, buyer=buyer), None)

    def reserve(self, lines: list[dict[str, Any]], buyer: str | None = None,
                sale_pass: str | None = None, key: str | None = None) -> requests.Response:
        return self._movement("/reservations", given(lines=lines, buyer=buyer), sale_pass,
                              key)

    def reservation(self, rid: str, action: str) -> requests.Response:
        return self._send("POST", f"/reservations/{rid}/{action}")

    # sales
    def put_sale(self, sale: str, body: Any) -> requests.Response:
        return self._send("PUT", f"/sales/{sale}", json=body)

    def sale(self, sale: str) -> requests.Response:
        return self._send("GET", f"/sales/{sale}")

    def figures_of(self, sale: str) -> dict[str, Any]:
        r = self.sale(sale)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def close(self, sale: str) -> requests.Response:
        return self._send("POST", f"/sales/{sale}/close")

    def join(self, sale: str, buyer: str, body: Any = None) -> requests.Response:
        return self._send("POST", f"/sales/{sale}/queue",
                          json={"buyer": buyer} if body is None else body)

    def ticket_of(self, sale: str, buyer: str) -> str:
        r = self.join(sale, buyer)
        assert r.status_code in (200, 201), r.text
        return str(r.json()["ticket"])

    # a ticket's poll and stream: no token, the ticket is the credential
    def poll(self, sale: str, ticket: str) -> requests.Response:
        return requests.get(f"{self.root}/sales/{sale}/queue/{ticket}", timeout=TIMEOUT,
                            headers=NO_TOKEN)

    def read(self, sale: str, ticket: str) -> dict[str, Any]:
        r = self.poll(sale, ticket)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def states(self, sale: str, tickets: list[str]) -> list[str]:
        return [self.read(sale, t)["state"] for t in tickets]

    def reads(self, sale: str, ticket: str, state: str, seconds: float = 3) -> None:
        """The ticket's poll reads ``state`` within the deadline (a poll may lag a second)."""
        until(lambda: self.read(sale, ticket)["state"], lambda s: s == state, seconds,
              f"the ticket to read {state}")

    def serving_order(self, sale: str, tickets: list[str], admitted: int) -> list[int] | None:
        """Indexes into ``tickets``, admitted first, then by position; None unless exactly
        ``admitted`` are and the positions run 0, 1, 2, ..."""
        read = [self.read(sale, t) for t in tickets]
        head = [n for n, t in enumerate(read) if t["state"] == "admitted"]
        waiting = sorted((t["position"], n) for n, t in enumerate(read)
                         if t["state"] == "waiting")
        if len(head) != admitted or [p for p, _ in waiting] != list(range(len(waiting))):
            return None
        return head + [n for _, n in waiting]

    def admitted_pass(self, sale: str, ticket: str, seconds: float = 10) -> str:
        """The pass a ticket's poll answers once it is admitted."""
        shown = until(lambda: self.read(sale, ticket), lambda t: t["state"] == "admitted",
                      seconds, "the ticket to be admitted")
        return str(shown["pass"])

    def stream(self, sale: str, ticket: str) -> closing[TicketEvents]:
        return closing(TicketEvents(f"{self.root}/sales/{sale}/queue/{ticket}/stream"))


class TicketEvents:
    """A ticket's server-sent events, read as a browser's EventSource reads them: a stream the
    server ends is opened again (with the last event's id), so a server may send one event per
    connection or many."""

    def __init__(self, url: str) -> None:
        self.url, self.last_id = url, ""
        self.response = self._connect()
        self.status = self.response.status_code

    def _connect(self) -> requests.Response:
        headers = {**NO_TOKEN, "Accept": "text/event-stream"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        response = requests.get(self.url, stream=True, timeout=TIMEOUT, headers=headers)
        # a byte at a time: an event is read as soon as it has come
        self._lines = response.iter_lines(chunk_size=1, decode_unicode=True)
        return response

    def next(self) -> dict[str, Any]:
        """The next event's data (comments skipped); each read's deadline is the request's."""
        assert self.status == 200, self.status
        data: list[str] = []
        while True:
            for line in self._lines:
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line.startswith("id:"):
                    self.last_id = line[3:].strip()
                elif not line and data:
                    return dict(json.loads("\n".join(data)))
            self.response.close()
            self.response = self._connect()
            assert self.response.status_code == 200, self.response.text

    def close(self) -> None:
        self.response.close()


def refused(response: requests.Response, status: int, error: str) -> None:
    assert (response.status_code, response.json().get("error")) == (status, error), (
        response.text)


def forged(token: str) -> list[str]:
    """Spellings of a ticket or pass that its signer never made: one character changed near
    the start, in the middle and near the end."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spellings = []
    for at in (1, len(token) // 2, len(token) - 3):
        swapped = alphabet[(alphabet.find(token[at]) + 7) % len(alphabet)]
        spellings.append(token[:at] + swapped + token[at + 1:])
    return spellings


def own_key_space(config: Config, redis_url: str) -> Iterator[Config]:
    """The run's services under a key prefix (and channels) of their own, whose clock a test may
    move without touching the run's other servers; its keys removed at the end."""
    yield from key_spaces.own_key_space(config, redis_url, f"{config.redis_key_prefix}-wr")


class ScriptClock:
    """The clock the scripts read (lib.lua's now_ms) in every partition of a key space: moved
    on at once, as ADR 0031's tests do; closing restarts it (Redis's own time again)."""

    def __init__(self, redis_url: str, config: Config) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=TIMEOUT)
        self.keys = KeySpace(config.redis_key_prefix, config.partitions)

    def move(self, seconds: float) -> None:
        stopped = self.client.get(self.keys.clock(0))
        if stopped is None:
            now_s, now_us = self.client.time()
            base = now_s * 1000 + now_us // 1000
        else:
            base = int(stopped)
        with self.client.pipeline(transaction=False) as pipe:
            for partition in range(self.keys.partitions):
                pipe.set(self.keys.clock(partition), base + int(seconds * 1000), ex=3600)
            pipe.execute()

    def close(self) -> None:
        self.client.delete(*(self.keys.clock(p) for p in range(self.keys.partitions)))
        self.client.close()


class EventsHeard:
    """The deployment's events channel, heard from the moment this is made."""

    def __init__(self, redis_url: str, channel: str) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=TIMEOUT)
        self.listener = self.client.pubsub(ignore_subscribe_messages=True)
        self.listener.subscribe(channel)
        self.heard: list[dict[str, Any]] = []

    def publish(self, channel: str, **message: Any) -> None:
        self.client.publish(channel, json.dumps(message))

    def event(self, name: str, mentioning: str, seconds: float = 10) -> dict[str, Any]:
        """The first event of this name whose message mentions ``mentioning`` (a namespace)."""
        def found() -> dict[str, Any] | None:
            message = self.listener.get_message(timeout=0.1)
            if message is not None:
                self.heard.append(json.loads(message["data"]))
            return next((e for e in self.heard
                         if e.get("event") == name and mentioning in json.dumps(e)), None)

        event = until(found, lambda e: e is not None, seconds, f"a {name} event")
        assert event is not None
        return event

    def close(self) -> None:
        self.listener.close()
        self.client.close()


@contextmanager
def running(process: Process) -> Iterator[Process]:
    process.start()
    try:
        yield process
    finally:
        process.stop()
