"""Random API requests (hypothesis strategies) and how to send one through a Flask test client."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from flask.testing import FlaskClient
from hypothesis import strategies as st
from werkzeug.test import TestResponse

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
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8",
                                 "Application/JSON", "text/plain", "application/x+json"])
# (route, namespace, sku, body, idempotency key, query, garble the body, content type)
requests = st.tuples(routes, names, names, bodies, keys, queries, st.booleans(),
                     st.one_of(st.just("application/json"), content_types))


def send(client: FlaskClient, request: tuple[Any, ...]) -> tuple[str, TestResponse]:
    """Send one drawn request; (a description for failures, the response)."""
    (method, template), ns, sku, payload, key, query, garbled, content_type = request
    path = template.format(ns=quote(ns, safe=""), sku=quote(sku, safe=""))
    headers = {"Content-Type": content_type}
    if key is not None and all(ord(ch) < 256 and ch not in "\r\n" for ch in key):
        headers["Idempotency-Key"] = key
    data = json.dumps(payload) if not garbled else json.dumps(payload)[:-1] + "garbage"
    response = client.open(path, method=method, data=data, headers=headers, query_string=query)
    return f"{method} {path} {headers} {data!r}", response
