"""The waiting room over HTTP (entrypoints/sale_routes.py, the gate on decrements): the Flask
app over the fake record and the production scripts on the embedded Redis."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.helpers.apps import FakeApp, body

T0 = 1_900_000_000_000
NS = "shop"
SALE = f"/v1/{NS}/sales/drop"


def stocked_shop() -> FakeApp:
    """An app at T0 with the sale's two skus: a (2 units) and b (1)."""
    shop = FakeApp()
    shop.now = T0
    for sku, total in (("a", 2), ("b", 1)):
        assert shop.client.put(f"/v1/{NS}/items/{sku}", json={"total": total}).status_code == 201
    return shop


@pytest.fixture
def shop() -> FakeApp:
    return stocked_shop()


def put_sale(shop: FakeApp, **terms: Any) -> Any:
    return shop.client.put(SALE, json={"skus": ["a", "b"],
                                       "opens_at": "2030-01-01T00:00:00+00:00", **terms})


def fresh(shop: FakeApp) -> None:
    shop.application.bus.services.sales._figures.clear()  # a second later, at once


def decrement(shop: FakeApp, buyer: str, key: str, sale_pass: str | None = None) -> Any:
    headers = {"Idempotency-Key": key}
    if sale_pass is not None:
        headers["Sale-Pass"] = sale_pass
    return shop.client.post(f"/v1/{NS}/items/a/decrements", json={"qty": 1, "buyer": buyer},
                            headers=headers)


class TestSales:
    def test_put_get_close(self, shop: FakeApp) -> None:
        made = put_sale(shop, admit_factor=1.5, max_admitted=10)
        assert made.status_code == 201
        sale = body(made)
        assert {k: sale[k] for k in ("state", "skus", "admit_factor", "pass_ttl_seconds",
                                     "max_admitted", "waiting", "admitted", "available")} == {
            "state": "open", "skus": ["a", "b"], "admit_factor": 1.5, "pass_ttl_seconds": 300,
            "max_admitted": 10, "waiting": 0, "admitted": 0, "available": 3}
        assert put_sale(shop, admit_factor=1.5, max_admitted=10).status_code == 200
        assert body(shop.client.get(SALE))["sale"] == "drop"
        closed = shop.client.post(f"{SALE}/close")
        assert closed.status_code == 200 and body(closed)["state"] == "closed"

    def test_refusals(self, shop: FakeApp) -> None:
        unknown = shop.client.put(SALE, json={"skus": ["a", "zz"]})
        assert (unknown.status_code, body(unknown)["sku"]) == (404, "zz")
        assert put_sale(shop).status_code == 201
        assert put_sale(shop, admit_factor=3).status_code == 409
        gated = shop.client.put(f"/v1/{NS}/sales/other", json={"skus": ["b"]})
        assert (gated.status_code, body(gated)["error"], body(gated)["sku"]) == (
            409, "sku_gated", "b")
        assert shop.client.get(f"/v1/{NS}/sales/nope").status_code == 404

    @pytest.mark.parametrize(("field", "value"), [
        ("admit_factor", "2"), ("admit_factor", True), ("admit_factor", 0.5),
        ("admit_factor", 11), ("pass_ttl_seconds", 29), ("pass_ttl_seconds", 30.0),
        ("max_admitted", 0), ("opens_at", 1_900_000_000), ("opens_at", "2030-01-01T00:00:00"),
        ("opens_at", "9999-12-31T23:59:59-23:59"), ("opens_at", "0001-01-01T00:00:00+23:59"),
        ("opens_at", "1796684268"), ("opens_at", "1796684268.5"), ("opens_at", "2027-01-01"),
        ("opens_at", " 2027-01-01T00:00:00+00:00"), ("opens_at", "tomorrow"),
        ("skus", []), ("skus", ["a", "a"]), ("skus", ["bad name"]), ("extra", 1)])
    def test_bad_input_names_the_field_and_changes_nothing(self, shop: FakeApp, field: str,
                                                           value: Any) -> None:
        before = shop.snapshot()
        refused = shop.client.put(SALE, json={"skus": ["a"], field: value})
        assert refused.status_code == 400, refused.data
        assert body(refused)["field"].split(".")[0] == field
        assert shop.store.sales == {} and shop.snapshot() == before

    @pytest.mark.parametrize(("sent", "kept"), [
        ("9999-12-31T23:59:59+00:00", "9999-12-31T23:59:59+00:00"),
        ("9999-12-31T23:00:00-00:59", "9999-12-31T23:59:00+00:00"),
        ("0001-01-01T00:00:00-01:00", "0001-01-01T01:00:00+00:00"),
        ("2027-01-01T00:00:00Z", "2027-01-01T00:00:00+00:00"),
        ("2027-01-01T02:30:00.25+02:30", "2027-01-01T00:00:00.250000+00:00")])
    def test_a_time_at_the_ends_of_the_range_is_kept_in_utc(self, shop: FakeApp, sent: str,
                                                              kept: str) -> None:
        made = shop.client.put(SALE, json={"skus": ["a"], "opens_at": sent})
        assert made.status_code == 201, made.data
        assert body(made)["opens_at"] == kept


class TestQueue:
    def test_join_poll_and_buy_with_the_pass(self, shop: FakeApp) -> None:
        put_sale(shop, opens_at="2030-01-01T00:00:00+00:00", admit_factor=1)
        joined = shop.client.post(f"{SALE}/queue", json={"buyer": "ann"})
        assert joined.status_code == 201
        ticket = body(joined)["ticket"]
        assert len(ticket) <= 512
        again = shop.client.post(f"{SALE}/queue", json={"buyer": "ann"})
        assert (again.status_code, body(again)["ticket"]) == (200, ticket)
        fresh(shop)
        polled = body(shop.client.get(f"{SALE}/queue/{ticket}"))
        assert polled["state"] == "admitted" and polled["pass"]
        refused = decrement(shop, "ann", "k1")
        assert (refused.status_code, body(refused)["error"]) == (403, "pass_required")
        forged = decrement(shop, "ann", "k2", polled["pass"][:-3] + "abc")
        assert (forged.status_code, body(forged)["error"]) == (403, "pass_invalid")
        other = decrement(shop, "bob", "k3", polled["pass"])
        assert (other.status_code, body(other)["error"]) == (403, "pass_invalid")
        assert body(shop.client.get(f"/v1/{NS}/items/a"))["consumed"] == 0
        sold = decrement(shop, "ann", "k4", polled["pass"])
        assert sold.status_code == 200 and body(sold)["consumed"] == 1
        assert decrement(shop, "ann", "k5", polled["pass"]).status_code == 403
        fresh(shop)
        assert body(shop.client.get(f"{SALE}/queue/{ticket}"))["state"] == "used"

    def test_a_ticket_not_of_the_sale_is_404(self, shop: FakeApp) -> None:
        put_sale(shop)
        for ticket in ("x", "a.b", "." * 600):
            assert shop.client.get(f"{SALE}/queue/{ticket}").status_code == 404
        assert shop.client.get(f"/v1/{NS}/sales/nope/queue/x").status_code == 404

    def test_the_stream_sends_the_ticket(self, shop: FakeApp) -> None:
        put_sale(shop)
        ticket = body(shop.client.post(f"{SALE}/queue", json={"buyer": "ann"}))["ticket"]
        streamed = shop.client.get(f"{SALE}/queue/{ticket}/stream")
        assert streamed.content_type.startswith("text/event-stream")
        assert b"event: ticket\ndata: {" in streamed.data and ticket.encode() in streamed.data

    def test_a_reconnect_with_the_last_event_id_gets_no_repeat(self, shop: FakeApp) -> None:
        put_sale(shop)
        ticket = body(shop.client.post(f"{SALE}/queue", json={"buyer": "ann"}))["ticket"]
        url = f"{SALE}/queue/{ticket}/stream"
        first = shop.client.get(url).data
        seen = re.search(rb"^id: (\S+)$", first, re.MULTILINE)
        assert seen is not None and b"retry: 1000" in first
        again = shop.client.get(url, headers={"Last-Event-ID": seen.group(1).decode()})
        assert (again.status_code, again.data) == (200, b"retry: 1000\n\n")
        other = shop.client.get(url, headers={"Last-Event-ID": "stale"})
        assert other.data == first

    def test_a_closed_sale_refuses_joins(self, shop: FakeApp) -> None:
        put_sale(shop)
        shop.client.post(f"{SALE}/close")
        refused = shop.client.post(f"{SALE}/queue", json={"buyer": "ann"})
        assert (refused.status_code, body(refused)["error"]) == (409, "sale_closed")


class TestGatedReservations:
    def reserve(self, shop: FakeApp, key: str, qty: int, sale_pass: str | None = None,
                buyer: str = "ann") -> Any:
        headers = {"Idempotency-Key": key}
        if sale_pass is not None:
            headers["Sale-Pass"] = sale_pass
        return shop.client.post(f"/v1/{NS}/reservations", headers=headers, json={
            "lines": [{"sku": "b", "qty": qty}], "buyer": buyer})

    def admitted(self, shop: FakeApp, buyer: str) -> str:
        ticket = body(shop.client.post(f"{SALE}/queue", json={"buyer": buyer}))["ticket"]
        fresh(shop)
        sale_pass: str = body(shop.client.get(f"{SALE}/queue/{ticket}"))["pass"]
        return sale_pass

    def test_a_hold_needs_the_pass_and_keeps_it(self, shop: FakeApp) -> None:
        put_sale(shop)
        sale_pass = self.admitted(shop, "ann")
        refused = self.reserve(shop, "r0", 1)
        assert (refused.status_code, body(refused)["error"]) == (403, "pass_required")
        assert body(refused)["sku"] == "b"  # the gated line, as other refusals name theirs
        assert self.reserve(shop, "r1", 2, sale_pass).status_code == 409  # only 1 of b
        held = self.reserve(shop, "r2", 1, sale_pass)  # the refusal gave the pass back
        assert held.status_code == 201, held.data
        again = self.reserve(shop, "r3", 1, sale_pass)
        assert (again.status_code, body(again)["error"], body(again)["sku"]) == (
            403, "pass_invalid", "b")
        assert body(shop.client.get(f"/v1/{NS}/items/b"))["held"] == 1


def test_metrics_show_each_open_sales_queue(shop: FakeApp) -> None:
    put_sale(shop, admit_factor=1)
    for buyer in ("ann", "bob", "cat", "dan"):
        shop.client.post(f"{SALE}/queue", json={"buyer": buyer})
    fresh(shop)
    text = shop.client.get("/metrics").data.decode()
    labels = f'{{namespace="{NS}",sale="drop"}}'
    assert f"allocation_sale_admitted{labels} 3" in text
    assert f"allocation_sale_waiting{labels} 1" in text
    assert f"allocation_sale_available{labels} 3" in text


def test_a_namespaces_stats_list_its_open_sales(shop: FakeApp) -> None:
    put_sale(shop, admit_factor=1)
    for buyer in ("ann", "bob", "cat", "dan"):
        shop.client.post(f"{SALE}/queue", json={"buyer": buyer})
    fresh(shop)
    sales = body(shop.client.get(f"/v1/{NS}/stats"))["sales"]
    assert sales == [{"sale": "drop", "waiting": 1, "admitted": 3, "passes_used": 0,
                      "passes_expired": 0, "available": 3, "served": 3, "sold_out": 0}]
    shop.client.post(f"{SALE}/close")
    assert body(shop.client.get(f"/v1/{NS}/stats"))["sales"] == []
