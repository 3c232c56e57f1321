"""Bodies read strictly over a real server (granian, PostgreSQL, Redis): the operations that
take no body refuse one and are done without it; a sale's opens_at is ISO 8601 text that must
fit in UTC; a null buyer is refused; an Idempotency-Key may hold a space. Each refusal changes
nothing."""

from __future__ import annotations

from typing import Any

import pytest
import requests

JSON = {"Content-Type": "application/json"}


def item(api: str, namespace: str, sku: str) -> dict[str, Any]:
    found: dict[str, Any] = requests.get(f"{api}/v1/{namespace}/items/{sku}", timeout=10).json()
    return found


@pytest.fixture
def shop(api: str, namespace: str) -> dict[str, str]:
    """An item, a reservation held on it and a scheduled sale of another item."""
    base = f"{api}/v1/{namespace}"
    assert requests.put(f"{base}/items/a", json={"total": 5}, timeout=10).status_code == 201
    assert requests.put(f"{base}/items/g", json={"total": 1}, timeout=10).status_code == 201
    held = requests.post(f"{base}/reservations", json={"lines": [{"sku": "a", "qty": 1}]},
                         headers={"Idempotency-Key": "cart"}, timeout=10)
    assert held.status_code == 201, held.text
    other = requests.post(f"{base}/reservations", json={"lines": [{"sku": "a", "qty": 1}]},
                          headers={"Idempotency-Key": "cart-2"}, timeout=10)
    assert other.status_code == 201, other.text
    sale = requests.put(f"{base}/sales/s", json={"skus": ["g"],
                                                 "opens_at": "2030-01-01T00:00:00+00:00"},
                        timeout=10)
    assert sale.status_code == 201, sale.text
    return {"base": base, "rid": held.json()["id"], "rid2": other.json()["id"]}


def states(shop: dict[str, str]) -> tuple[object, ...]:
    base = shop["base"]
    held = [requests.get(f"{base}/reservations/{shop[r]}", timeout=10).json()["state"]
            for r in ("rid", "rid2")]
    sale = requests.get(f"{base}/sales/s", timeout=10).json()
    figures = requests.get(f"{base}/items/a", timeout=10).json()
    return *held, sale["state"], figures


NO_BODY = ["reservations/{rid}/release", "reservations/{rid2}/confirm", "sales/s/close",
           "items/a/refresh", "refresh"]
DONE = {"release": "released", "confirm": "confirmed", "close": "closed"}


def test_an_operation_that_takes_no_body_refuses_one_and_changes_nothing(
        shop: dict[str, str]) -> None:
    before = states(shop)
    for path in NO_BODY:
        url = f"{shop['base']}/{path.format(**shop)}"
        for sent, headers, status, field in [
                (b'{"bogus": 1}', JSON, 400, "bogus"),
                (b'{"a": 1, "a": 2}', JSON, 400, "a"),
                (b"[]", JSON, 400, "body"),
                (b"not json", JSON, 400, None),
                (b"not json", {"Content-Type": "text/plain"}, 415, None)]:
            refused = requests.post(url, data=sent, headers=headers, timeout=10)
            assert refused.status_code == status, (path, sent, refused.text)
            assert refused.json().get("field") == field, (path, sent, refused.text)
    assert states(shop) == before


@pytest.mark.parametrize("sent, headers", [(None, {}), (b"", JSON), (b"{}", JSON)],
                         ids=["none", "empty", "{}"])
def test_an_operation_that_takes_no_body_is_done_without_one(
        shop: dict[str, str], sent: bytes | None, headers: dict[str, str]) -> None:
    for path in NO_BODY:
        url = f"{shop['base']}/{path.format(**shop)}"
        done = requests.post(url, data=sent, headers=headers, timeout=30)
        assert done.status_code == 200, (path, done.text)
        step = path.rsplit("/", 1)[-1]
        if step in DONE:
            assert done.json()["state"] == DONE[step], (path, done.text)
    # (A sale read from another worker may show its state of up to a second before.)
    assert states(shop)[:2] == ("released", "confirmed")


@pytest.mark.parametrize("opens_at", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59",
                                      "1796684268", "2027-01-01"])
def test_an_opens_at_that_is_no_time_in_utc_is_400_and_makes_no_sale(
        api: str, namespace: str, opens_at: str) -> None:
    base = f"{api}/v1/{namespace}"
    requests.put(f"{base}/items/g", json={"total": 1}, timeout=10)
    refused = requests.put(f"{base}/sales/x", json={"skus": ["g"], "opens_at": opens_at},
                           timeout=10)
    assert refused.status_code == 400, refused.text
    assert refused.json()["field"] == "opens_at"
    assert requests.get(f"{base}/sales/x", timeout=10).status_code == 404


def test_an_opens_at_at_the_end_of_the_range_is_kept(api: str, namespace: str) -> None:
    base = f"{api}/v1/{namespace}"
    requests.put(f"{base}/items/g", json={"total": 1}, timeout=10)
    made = requests.put(f"{base}/sales/x", json={"skus": ["g"],
                                                 "opens_at": "9999-12-31T23:00:00-00:59"},
                        timeout=10)
    assert made.status_code == 201, made.text
    assert made.json()["opens_at"] == "9999-12-31T23:59:00+00:00"
    again = requests.get(f"{base}/sales/x", timeout=10).json()
    assert (again["opens_at"], again["state"]) == ("9999-12-31T23:59:00+00:00", "scheduled")


def test_a_null_buyer_is_refused_and_a_key_may_hold_a_space(api: str, namespace: str) -> None:
    base = f"{api}/v1/{namespace}"
    requests.put(f"{base}/items/a", json={"total": 5}, timeout=10)
    refused = requests.post(f"{base}/items/a/decrements", json={"qty": 1, "buyer": None},
                            headers={"Idempotency-Key": "null"}, timeout=10)
    assert (refused.status_code, refused.json()["field"]) == (400, "buyer")
    assert item(api, namespace, "a")["consumed"] == 0
    spaced = {"Idempotency-Key": "order 17 / line 2"}
    sold = requests.post(f"{base}/items/a/decrements", json={"qty": 1}, headers=spaced,
                         timeout=10)
    assert sold.status_code == 200, sold.text
    again = requests.post(f"{base}/items/a/decrements", json={"qty": 1}, headers=spaced,
                          timeout=10)
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (200, "true")
    held = requests.post(f"{base}/reservations", json={"lines": [{"sku": "a", "qty": 1}]},
                         headers={"Idempotency-Key": "cart 9"}, timeout=10)
    assert held.status_code == 201, held.text
    assert item(api, namespace, "a")["consumed"] == 1
