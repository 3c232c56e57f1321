"""The fast lane answers exactly as Flask's routes would, and leaves Flask what it does not
serve itself."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from werkzeug.test import TestResponse

from allocation.config import Config
from allocation.domain import errors
from allocation.entrypoints.fast_lane import DECREMENTS
from tests.helpers.apps import FakeApp, body
from tests.helpers.http_requests import requests, send

T0 = 1_900_000_000_000  # ms: the scripts' clock in both apps

# Requests aimed at the lane's routes, dense in the near misses it must leave to Flask.
lane_requests = st.tuples(
    st.sampled_from([("POST", "/v1/{ns}/items/{sku}/decrements"),
                     ("POST", "/v1/{ns}/items/{sku}/refunds"), ("GET", "/v1/{ns}/items/{sku}"),
                     ("HEAD", "/v1/{ns}/items/{sku}"), ("PUT", "/v1/{ns}/items/{sku}/refunds"),
                     ("POST", "/v1/{ns}/items/{sku}/decrements/"),
                     ("GET", "/v1/{ns}/items/{sku}/"), ("POST", "/v1/{ns}/sales/{sku}/queue"),
                     ("PUT", "/v1/{ns}/sales/{sku}/queue")]),
    st.sampled_from(["ns", "ns", "x", "-ns"]),
    st.sampled_from(["a", "a", "b", "c", "a/", "-a", "a" * 65]),
    st.one_of(st.fixed_dictionaries({"qty": st.integers(-1, 4)}),
              st.fixed_dictionaries({"qty": st.sampled_from([True, 1.0, "1", None, 10**7])}),
              st.sampled_from([[1], 1, {}, {"qty": 1, "extra": 2},
                               {"qty": 1, "pad": "x" * 70_000}]),
              st.sampled_from([{"buyer": "b1"}, {"buyer": "b2"}, {"buyer": ""}, {"buyer": 7},
                               {"buyer": "b1", "qty": 1}])),
    st.sampled_from(["k1", "k2", "k3", "", "x" * 129, "tab\tkey", "\xe9", None]),
    st.just({}), st.sampled_from([False, False, False, True]),
    st.sampled_from(["application/json", "application/json", "application/json; charset=utf-8",
                     "Application/JSON", "text/plain", "application/x+json",
                     "application/jsonx", ""]))


def answer(response: TestResponse) -> tuple[str, list[tuple[str, str]], bytes]:
    """What a client sees, but the ledger's timestamps (each app has its own clock readings)."""
    if response.request.method != "HEAD":
        assert response.headers["Content-Length"] == str(len(response.data))
    headers = [(k, v) for k, v in response.headers if k != "Content-Length"]
    return response.status, headers, re.sub(rb'"created_at":"[^"]*"', b"", response.data)


def pair() -> tuple[FakeApp, FakeApp]:
    """The app with its lane and without, alike: the same keys sign the same tickets, and the
    scripts' clocks stand at the same moment (a ticket holds its join's time)."""
    config = Config(sale_secret="the same key for both apps")
    apps = FakeApp(config, fast=True), FakeApp(config, fast=False)
    for app in apps:
        app.now = T0
        app.client.put("/v1/ns/items/a", json={"total": 5})
        app.client.put("/v1/x/items/b", json={"total": 0})
        app.client.put("/v1/ns/items/g", json={"total": 1})
        assert app.client.put("/v1/ns/sales/a", json={"skus": ["g"]}).status_code == 201
    return apps


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=st.lists(st.one_of(lane_requests, requests), min_size=1, max_size=8))
def test_the_lane_answers_as_flask_does(drawn: list[tuple[Any, ...]]) -> None:
    fast, flask = pair()
    for request in drawn:
        sent, lane_answer = send(fast.client, request)
        _, flask_answer = send(flask.client, request)
        assert answer(lane_answer) == answer(flask_answer), sent
        assert fast.snapshot() == flask.snapshot(), sent


def count_views(app: FakeApp) -> Counter[str]:
    """How often each Flask view runs."""
    calls: Counter[str] = Counter()
    for name, view in list(app.app.view_functions.items()):
        def counted(*args: Any, _name: str = name, _view: Callable[..., Any] = view,
                    **kwargs: Any) -> Any:
            calls[_name] += 1
            return _view(*args, **kwargs)
        app.app.view_functions[name] = counted
    return calls


def test_well_formed_sale_calls_do_not_reach_flask() -> None:
    fast, _ = pair()
    calls = count_views(fast)
    c = fast.client
    assert c.post("/v1/ns/items/a/decrements", json={"qty": 2},
                  headers={"Idempotency-Key": "1"}).status_code == 200
    assert c.post("/v1/ns/items/a/decrements", json={"qty": 9},
                  headers={"Idempotency-Key": "2"}).status_code == 409
    assert c.post("/v1/ns/items/a/refunds", json={"qty": 1},
                  headers={"Idempotency-Key": "3"}).status_code == 200
    assert body(c.get("/v1/ns/items/a"))["available"] == 4
    assert c.get("/v1/ns/items/nothing").status_code == 404
    # A malformed call too: the lane decodes it as Flask's route does (movement_requests).
    bad = c.post("/v1/ns/items/a/decrements", data="{", headers={
        "Idempotency-Key": "4", "Content-Type": "application/json"})
    assert (bad.status_code, body(bad)["error"]) == (400, "malformed_json")
    assert c.post("/v1/ns/items/a/decrements", json={"qty": 1}).status_code == 400
    joined = c.post("/v1/ns/sales/a/queue", json={"buyer": "ann"})
    assert joined.status_code == 201 and body(joined)["state"] in ("admitted", "waiting")
    assert c.post("/v1/ns/sales/a/queue", json={"buyer": "ann"}).status_code == 200
    assert c.post("/v1/ns/sales/nope/queue", json={"buyer": "ann"}).status_code == 404
    assert c.post("/v1/ns/sales/a/queue", json={"buyer": ""}).status_code == 400
    assert calls == Counter()


@pytest.mark.parametrize("failure", [
    errors.Unavailable("redis unavailable: connection refused", retry_after=2),
    redis.ConnectionError("refused"), RuntimeError("a bug")])
def test_failures_are_answered_as_flask_does(failure: Exception,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: object, **__: object) -> None:
        raise failure

    answers = []
    for app in pair():
        monkeypatch.setattr(app.counter, "apply", fail)
        monkeypatch.setattr(app.counter, "read", fail)
        answers.append([answer(app.client.post("/v1/ns/items/a/decrements", json={"qty": 1},
                                               headers={"Idempotency-Key": "k"})),
                        answer(app.client.get("/v1/ns/items/a"))])
    assert answers[0] == answers[1]
    assert answers[0][0][0].startswith("503" if not isinstance(failure, RuntimeError) else "500")


def test_the_lane_counts_requests_and_movements_as_flask_does() -> None:
    def sample(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    request = ("allocation_http_requests_total",
               {"method": "POST", "route": DECREMENTS, "status": "409"})
    latency = ("allocation_http_request_duration_seconds_count", {"route": DECREMENTS})
    refused = ("allocation_movements_total", {"kind": "decrement",
                                              "outcome": "insufficient_stock"})
    for app in pair():
        before = [sample(*s) for s in (request, latency, refused)]
        app.client.post("/v1/x/items/b/decrements", json={"qty": 1},
                        headers={"Idempotency-Key": "k"})
        after = [sample(*s) for s in (request, latency, refused)]
        assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]


JSON = "application/json"
# (method, path, content type, idempotency key, body): the lane leaves each to Flask (a path it
# does not serve, a body over the limit) ...
LEFT_TO_FLASK = [
    ("POST", "/v1/ns/items/a/decrements", JSON, "k", '{"qty": 1, "pad": "%s"}' % ("x" * 70_000)),
    ("POST", "/v1/ns/items/a/decrements/", JSON, "k", '{"qty": 1}'),
    ("POST", "/v1/ns/items/-a/decrements", JSON, "k", '{"qty": 1}'),
    ("POST", "/v1/ns/items/a/refunds", JSON, "k", ""),
]
# ... or refuses itself, as Flask's route does (both decode with movement_requests).
REFUSED_BY_THE_LANE = [
    ("POST", "/v1/ns/items/a/decrements", "text/plain", "k", '{"qty": 1}'),
    ("POST", "/v1/ns/items/a/decrements", "application/merge+json", "k", '{"qty": 1}'),
    ("POST", "/v1/ns/items/a/decrements", JSON, "x" * 129, '{"qty": 1}'),
    ("POST", "/v1/ns/items/a/decrements", JSON, "a,b", '{"qty": 1}'),
    ("POST", "/v1/ns/items/a/decrements", JSON, None, '{"qty": 1}'),
    ("POST", "/v1/ns/items/a/decrements", JSON, "k", '{"qty": true}'),
    ("POST", "/v1/ns/items/a/decrements", JSON, "k", '{"qty": 1, "qty": 2}'),
    ("POST", "/v1/ns/items/a/decrements", JSON, "k", "[" * 50_000),
    ("POST", "/v1/ns/items/a/refunds", JSON, "k", "{}"),
]


@pytest.mark.parametrize("method,path,content_type,key,data",
                         [*LEFT_TO_FLASK, *REFUSED_BY_THE_LANE])
def test_near_misses_are_answered_as_flask_does(method: str, path: str, content_type: str,
                                                key: str | None, data: str) -> None:
    answers, views_run = [], []
    for app in pair():
        calls = count_views(app)
        headers = {"Content-Type": content_type, **({"Idempotency-Key": key} if key else {})}
        response = app.client.open(path, method=method, data=data, headers=headers)
        answers.append(answer(response))
        views_run.append(sum(calls.values()))
    assert answers[0] == answers[1]
    # Flask's view ran behind the lane only for what the lane leaves to it.
    left = (method, path, content_type, key, data) in LEFT_TO_FLASK
    assert views_run[0] == (views_run[1] if left else 0)


@pytest.mark.parametrize("length", ["\u00b2", "-1", "1e3", " 10"])
def test_a_content_length_that_is_not_a_number_is_left_to_flask(length: str) -> None:
    answers = []
    for app in pair():
        response = app.client.post("/v1/ns/items/a/decrements", data='{"qty": 1}', headers={
            "Content-Type": JSON, "Idempotency-Key": "k"}, environ_overrides={
            "CONTENT_LENGTH": length})
        answers.append(answer(response))
    assert answers[0] == answers[1]


@pytest.mark.parametrize("query", ["x=1", "qty=2", "buyer=b1", "%C3%A9=1", "k", "a=%FF"])
def test_a_query_the_lanes_routes_do_not_define_is_400_naming_it_and_changes_nothing(
        query: str) -> None:
    answers = []
    for app in pair():
        calls = count_views(app)
        before = app.snapshot()
        answered = [answer(app.client.open(f"{path}?{query}", method=method, json=data,
                                           headers={"Idempotency-Key": "q"}))
                    for method, path, data in (
                        ("POST", "/v1/ns/items/a/decrements", {"qty": 1}),
                        ("POST", "/v1/ns/items/a/refunds", {"qty": 1}),
                        ("GET", "/v1/ns/items/a", None),
                        ("POST", "/v1/ns/sales/a/queue", {"buyer": "ann"}))]
        assert {status for status, _, _ in answered} == {"400 BAD REQUEST"}
        assert app.snapshot() == before and calls == Counter()
        answers.append(answered)
    assert answers[0] == answers[1]
    field = answers[0][0][2].decode()
    assert '"error":"invalid_field"' in field and '"field":' in field
