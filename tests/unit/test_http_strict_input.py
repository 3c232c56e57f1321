"""Strict input, through both front ends (the fast lane and Flask's routes): a body field the
operation does not define is 400 naming it, a query integer is plain decimal digits, a query
parameter comes once; each changes nothing. A 503 names no driver, library or exception, and
the API's viewer (/docs) may run only its own files and be framed by nobody."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
import redis
from sqlalchemy import exc as sa_exc

from allocation.entrypoints import openapi
from tests.helpers.apps import FakeApp, body

KEY = {"Idempotency-Key": "k1"}


@pytest.fixture(params=[True, False], ids=["fast-lane", "flask"])
def shop(request: pytest.FixtureRequest) -> FakeApp:
    app = FakeApp(fast=request.param)
    app.client.put("/v1/ns/items/a", json={"total": 5})
    made = app.client.post("/v1/ns/reservations", json={"lines": [{"sku": "a", "qty": 1}]},
                           headers={"Idempotency-Key": "cart"})
    assert made.status_code == 201, made.get_json()
    app.rid = body(made)["id"]  # type: ignore[attr-defined]
    return app


# Each operation's body, right but for one field it does not define.
BODIES: list[tuple[str, str, dict[str, Any], dict[str, str], str]] = [
    ("PUT", "/v1/ns/items/a", {"total": 5, "totl": 6}, {}, "totl"),
    ("PUT", "/v1/ns/items/new", {"total": 5, "limit_per_buyr": 1}, {}, "limit_per_buyr"),
    ("PATCH", "/v1/ns/items/a", {"limit_per_buyer": 1, "limit": 2}, {}, "limit"),
    ("POST", "/v1/ns/items/a/adjustments", {"delta": 1, "delt": 2}, KEY, "delt"),
    ("POST", "/v1/ns/items/a/decrements", {"qty": 1, "buyr": "ann"}, KEY, "buyr"),
    ("POST", "/v1/ns/items/a/refunds", {"qty": 1, "quantity": 1}, KEY, "quantity"),
    ("POST", "/v1/ns/reservations", {"lines": [{"sku": "a", "qty": 1}], "ttl_second": 5},
     {"Idempotency-Key": "cart-2"}, "ttl_second"),
    ("POST", "/v1/ns/reservations", {"lines": [{"sku": "a", "qty": 1, "price": 3}]},
     {"Idempotency-Key": "cart-3"}, "lines.0.price"),
    ("POST", "/v1/ns/reservations/{rid}/extend", {"ttl_seconds": 60, "ttl": 5}, {}, "ttl"),
]


@pytest.mark.parametrize("method, path, sent, headers, field", BODIES,
                         ids=[f"{m} {p.rsplit('/', 1)[-1]} {f}" for m, p, _, _, f in BODIES])
def test_a_field_the_operation_does_not_define_is_400_naming_it(
        shop: FakeApp, method: str, path: str, sent: dict[str, Any], headers: dict[str, str],
        field: str) -> None:
    before = shop.snapshot()
    response = shop.client.open(path.format(rid=shop.rid), method=method,  # type: ignore[attr-defined]
                                json=sent, headers=headers)
    assert response.status_code == 400, response.get_json()
    assert body(response)["field"] == field
    assert body(response)["error"] == "invalid_field"
    assert field in body(response)["message"]
    assert shop.snapshot() == before


@pytest.mark.parametrize("path, headers", [
    ("/v1/ns/items/a/decrements", KEY), ("/v1/ns/items/a/adjustments", KEY),
    ("/v1/ns/reservations", {"Idempotency-Key": "cart-4"}), ("/v1/ns/sales/s/queue", {})])
@pytest.mark.parametrize("sent", [b"[]", b"null", b"1", b'"qty"'])
def test_a_body_that_is_not_an_object_is_400_naming_the_body(
        shop: FakeApp, path: str, headers: dict[str, str], sent: bytes) -> None:
    before = shop.snapshot()
    response = shop.client.post(path, data=sent, content_type="application/json",
                                headers=headers)
    assert response.status_code == 400, response.get_json()
    assert (body(response)["error"], body(response)["field"]) == ("invalid_field", "body")
    assert shop.snapshot() == before


@pytest.mark.parametrize("query, field", [
    ("limit=+5", "limit"), ("limit=5.0", "limit"), ("limit=1_0", "limit"),
    ("limit=%205", "limit"), ("limit=%EF%BC%95", "limit"), ("limit=-1", "limit"),
    ("limit=0x5", "limit"), ("limit=", "limit"), ("limit=1&limit=2", "limit"),
    ("after=a&after=b", "after"), ("limt=5", "limt"),
])
def test_item_pages_take_plain_decimal_integers_once(shop: FakeApp, query: str,
                                                     field: str) -> None:
    response = shop.client.get(f"/v1/ns/items?{query}")
    assert response.status_code == 400, response.get_json()
    assert body(response)["field"] == field


@pytest.mark.parametrize("query", ["after_seq=+1", "after_seq=1.0", "limit=1_0",
                                   "after_seq=0&after_seq=1"])
def test_ledger_pages_take_plain_decimal_integers_once(shop: FakeApp, query: str) -> None:
    response = shop.client.get(f"/v1/ns/items/a/ledger?{query}")
    assert response.status_code == 400, response.get_json()


def test_plain_query_integers_still_work(shop: FakeApp) -> None:
    page = shop.client.get("/v1/ns/items?limit=5")
    assert (page.status_code, [i["sku"] for i in body(page)["items"]]) == (200, ["a"])
    assert shop.client.get("/v1/ns/items?limit=0005").status_code == 200
    ledger = shop.client.get("/v1/ns/items/a/ledger?after_seq=0&limit=10")
    assert ledger.status_code == 200


def refused_connection() -> Exception:
    return sa_exc.OperationalError(
        "SELECT 1", {}, psycopg2.OperationalError("connection to server failed: refused"))


@pytest.mark.parametrize("failure", [refused_connection, lambda: redis.ConnectionError(
    "Error 111 connecting to localhost:6379. Connection refused.")],
    ids=["database", "redis"])
@pytest.mark.parametrize("method, path, sent", [
    ("PUT", "/v1/ns/items/b", {"total": 1}),
    ("POST", "/v1/ns/items/a/decrements", {"qty": 1}),
], ids=["init", "decrement"])
def test_a_503_names_no_driver_library_or_exception(
        shop: FakeApp, monkeypatch: pytest.MonkeyPatch, failure: Callable[[], Exception],
        method: str, path: str, sent: dict[str, Any]) -> None:
    def down(command: Any) -> Any:
        raise failure()

    monkeypatch.setattr(shop.application.bus, "handle", down)
    response = shop.client.open(path, method=method, json=sent, headers=KEY)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    text = response.get_data(as_text=True)
    for internal in ("OperationalError", "ConnectionError", "psycopg", "sqlalchemy", "redis",
                     "Error 111", "refused"):
        assert internal.lower() not in text.lower(), text
    assert body(response)["error"] == "unavailable"


def test_the_docs_page_runs_only_its_own_files_and_no_site_frames_it(shop: FakeApp) -> None:
    page = shop.client.get("/docs")
    assert page.status_code == 200
    policy = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self';" in policy and "'unsafe-inline'" not in policy.split(
        "script-src")[1].split(";")[0]
    html = page.get_data(as_text=True)
    assert re.search(r"<script>", html) is None  # no inline script for the policy to block
    for asset in re.findall(r'(?:src|href)="(/docs/[^"]+)"', html):
        served = shop.client.get(asset)
        assert served.status_code == 200, asset
        assert "frame-ancestors 'none'" in served.headers["Content-Security-Policy"]
    assert f"/docs/{openapi.DOCS_INIT}" in html
    dashboard = shop.client.get("/dashboard")
    assert "frame-ancestors 'none'" in dashboard.headers["Content-Security-Policy"]


# The operations that take no body (API.md): the reservation's confirm and release, a sale's
# close, an item's and a namespace's refresh.
NO_BODY = ["/v1/ns/reservations/{rid}/confirm", "/v1/ns/reservations/{rid}/release",
           "/v1/ns/sales/s/close", "/v1/ns/items/a/refresh", "/v1/ns/refresh"]


def states(shop: FakeApp) -> tuple[object, ...]:
    """What a refused request to one of ``NO_BODY`` must leave as it was."""
    held = body(shop.client.get(f"/v1/ns/reservations/{shop.rid}"))  # type: ignore[attr-defined]
    sale = body(shop.client.get("/v1/ns/sales/s"))
    return shop.snapshot(), held["state"], sale["state"]


@pytest.fixture
def with_sale(shop: FakeApp) -> FakeApp:
    shop.client.put("/v1/ns/items/g", json={"total": 1})
    made = shop.client.put("/v1/ns/sales/s", json={"skus": ["g"],
                                                   "opens_at": "2030-01-01T00:00:00+00:00"})
    assert made.status_code == 201, made.get_json()
    shop.drain()  # a refresh waits for the ledger
    return shop


@pytest.mark.parametrize("path", NO_BODY, ids=[p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1]
                                               for p in NO_BODY])
@pytest.mark.parametrize("sent, content_type, status, field", [
    (b'{"bogus": 1}', "application/json", 400, "bogus"),
    (b'{"a": 1, "a": 2}', "application/json", 400, "a"),
    (b"{}{}", "application/json", 400, None),
    (b"not json", "application/json", 400, None),
    (b"[]", "application/json", 400, "body"),
    (b"{}", "text/plain", 415, None),
    (b'{"bogus": 1}', None, 415, None),
], ids=["a field", "a repeated key", "two objects", "not JSON", "not an object", "text/plain",
        "no type"])
def test_an_operation_that_takes_no_body_refuses_one_and_changes_nothing(
        with_sale: FakeApp, path: str, sent: bytes, content_type: str | None, status: int,
        field: str | None) -> None:
    before = states(with_sale)
    response = with_sale.client.post(path.format(rid=with_sale.rid),  # type: ignore[attr-defined]
                                     data=sent, content_type=content_type)
    assert response.status_code == status, response.get_json()
    assert body(response).get("field") == field
    if field is not None:
        assert field in body(response)["message"]
    assert states(with_sale) == before


@pytest.mark.parametrize("path", NO_BODY, ids=[p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1]
                                               for p in NO_BODY])
@pytest.mark.parametrize("sent, content_type", [
    (b"", None), (b"", "application/json"), (b"", "text/plain"), (b"{}", "application/json"),
    (b' { } ', "application/json; charset=utf-8")], ids=["none", "empty JSON", "empty text",
                                                          "{}", "{} spaced"])
def test_an_operation_that_takes_no_body_is_done_without_one_or_with_an_empty_object(
        with_sale: FakeApp, path: str, sent: bytes, content_type: str | None) -> None:
    response = with_sale.client.post(path.format(rid=with_sale.rid),  # type: ignore[attr-defined]
                                     data=sent, content_type=content_type)
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize("path, sent, headers", [
    ("/v1/ns/items/a/decrements", {"qty": 1, "buyer": None}, KEY),
    ("/v1/ns/items/a/refunds", {"qty": 1, "buyer": None}, KEY),
    ("/v1/ns/reservations", {"lines": [{"sku": "a", "qty": 1}], "buyer": None},
     {"Idempotency-Key": "cart-5"}),
], ids=["decrement", "refund", "reserve"])
def test_a_null_buyer_is_refused_not_read_as_none(shop: FakeApp, path: str, sent: dict[str, Any],
                                                 headers: dict[str, str]) -> None:
    before = shop.snapshot()
    response = shop.client.post(path, json=sent, headers=headers)
    assert response.status_code == 400, response.get_json()
    assert body(response)["field"] == "buyer" and "null" in body(response)["message"]
    assert shop.snapshot() == before


@pytest.mark.parametrize("sent, field", [
    ({"lines": ["a"]}, "lines.0"), ({"lines": [["a", 1]]}, "lines.0"),
    ({"lines": {"sku": "a", "qty": 1}}, "lines")])
def test_a_message_names_no_class_of_ours(shop: FakeApp, sent: dict[str, Any],
                                          field: str) -> None:
    response = shop.client.post("/v1/ns/reservations", json=sent,
                                headers={"Idempotency-Key": "cart-6"})
    assert response.status_code == 400, response.get_json()
    assert body(response)["field"] == field
    message = body(response)["message"]
    assert "Line" not in message and "instance" not in message and "Value error" not in message


def test_an_item_that_exists_otherwise_is_described_without_none(shop: FakeApp) -> None:
    clash = shop.client.put("/v1/ns/items/a", json={"total": 6})
    assert clash.status_code == 409
    assert body(clash)["message"] == "ns/a exists with total 5 and no limit per buyer"
    shop.client.patch("/v1/ns/items/a", json={"limit_per_buyer": 2})
    clash = shop.client.put("/v1/ns/items/a", json={"total": 6})
    assert body(clash)["message"] == "ns/a exists with total 5 and limit per buyer 2"


@pytest.mark.parametrize("key", ["a b", " a b c ", "order 17 / line 2", "~!@#$%^&*()"])
def test_a_key_is_printable_ascii_but_the_comma_spaces_inside_it_too(shop: FakeApp,
                                                                    key: str) -> None:
    sold = shop.client.post("/v1/ns/items/a/decrements", json={"qty": 1},
                            headers={"Idempotency-Key": key})
    assert sold.status_code == 200, sold.get_json()
    again = shop.client.post("/v1/ns/items/a/decrements", json={"qty": 1},
                             headers={"Idempotency-Key": key})
    assert again.headers.get("Idempotent-Replayed") == "true"


@pytest.mark.parametrize("key, complaint", [("", "empty"), ("a,b", "comma"),
                                            ("a\tb", "printable"), ("k" * 129, "128")])
def test_a_key_that_is_not_one_is_400_saying_why(shop: FakeApp, key: str,
                                                  complaint: str) -> None:
    before = shop.snapshot()
    refused = shop.client.post("/v1/ns/items/a/decrements", json={"qty": 1},
                               headers={"Idempotency-Key": key})
    assert refused.status_code == 400, refused.get_json()
    assert body(refused)["field"] == "Idempotency-Key" and complaint in body(refused)["message"]
    assert shop.snapshot() == before


# JSON is UTF-8 (API.md): json.loads on bytes would guess UTF-16 or UTF-32 from the first bytes
# and apply what another reader (a proxy, an audit log) reads as junk.
WIDE = ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le")
NOT_UTF8 = [(path, sent.encode(encoding), headers, f"{what} {encoding}")
            for path, sent, headers, what in (
                ("/v1/ns/items/a/decrements", '{"qty": 1}', KEY, "decrement"),
                ("/v1/ns/items/a/adjustments", '{"delta": -1}', KEY, "adjust"),
                ("/v1/ns/reservations", '{"lines": [{"sku": "a", "qty": 1}]}',
                 {"Idempotency-Key": "c5"}, "reserve"),
                ("/v1/ns/sales/s/queue", '{"buyer": "ann"}', {}, "join"))
            for encoding in WIDE] + [
    ("/v1/ns/items/a/decrements", '{"qty": 1, "buyer": "é"}'.encode("latin-1"), KEY,
     "decrement latin-1")]


@pytest.mark.parametrize("path, sent, headers", [case[:3] for case in NOT_UTF8],
                         ids=[case[3] for case in NOT_UTF8])
def test_a_body_not_in_utf8_is_malformed_json_and_changes_nothing(
        shop: FakeApp, path: str, sent: bytes, headers: dict[str, str]) -> None:
    before = shop.snapshot()
    response = shop.client.post(path, data=sent, content_type="application/json",
                                headers=headers)
    assert response.status_code == 400, response.get_json()
    assert body(response)["error"] == "malformed_json"
    # Not UTF-8, or (UTF-16 and UTF-32 without a byte order mark are UTF-8 bytes: their NULs)
    # not JSON either.
    assert re.search("UTF-8|not valid JSON", body(response)["message"])
    assert not re.search(r"codec|decode|position|byte 0x", body(response)["message"])
    assert shop.snapshot() == before


def test_a_body_in_utf8_is_read_with_or_without_a_byte_order_mark(shop: FakeApp) -> None:
    for key, sent in (("u1", b'{"qty": 1}'), ("u2", b"\xef\xbb\xbf" + b'{"qty": 1}')):
        response = shop.client.post("/v1/ns/items/a/decrements", data=sent,
                                    content_type="application/json",
                                    headers={"Idempotency-Key": key})
        assert response.status_code == 200, response.get_json()
    assert body(shop.client.get("/v1/ns/items/a"))["consumed"] == 2
