"""Access to /v1/: decided from the token, the path and the method, before the body is read."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pytest
from werkzeug.test import Client

from allocation.adapters.token_store import Grant, digest
from allocation.entrypoints import openapi, schemas
from allocation.entrypoints.movement_requests import MAX_BODY
from allocation.entrypoints.route_table import (
    BY_NAME,
    ROUTES,
    TABLE,
    AccessGuard,
    Route,
    canonical,
    openapi_path,
)
from allocation.entrypoints.rsgi_bridge import RsgiBridge
from allocation.entrypoints.tokens import LOOKUPS, TokenCache
from tests.unit.test_bridge_polls import Protocol, Scope

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def tok(name: str) -> str:
    """A token of the minted format, named for the test."""
    return f"alloc_{name:_<43}"


class FakeStore:
    def __init__(self) -> None:
        self.grants: dict[str, Grant] = {}
        self.finds = 0
        self.touched: list[str] = []
        self.down = False
        self.hang: threading.Event | None = None  # set: find waits for it (a partition)

    def add(self, token: str, namespace: str, role: str) -> None:
        self.grants[digest(tok(token))] = Grant(f"id-{token}", namespace, role)

    def active(self) -> dict[str, Grant]:
        if self.down:
            raise ConnectionError("the database is away")
        return dict(self.grants)

    def find(self, token_hash: str) -> Grant | None:
        self.finds += 1
        if self.hang is not None:
            self.hang.wait(10)
        if self.down:
            raise ConnectionError("the database is away")
        return self.grants.get(token_hash)

    def touch(self, ids: Iterable[str]) -> None:
        self.touched += list(ids)


class Behind:
    """The app behind the guard: says whether it was reached and read the body."""

    def __init__(self) -> None:
        self.reached = 0

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        self.reached += 1
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]


@pytest.fixture
def store() -> FakeStore:
    store = FakeStore()
    store.add("admin-all", "*", "admin")
    store.add("sell-a", "a", "sell")
    store.add("read-a", "a", "read")
    return store


def guarded(store: FakeStore, revoked: set[str] | None = None
            ) -> tuple[Client, Behind, TokenCache]:
    behind = Behind()
    cache = TokenCache(store, revocations=None if revoked is None else lambda: revoked)
    cache._reload()  # what the reload thread does first
    return Client(AccessGuard(behind, cache)), behind, cache


def bearer(token: str) -> dict[str, str]:
    """The header for the test token ``token`` (as minted; the rest of the header as given)."""
    name, blank, rest = token.partition(" ")
    return {"Authorization": f"Bearer {tok(name)}{blank}{rest}"}


@pytest.mark.parametrize(("method", "path", "role"), [
    ("GET", "/v1/a/items/x", "read"), ("HEAD", "/v1/a/items", "read"),
    ("GET", "/v1/a/items/x/ledger", "read"), ("GET", "/v1/a/items/x/stream", "read"),
    ("GET", "/v1/a/reservations/r1", "read"),
    ("POST", "/v1/a/items/x/decrements", "sell"), ("POST", "/v1/a/items/x/refunds", "sell"),
    ("POST", "/v1/a/reservations", "sell"), ("POST", "/v1/a/reservations/r1/confirm", "sell"),
    ("PUT", "/v1/a/items/x", "admin"), ("PATCH", "/v1/a/items/x", "admin"),
    ("POST", "/v1/a/items/x/adjustments", "admin"), ("POST", "/v1/a/items/x/refresh", "admin"),
    ("POST", "/v1/a/refresh", "admin"), ("DELETE", "/v1/a/items/x", "admin"),
])
def test_each_route_needs_its_role(method: str, path: str, role: str) -> None:
    assert TABLE.access(method, path) == role


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer"},
                                     {"Authorization": "Basic YTpi"},
                                     bearer("no-such-token"), bearer("admin-all "),
                                     {"Authorization": "Bearer admin-all"}])
def test_no_token_or_an_unknown_one_is_401_and_reaches_nothing(
        store: FakeStore, headers: dict[str, str]) -> None:
    client, behind, _ = guarded(store)
    response = client.post("/v1/a/items/x/decrements", json={"qty": 1}, headers=headers)
    if headers.get("Authorization") == f"Bearer {tok('admin-all')} ":
        assert response.status_code == 200  # surrounding blanks are not part of a token
        return
    assert response.status_code == 401
    assert response.json is not None
    assert response.json == {"error": "unauthorized", "message": response.json["message"]}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert behind.reached == 0


@pytest.mark.parametrize(("token", "method", "path", "status"), [
    ("read-a", "GET", "/v1/a/items/x", 200),
    ("read-a", "POST", "/v1/a/items/x/decrements", 403),
    ("sell-a", "POST", "/v1/a/items/x/decrements", 200),
    ("sell-a", "POST", "/v1/a/items/x/adjustments", 403),
    ("sell-a", "PUT", "/v1/a/items/x", 403),
    ("sell-a", "GET", "/v1/b/items/x", 403),  # another namespace
    ("sell-a", "POST", "/v1/b/items/x/decrements", 403),
    ("admin-all", "POST", "/v1/b/refresh", 200),
    ("admin-all", "PUT", "/v1/zzz/items/x", 200),
])
def test_a_token_may_do_what_its_role_allows_in_its_namespace(
        store: FakeStore, token: str, method: str, path: str, status: int) -> None:
    client, behind, _ = guarded(store)
    response = client.open(path, method=method, json={"qty": 1}, headers=bearer(token))
    assert response.status_code == status
    assert behind.reached == (1 if status == 200 else 0)
    if status == 403:
        assert response.json is not None and response.json["error"] == "forbidden"


def test_paths_outside_v1_but_metrics_need_no_token(store: FakeStore) -> None:
    client, behind, _ = guarded(store)
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200
    assert behind.reached == 4


def test_metrics_needs_a_token_of_every_namespace(store: FakeStore) -> None:
    store.add("read-all", "*", "read")
    client, behind, _ = guarded(store)
    assert client.get("/metrics").status_code == 401
    store.add("admin-a", "a", "admin")
    assert client.get("/metrics", headers=bearer("admin-a")).status_code == 403
    assert behind.reached == 0
    assert client.get("/metrics", headers=bearer("read-all")).status_code == 200
    assert client.get("/v1/a/stats", headers=bearer("read-a")).status_code == 200
    assert client.get("/v1/b/stats", headers=bearer("read-a")).status_code == 403


SPELLINGS = ["//v1/a/items/x", "///v1/a/items/x", "/v1//a/items/x", "/v1/a//items/x",
             "/v1/a/items//x", "/v1/a/items/x/", "/v1/a/./items/x", "/v1/a/items/./x",
             "/v1/b/../a/items/x", "/v1/a/items/x/..", "/./v1/a/items/x", "//metrics",
             "/metrics/", "/v1/a/items/x//ledger", "/v1/a/items/x/.", ""]


@pytest.mark.parametrize("path", SPELLINGS)
@pytest.mark.parametrize("auth", ["required", "off"])
def test_a_path_the_router_would_read_another_way_is_404_for_anyone(
        store: FakeStore, path: str, auth: str) -> None:
    behind = Behind()
    cache = TokenCache(store) if auth == "required" else None
    client = Client(AccessGuard(behind, cache))
    for method in ("GET", "POST", "PUT"):
        response = client.open("/", method=method, json={"qty": 1},
                               headers=bearer("admin-all"),
                               environ_overrides={"PATH_INFO": path})  # as the server has it
        assert response.status_code == 404, (method, path)
        assert response.json is not None and response.json["error"] == "not_found"
    assert behind.reached == 0


def test_canonical_paths_pass() -> None:
    for path in ("/", "/v1/a/items/x", "/v1/a/items/x.y", "/metrics", "/docs/swagger.js"):
        assert canonical(path), path


def test_a_token_not_in_the_minted_format_is_401_with_no_look_up(store: FakeStore) -> None:
    client, behind, _ = guarded(store)
    for token in ("guess", "alloc_short", "alloc_" + "x" * 44, "alloc_" + "x" * 42 + "=",
                  "ALLOC_" + "x" * 43):
        response = client.get("/v1/a/items/x", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
    assert store.finds == 0 and behind.reached == 0


def test_look_ups_are_few_at_once_and_a_request_past_them_is_503_at_once(
        store: FakeStore) -> None:
    client, behind, cache = guarded(store)
    store.hang = threading.Event()  # the database stops answering
    answers: list[tuple[int, float]] = []

    def ask(name: str) -> None:
        started = time.monotonic()
        status = client.get("/v1/a/items/x", headers=bearer(name)).status_code
        answers.append((status, time.monotonic() - started))

    waiting = [threading.Thread(target=ask, args=(f"unseen{n}",)) for n in range(LOOKUPS)]
    for thread in waiting:
        thread.start()
    try:
        while store.finds < LOOKUPS:
            time.sleep(0.01)  # every slot taken
        started = time.monotonic()
        past = client.get("/v1/a/items/x", headers=bearer("one-more"))
        assert past.status_code == 503 and past.headers["Retry-After"] == "1"
        assert time.monotonic() - started < 0.1  # no waiting for a slot
        assert client.get("/v1/a/items/x", headers=bearer("read-a")).status_code == 200
        for thread in waiting:
            thread.join(5)
        # Each waited out its deadline, not the database.
        assert [s for s, _ in answers] == [503] * LOOKUPS
        assert all(seconds < cache.lookup_seconds + 0.3 for _, seconds in answers)
    finally:
        store.hang.set()
    assert store.finds == LOOKUPS and behind.reached == 1


def test_look_ups_are_few_a_second_and_a_reload_brings_new_tokens_anyway(
        store: FakeStore) -> None:
    now = [100.0]
    behind = Behind()
    cache = TokenCache(store, lookups_per_second=5, clock=lambda: now[0])
    cache._reload()
    client = Client(AccessGuard(behind, cache))
    statuses = [client.get("/v1/a/items/x", headers=bearer(f"guess{n}")).status_code
                for n in range(8)]
    assert statuses == [401] * 5 + [503] * 3 and store.finds == 5
    store.add("made-since", "a", "read")
    assert client.get("/v1/a/items/x", headers=bearer("made-since")).status_code == 503
    now[0] += 0.2  # a look-up's worth of time
    assert client.get("/v1/a/items/x", headers=bearer("made-since")).status_code == 200
    store.add("made-later", "a", "read")
    cache._reload()  # a made token needs no look-up after a reload
    assert client.get("/v1/a/items/x", headers=bearer("made-later")).status_code == 200
    assert store.finds == 6


def test_the_event_loop_front_end_awaits_a_look_up_without_a_thread(store: FakeStore) -> None:
    behind = Behind()
    cache = TokenCache(store)
    cache._reload()
    guard = AccessGuard(behind, cache)
    store.add("made-since", "a", "read")
    environ = {"PATH_INFO": "/v1/a/items/x", "REQUEST_METHOD": "GET",
               "HTTP_AUTHORIZATION": bearer("made-since")["Authorization"]}
    assert asyncio.run(guard.refusal_soon(environ)) is None
    environ["HTTP_AUTHORIZATION"] = bearer("nobody")["Authorization"]
    refused = asyncio.run(guard.refusal_soon(environ))
    assert refused is not None and refused.status == 401
    assert store.finds == 2


def test_a_revocation_heard_through_redis_is_refused_with_the_database_away(
        store: FakeStore) -> None:
    revoked: set[str] = set()
    client, _, cache = guarded(store, revoked)
    assert client.get("/v1/a/items/x", headers=bearer("sell-a")).status_code == 200
    store.down = True
    revoked.add("id-sell-a")
    cache._hear_revocations()  # what the revocations thread does every second
    cache._reload()  # fails; the last copy stays, but the revocation holds
    assert client.get("/v1/a/items/x", headers=bearer("sell-a")).status_code == 401
    assert cache.revoked("id-sell-a") and not cache.revoked("id-read-a")
    store.down = False
    cache._reload()  # a copy that still has it (read before the revocation) changes nothing
    assert client.get("/v1/a/items/x", headers=bearer("sell-a")).status_code == 401


def test_a_revoked_token_is_refused_after_the_next_reload(store: FakeStore) -> None:
    client, _, cache = guarded(store)
    assert client.get("/v1/a/items/x", headers=bearer("read-a")).status_code == 200
    del store.grants[digest(tok("read-a"))]
    cache._reload()  # what the reload thread does every RELOAD_SECONDS
    assert client.get("/v1/a/items/x", headers=bearer("read-a")).status_code == 401


def test_a_new_token_works_at_once_and_guessing_costs_one_look_up_per_reload(
        store: FakeStore) -> None:
    client, _, cache = guarded(store)
    assert client.get("/v1/a/items/x", headers=bearer("read-a")).status_code == 200
    store.add("made-since", "a", "read")
    assert client.get("/v1/a/items/x", headers=bearer("made-since")).status_code == 200
    for _ in range(50):
        assert client.get("/v1/a/items/x", headers=bearer("guess")).status_code == 401
    assert store.finds == 2  # "made-since" once, "guess" once
    cache._reload()
    assert store.touched and set(store.touched) <= {"id-read-a", "id-made-since"}


def test_with_the_database_away_known_tokens_keep_working(store: FakeStore) -> None:
    client, _, cache = guarded(store)
    assert client.get("/v1/a/items/x", headers=bearer("sell-a")).status_code == 200
    store.down = True
    cache._reload()  # fails; the last copy stays
    assert client.post("/v1/a/items/x/decrements", json={"qty": 1},
                       headers=bearer("sell-a")).status_code == 200
    refused = client.get("/v1/a/items/x", headers=bearer("unknown-now"))
    assert refused.status_code == 503 and refused.headers["Retry-After"].isdigit()


def test_a_first_check_without_a_database_is_503_not_401(store: FakeStore) -> None:
    store.down = True
    client, behind, _ = guarded(store)
    response = client.get("/v1/a/items/x", headers=bearer("read-a"))
    assert response.status_code == 503 and behind.reached == 0


# --- Query strings: declared per route in the table, checked where access is decided ---

def concrete(path: str) -> str:
    """A request path of a route's template: each parameter a plain name."""
    return re.sub(r"<\w+>", "a", path)


@pytest.mark.parametrize("route", ROUTES, ids=[route.name for route in ROUTES])
@pytest.mark.parametrize("auth", ["required", "off"])
def test_a_query_parameter_a_route_does_not_define_is_400_naming_it_and_reaches_nothing(
        store: FakeStore, route: Route, auth: str) -> None:
    behind = Behind()
    cache = TokenCache(store) if auth == "required" else None
    if cache is not None:
        cache._reload()
    client = Client(AccessGuard(behind, cache))
    path = concrete(route.path)
    for query, field in (("bogus=1", "bogus"), ("x", "x"), ("%C3%A9=1", "\u00e9"),
                         ("\u00c3\u00a9=1", "\u00e9"),  # raw UTF-8 é, as WSGI has it
                         ("\u00e9=1", "\ufffd"),  # the raw byte E9: not UTF-8
                         ("%FF=1", "\ufffd"), ("=5", "query"),
                         (f"{route.query[0]}=1&bogus=2", "bogus")
                         if route.query else ("bogus=", "bogus")):
        response = client.open(path, method=route.method, json={"qty": 1},
                               headers=bearer("admin-all"),
                               environ_overrides={"QUERY_STRING": query})
        answer = response.json
        assert response.status_code == 400 and answer is not None, (query, response.data)
        assert answer == {"error": "invalid_field", "field": field, "message": answer["message"]}
        assert field in answer["message"]
    assert behind.reached == 0
    # Its own parameters (values are its handler's to check), and an empty query, pass.
    for query in ("", "&", *(f"{name}=1" for name in route.query)):
        response = client.open(path, method=route.method, json={"qty": 1},
                               headers=bearer("admin-all"),
                               environ_overrides={"QUERY_STRING": query})
        assert response.status_code == 200, (query, response.data)


@pytest.mark.parametrize("query", ["after=%FF", "after=\u00e9", "limit=1&after=%C3"])
def test_a_defined_query_parameter_whose_value_is_not_utf8_is_400_naming_it(
        store: FakeStore, query: str) -> None:
    client, behind, _ = guarded(store)
    response = client.get("/v1/a/items", headers=bearer("read-a"),
                          environ_overrides={"QUERY_STRING": query})
    assert response.status_code == 400
    assert response.json is not None and response.json["field"] == "after"
    assert behind.reached == 0
    for fine in ("after=%C3%A9", "after=\u00c3\u00a9", "limit=+5"):  # the route's to refuse
        assert client.get("/v1/a/items", headers=bearer("read-a"),
                          environ_overrides={"QUERY_STRING": fine}).status_code == 200
    # Text no WSGI server hands over (not bytes as latin-1) is refused, not failed on.
    refusal = TABLE.query_refusal("GET", "/v1/a/items", "after=\u0100")
    assert refusal is not None and (refusal.status, refusal.body["field"]) == (400, "after")


def test_access_is_decided_before_the_query_and_an_unrouted_path_keeps_its_404(
        store: FakeStore) -> None:
    client, behind, _ = guarded(store)
    assert client.get("/v1/a/items/x?bogus=1").status_code == 401
    assert client.get("/v1/b/items/x?bogus=1", headers=bearer("read-a")).status_code == 403
    assert client.get("/v1/a/items/x/?bogus=1", headers=bearer("read-a")).status_code == 404
    # No route of the path and method: the router answers (404, 405), not the query check.
    assert client.get("/v1/a/nothing?bogus=1", headers=bearer("read-a")).status_code == 200
    assert client.delete("/v1/a/items/x?bogus=1", headers=bearer("admin-all")
                         ).status_code == 200
    assert behind.reached == 2


def test_an_empty_query_string_costs_no_look_up(store: FakeStore,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    client, behind, _ = guarded(store)

    def looked_up(*_: object) -> None:
        raise AssertionError("an empty query string was looked at")

    monkeypatch.setattr(TABLE, "query_refusal", looked_up)
    for path in ("/v1/a/items/x", "/v1/a/items/x/decrements", "/healthz"):
        method = "POST" if path.endswith("decrements") else "GET"
        assert client.open(path, method=method, json={"qty": 1},
                           headers=bearer("sell-a")).status_code == 200
    assert behind.reached == 3


def test_the_table_declares_the_query_its_handlers_validate_and_the_document_shows() -> None:
    assert BY_NAME["list_items"].query == tuple(schemas.ListQuery.model_fields)
    assert BY_NAME["ledger"].query == tuple(schemas.LedgerQuery.model_fields)
    paths = openapi.document()["paths"]
    for route in ROUTES:
        operation = paths.get(openapi_path(route.path), {}).get(route.method.lower(), {})
        assert [p["name"] for p in operation.get("parameters", [])
                if p["in"] == "query"] == list(route.query), route.name


@pytest.mark.parametrize("authorization", ["Bearer \u00e9t\u00e9", "B\u00e9arer x",
                                           f"Bearer {tok('admin-all')}\u00e9"])
def test_an_authorization_header_that_is_not_ascii_is_401_with_www_authenticate(
        store: FakeStore, authorization: str) -> None:
    client, behind, _ = guarded(store)
    response = client.get("/v1/a/items/x", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert behind.reached == 0


class LeftOut(dict[str, str]):
    """granian's headers: a value that is not visible ASCII is left out of ``items()``, its
    name kept in ``keys()``."""

    def __init__(self, read: dict[str, str], *left_out: str) -> None:
        super().__init__(read)
        self.left_out = left_out

    def keys(self) -> list[str]:  # type: ignore[override]
        return [*super().keys(), *self.left_out]


def test_through_rsgi_an_authorization_header_granian_leaves_out_is_401(
        store: FakeStore) -> None:
    client, behind, cache = guarded(store)
    guard = client.application
    assert isinstance(guard, AccessGuard)
    bridge = RsgiBridge(guard, threads=1, body_timeout=5, max_body=MAX_BODY, guard=guard,
                        tokens=cache)

    def sent(path: str, headers: LeftOut) -> tuple[int, list[tuple[str, str]], bytes]:
        protocol = Protocol()
        asyncio.run(bridge.__rsgi__(Scope("GET", path, headers),  # type: ignore[arg-type]
                                    protocol))  # type: ignore[arg-type]
        assert protocol.sent is not None
        return protocol.sent

    try:
        status, headers, data = sent("/v1/a/items/x", LeftOut({}, "authorization"))
        assert status == 401 and json.loads(data)["error"] == "unauthorized"
        assert dict(headers)["WWW-Authenticate"].startswith("Bearer")
        assert behind.reached == 0
        # A route that needs no token ignores it; another header left out is still 400.
        assert sent("/healthz", LeftOut({}, "authorization"))[0] == 200
        assert behind.reached == 1
        status, _, data = sent("/v1/a/items/x", LeftOut(bearer("read-a"), "idempotency-key"))
        assert status == 400 and json.loads(data)["field"] == "idempotency-key"
        assert sent("/v1/a/items/x", LeftOut(bearer("read-a")))[0] == 200
    finally:
        bridge.pool.shutdown()
