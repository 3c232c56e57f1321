"""Random requests against the API: never a 500, and a rejected request changes nothing."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.conftest import FakeApp, body

names = st.one_of(st.sampled_from(["a", "b", "ns"]),
                  st.text(min_size=0, max_size=70).filter(lambda s: "/" not in s and s != "."))
numbers = st.one_of(st.integers(-2**63, 2**63), st.floats(allow_nan=True), st.booleans(),
                    st.none(), st.text(max_size=5), st.integers(-3, 5))
bodies = st.one_of(
    st.fixed_dictionaries({}, optional={"total": numbers, "delta": numbers, "qty": numbers,
                                        "extra": numbers}),
    st.lists(numbers, max_size=3), numbers)
keys = st.one_of(st.none(), st.sampled_from(["k1", "k2"]), st.text(max_size=130))
routes = st.sampled_from([
    ("PUT", "/v1/{ns}/items/{sku}"), ("GET", "/v1/{ns}/items/{sku}"),
    ("GET", "/v1/{ns}/items"), ("POST", "/v1/{ns}/items/{sku}/adjustments"),
    ("POST", "/v1/{ns}/items/{sku}/decrements"), ("POST", "/v1/{ns}/items/{sku}/refunds"),
    ("GET", "/v1/{ns}/items/{sku}/ledger"), ("POST", "/v1/{ns}/items/{sku}/refresh"),
    ("POST", "/v1/{ns}/refresh"), ("DELETE", "/v1/{ns}/items/{sku}")])
queries = st.dictionaries(st.sampled_from(["after", "limit", "after_seq"]),
                          st.text(max_size=6), max_size=2)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(st.tuples(routes, names, names, bodies, keys, queries,
                                   st.booleans()), min_size=1, max_size=6))
def test_no_500_and_refusals_change_nothing(requests: list[tuple[Any, ...]]) -> None:
    app = FakeApp()
    app.client.put("/v1/a/items/b", json={"total": 5})
    for (method, template), ns, sku, payload, key, query, raw in requests:
        path = template.format(ns=quote(ns, safe=""), sku=quote(sku, safe=""))
        headers = {"Content-Type": "application/json"}
        if key is not None and all(ord(ch) < 256 and ch not in "\r\n" for ch in key):
            headers["Idempotency-Key"] = key
        data = json.dumps(payload) if not raw else json.dumps(payload)[:-1] + "garbage"
        before = app.snapshot()
        response = app.client.open(path, method=method, data=data, headers=headers,
                                   query_string=query)
        assert response.status_code < 500, (method, path, data, response.json)
        assert response.is_json
        if response.status_code >= 400 and response.headers.get("Idempotent-Replayed") is None:
            assert app.snapshot() == before, (method, path, data, response.json)
        if response.status_code >= 400:
            assert {"error", "message"} <= set(body(response))
