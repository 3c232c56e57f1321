"""Access to /v1/: decided from the token, the path and the method, before the body is read."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pytest
from werkzeug.test import Client

from allocation.adapters.token_store import Grant, digest
from allocation.entrypoints.access import AccessGuard, TokenCache, role_needed

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


class FakeStore:
    def __init__(self) -> None:
        self.grants: dict[str, Grant] = {}
        self.finds = 0
        self.touched: list[str] = []
        self.down = False

    def add(self, token: str, namespace: str, role: str) -> None:
        self.grants[digest(token)] = Grant(f"id-{token}", namespace, role)

    def active(self) -> dict[str, Grant]:
        if self.down:
            raise ConnectionError("the database is away")
        return dict(self.grants)

    def find(self, token_hash: str) -> Grant | None:
        self.finds += 1
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


def guarded(store: FakeStore) -> tuple[Client, Behind, TokenCache]:
    behind = Behind()
    cache = TokenCache(store)  # type: ignore[arg-type]
    return Client(AccessGuard(behind, cache)), behind, cache


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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
    assert role_needed(method, path) == role


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer"},
                                     {"Authorization": "Basic YTpi"},
                                     bearer("no-such-token"), bearer("admin-all ")])
def test_no_token_or_an_unknown_one_is_401_and_reaches_nothing(
        store: FakeStore, headers: dict[str, str]) -> None:
    client, behind, _ = guarded(store)
    response = client.post("/v1/a/items/x/decrements", json={"qty": 1}, headers=headers)
    if headers.get("Authorization") == "Bearer admin-all ":
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


def test_paths_outside_v1_need_no_token(store: FakeStore) -> None:
    client, behind, _ = guarded(store)
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200
    assert behind.reached == 5


def test_a_revoked_token_is_refused_after_the_next_reload(store: FakeStore) -> None:
    client, _, cache = guarded(store)
    assert client.get("/v1/a/items/x", headers=bearer("read-a")).status_code == 200
    del store.grants[digest("read-a")]
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
