"""One table of routes (route_table.ROUTES) feeds Flask, the fast lane, access control, the RSGI
bridge and the OpenAPI document: each is held to the table here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pytest
from werkzeug.test import Client, EnvironBuilder

from allocation.adapters.token_store import Grant
from allocation.entrypoints import fast_lane, openapi, route_table, rsgi_bridge
from allocation.entrypoints.route_table import ROUTES, AccessGuard, Route, RouteTable
from allocation.entrypoints.rsgi_bridge import _stream_key
from allocation.entrypoints.tokens import TokenCache
from tests.helpers.apps import FakeApp

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

# API.md, "Access: tokens and roles": read reads items, the listing, the ledger, reservations,
# the stream and the namespace's stats; sell also decrements, refunds and every reservation
# operation; admin everything else under /v1/{ns}/; /metrics a "*" token of any role; /healthz,
# /readyz, /openapi.json and /docs (with its files, and the dashboard's page) no token.
API_MD = {
    "get_item": "read", "list_items": "read", "ledger": "read", "get_reservation": "read",
    "stream": "read", "stats": "read",
    "decrement": "sell", "refund": "sell", "reserve": "sell", "confirm": "sell",
    "release": "sell", "extend": "sell",
    "init_item": "admin", "set_limit": "admin", "adjust": "admin", "refresh_item": "admin",
    "refresh_namespace": "admin",
    "metrics": "operator",
    "healthz": "public", "readyz": "public", "openapi_json": "public", "docs": "public",
    "docs_asset": "public", "dashboard": "public", "dashboard_asset": "public",
    "get_sale": "read", "join_queue": "sell", "put_sale": "admin", "close_sale": "admin",
    "poll_ticket": "public", "ticket_stream": "public",
}


PUBLIC_UNDER_V1 = {"poll_ticket", "ticket_stream"}


def sample(path: str) -> str:
    """A request path for a template, each parameter a valid name."""
    return route_table.pattern(path).replace("([^/]+)", "a1").replace("\\", "")


def test_every_flask_rule_is_a_route_of_the_table_and_every_route_a_rule() -> None:
    flask = FakeApp().app
    rules = {(method, rule.rule) for rule in flask.url_map.iter_rules()
             if rule.endpoint != "static" for method in rule.methods or ()
             if method not in ("HEAD", "OPTIONS")}
    assert rules == {(route.method, route.path) for route in ROUTES}
    assert len({route.name for route in ROUTES}) == len(ROUTES)


def test_each_route_needs_what_api_md_says() -> None:
    assert {route.name: route.access for route in ROUTES} == API_MD
    for route in ROUTES:
        assert route_table.TABLE.access(route.method, sample(route.path)) == route.access
        assert route_table.TABLE.find(route.method, sample(route.path)) == route
        # a role is of a namespace: its routes are the namespace's (and a ticket's poll and
        # stream, whose ticket is the credential, need none: API.md)
        assert route.path.startswith("/v1/<namespace>/") == (
            route.access in ("read", "sell", "admin") or route.name in PUBLIC_UNDER_V1)


@pytest.mark.parametrize(("method", "path", "need"), [
    ("HEAD", "/v1/a/items/x", "read"), ("GET", "/v1/a/refresh", "read"),
    ("GET", "/v1/a/no/such/path", "read"), ("POST", "/v1/a/no/such/path", "admin"),
    ("DELETE", "/v1/a/items/x", "admin"), ("OPTIONS", "/v1/a/items", "admin"),
    ("POST", "/metrics", "operator"), ("POST", "/healthz", "public"),
    ("GET", "/nowhere", "public"), ("GET", "/v1", "public"),
])
def test_a_request_no_route_serves_needs_what_it_did_before_the_table(
        method: str, path: str, need: str) -> None:
    assert route_table.TABLE.access(method, path) == need


def test_the_fast_lane_serves_the_tables_fast_routes_and_no_other() -> None:
    app = FakeApp().application
    passed: list[str] = []

    def flask(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        passed.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b""]

    lane = Client(fast_lane.FastLane(flask, app, 64 * 1024))
    for route in ROUTES:
        passed.clear()
        lane.open(sample(route.path), method=route.method, json={"qty": 1, "buyer": "b"})
        assert (passed == []) == route.fast, route
    assert {r.name for r in ROUTES if r.fast} == {"get_item", "decrement", "refund",
                                                  "join_queue"}


def test_the_fast_lane_takes_the_match_a_server_made() -> None:
    passed: list[str] = []

    def flask(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        passed.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b""]

    lane = fast_lane.FastLane(flask, FakeApp().application, 64 * 1024)
    path = sample(route_table.ITEM)
    environ = EnvironBuilder(path=path).get_environ()
    lane({**environ, route_table.MATCHED: None}, lambda *_: lambda _: None)  # matched: none
    assert passed == [path]
    lane(environ, lambda *_: lambda _: None)  # not matched yet: the lane matches it
    assert passed == [path]


def test_the_bridge_answers_on_its_loop_the_tables_loop_routes_alone() -> None:
    assert [r.name for r in ROUTES if r.loop] == ["poll_ticket"]
    assert set(rsgi_bridge._AT_ONCE) == {"poll_ticket"}


def _stream_of(method: str, path: str) -> tuple[str, str] | None:
    return _stream_key(route_table.TABLE.match(method, path))


def test_the_bridge_streams_the_tables_stream_route_alone() -> None:
    assert _stream_of("GET", "/v1/ns/items/sku-1/stream") == ("ns", "sku-1")
    assert _stream_of("HEAD", "/v1/ns/items/sku-1/stream") is None
    for route in ROUTES:
        assert (_stream_of(route.method, sample(route.path)) is not None) == route.stream


def test_the_openapi_document_has_the_tables_paths_and_a_token_where_one_is_needed() -> None:
    paths = openapi.document()["paths"]
    documented = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    table = {(r.method, route_table.openapi_path(r.path)): r for r in ROUTES}
    assert documented <= set(table)
    for (method, path), route in table.items():
        if (method, path) in documented:
            operation = paths[path][method.lower()]
            assert ("security" in operation) == (route.access != "public"), route.name


class NoTokens:
    def active(self) -> dict[str, Grant]:
        return {}

    def find(self, token_hash: str) -> Grant | None:
        return None

    def touch(self, token_ids: Iterable[str]) -> None:
        pass


def test_one_line_makes_a_route_under_v1_that_needs_no_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    poll = Route("poll_ticket", "GET", "/v1/<namespace>/sales/<sale>/queue/<ticket>",
                 "poll_ticket")
    monkeypatch.setattr(route_table, "TABLE", RouteTable((*ROUTES, poll)))

    def behind(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"served"]

    tokens = TokenCache(NoTokens())
    tokens._reload()
    client = Client(AccessGuard(behind, tokens))
    assert client.get("/v1/a/sales/s/queue/t1").get_data() == b"served"
    assert client.get("/v1/a/items/x").status_code == 401
    assert client.get("/v1/a/sales/s/queue/t1", headers={
        "Authorization": "Bearer whatever"}).status_code == 200
