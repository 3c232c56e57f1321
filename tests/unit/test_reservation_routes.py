"""Reservations through the HTTP routes, over the embedded counter with a clock the tests
move and the fake unit of work."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.apps import FakeApp, body


@pytest.fixture
def shop(fake_app: FakeApp) -> FakeApp:
    fake_app.now = 1_700_000_000_000
    for sku, total in (("a", 10), ("b", 2)):
        assert fake_app.client.put(f"/v1/ns/items/{sku}", json={"total": total}).status_code == 201
    return fake_app


def reserve(app: FakeApp, key: str = "k1", **payload: Any) -> Any:
    payload.setdefault("lines", [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}])
    return app.client.post("/v1/ns/reservations", json=payload,
                           headers={"Idempotency-Key": key})


def item(app: FakeApp, sku: str) -> tuple[int, int, int]:
    found = body(app.client.get(f"/v1/ns/items/{sku}"))
    return found["consumed"], found["held"], found["available"]


def test_a_cart_is_held_then_confirmed(shop: FakeApp) -> None:
    made = reserve(shop, lines=[{"sku": "a", "qty": 1}, {"sku": "b", "qty": 1},
                                {"sku": "a", "qty": 1}], buyer="ann", ttl_seconds=60)
    r = body(made)
    assert made.status_code == 201
    assert (r["state"], r["lines"], r["buyer"], r["namespace"]) == (
        "held", [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}], "ann", "ns")
    assert r["created_at"] == "2023-11-14T22:13:20+00:00"
    assert r["expires_at"] == "2023-11-14T22:14:20+00:00"
    assert (item(shop, "a"), item(shop, "b")) == ((0, 2, 8), (0, 1, 1))
    again = reserve(shop, lines=[{"sku": "a", "qty": 1}, {"sku": "b", "qty": 1},
                                 {"sku": "a", "qty": 1}], buyer="ann", ttl_seconds=60)
    assert (again.status_code, again.headers["Idempotent-Replayed"], body(again)) == (
        201, "true", r)
    assert reserve(shop).status_code == 422  # the same key, another request

    confirmed = shop.client.post(f"/v1/ns/reservations/{r['id']}/confirm")
    assert (confirmed.status_code, body(confirmed)["state"]) == (200, "confirmed")
    assert shop.client.post(f"/v1/ns/reservations/{r['id']}/confirm").status_code == 200
    released = shop.client.post(f"/v1/ns/reservations/{r['id']}/release")
    assert (released.status_code, body(released)["error"]) == (409, "reservation_confirmed")
    assert (item(shop, "a"), item(shop, "b")) == ((2, 0, 8), (1, 0, 1))
    shop.drain()
    ledger = body(shop.client.get("/v1/ns/items/a/ledger"))["entries"]
    assert [(e["kind"], e["qty"], e["reservation_id"], e["held_after"]) for e in ledger] == [
        ("init", 10, None, 0), ("hold", 2, r["id"], 2), ("confirm", 2, r["id"], 0)]
    assert [type(e).__name__ for e in shop.published if hasattr(e, "reservation_id")] == [
        "Reserved", "Reserved", "ReservationConfirmed", "ReservationConfirmed"]


def test_at_expiry_the_units_are_back_and_confirm_is_refused(shop: FakeApp) -> None:
    r = body(reserve(shop, ttl_seconds=30))
    shop.now += 30_000
    assert body(shop.client.get(f"/v1/ns/reservations/{r['id']}"))["state"] == "expired"
    sold = shop.client.post("/v1/ns/items/b/decrements", json={"qty": 2},
                            headers={"Idempotency-Key": "d"})
    assert sold.status_code == 200  # the sale ended the due hold itself
    refused = shop.client.post(f"/v1/ns/reservations/{r['id']}/confirm")
    assert (refused.status_code, body(refused)["error"]) == (409, "reservation_expired")
    released = shop.client.post(f"/v1/ns/reservations/{r['id']}/release")
    assert (released.status_code, body(released)["state"]) == (200, "expired")
    assert (item(shop, "a"), item(shop, "b")) == ((0, 0, 10), (2, 0, 0))


def test_release_and_extend(shop: FakeApp) -> None:
    r = body(reserve(shop, ttl_seconds=30))
    extended = shop.client.post(f"/v1/ns/reservations/{r['id']}/extend",
                                json={"ttl_seconds": 600})
    assert body(extended)["expires_at"] == "2023-11-14T22:23:20+00:00"
    shop.now += 60_000
    assert body(shop.client.post(f"/v1/ns/reservations/{r['id']}/release"))["state"] == (
        "released")
    refused = shop.client.post(f"/v1/ns/reservations/{r['id']}/confirm")
    assert body(refused)["error"] == "reservation_released"
    assert (item(shop, "a"), item(shop, "b")) == ((0, 0, 10), (0, 0, 2))


@pytest.mark.parametrize(("payload", "field"), [
    ({"lines": []}, "lines"),
    ({"lines": [{"sku": "a", "qty": 1}] * 101}, "lines"),
    ({"lines": [{"sku": "a", "qty": 0}]}, "lines.0.qty"),
    ({"lines": [{"sku": "a b", "qty": 1}]}, "lines.0.sku"),
    ({"lines": [{"sku": "a", "qty": 1}], "ttl_seconds": 0}, "ttl_seconds"),
    ({"lines": [{"sku": "a", "qty": 1}], "ttl_seconds": 86_401}, "ttl_seconds"),
    ({"lines": [{"sku": "a", "qty": 1}], "buyer": "a buyer"}, "buyer"),
])
def test_bad_input_is_400_naming_the_field_and_holds_nothing(shop: FakeApp,
                                                              payload: dict[str, Any],
                                                              field: str) -> None:
    r = reserve(shop, **payload)
    assert (r.status_code, body(r)["field"]) == (400, field)
    assert item(shop, "a") == (0, 0, 10)


def test_refusals_name_the_line(shop: FakeApp) -> None:
    short = reserve(shop, lines=[{"sku": "a", "qty": 1}, {"sku": "b", "qty": 3}])
    assert (short.status_code, body(short)["error"], body(short)["sku"],
            body(short)["available"]) == (409, "insufficient_stock", "b", 2)
    unknown = reserve(shop, "k2", lines=[{"sku": "a", "qty": 1}, {"sku": "zz", "qty": 1}])
    assert (unknown.status_code, body(unknown)["sku"]) == (404, "zz")
    keyless = shop.client.post("/v1/ns/reservations", json={"lines": [{"sku": "a", "qty": 1}]})
    assert (keyless.status_code, body(keyless)["error"]) == (400, "idempotency_key_required")
    assert shop.client.get("/v1/ns/reservations/nope").status_code == 404
    assert shop.client.get("/v1/ns/reservations/bad%20id").status_code in (400, 404)
    assert item(shop, "a") == (0, 0, 10)


def test_a_cart_of_items_the_counter_lost_rebuilds_each_of_them(shop: FakeApp) -> None:
    shop.drain()
    for sku in ("a", "b"):
        shop.counter.forget("ns", sku)  # as if Redis lost both
    made = reserve(shop)
    assert (made.status_code, body(made)["state"]) == (201, "held")
    assert (item(shop, "a"), item(shop, "b")) == ((0, 2, 8), (0, 1, 1))
