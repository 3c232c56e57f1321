from __future__ import annotations

import pytest

from tests.helpers.apps import FakeApp, body


def test_a_sale_through_the_routes(fake_app: FakeApp) -> None:
    c = fake_app.client
    assert c.put("/v1/ns/items/a", json={"total": 3}).status_code == 201
    sold = c.post("/v1/ns/items/a/decrements", json={"qty": 3}, headers={"Idempotency-Key": "1"})
    assert sold.json == {"namespace": "ns", "sku": "a", "total": 3, "consumed": 3, "held": 0,
                         "available": 0, "limit_per_buyer": None}
    fake_app.drain()
    assert fake_app.store.items[("ns", "a")].consumed == 3
    assert [type(e).__name__ for e in fake_app.published][-2:] == ["Decremented", "SoldOut"]
    refused = c.post("/v1/ns/items/a/decrements", json={"qty": 1},
                     headers={"Idempotency-Key": "2"})
    assert (refused.status_code, body(refused)["available"]) == (409, 0)


def test_replay_returns_the_first_response(fake_app: FakeApp) -> None:
    c = fake_app.client
    c.put("/v1/ns/items/a", json={"total": 3})
    first = c.post("/v1/ns/items/a/refunds", json={"qty": 1}, headers={"Idempotency-Key": "r"})
    again = c.post("/v1/ns/items/a/refunds", json={"qty": 1}, headers={"Idempotency-Key": "r"})
    assert (first.status_code, again.status_code) == (409, 409)
    assert first.data == again.data and again.headers["Idempotent-Replayed"] == "true"


def test_an_unreachable_dependency_is_503_with_retry_after(
        fake_app: FakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    from allocation.domain import errors

    def down(*_: object, **__: object) -> None:
        raise errors.Unavailable("redis unavailable: connection refused", retry_after=2)

    fake_app.client.put("/v1/ns/items/a", json={"total": 3})
    monkeypatch.setattr(fake_app.counter, "apply", down)
    monkeypatch.setattr(fake_app.counter, "ping", down)
    r = fake_app.client.post("/v1/ns/items/a/decrements", json={"qty": 1},
                             headers={"Idempotency-Key": "k"})
    assert (r.status_code, r.headers["Retry-After"], body(r)["error"]) == (503, "2",
                                                                         "unavailable")
    ready = fake_app.client.get("/readyz")
    assert ready.status_code == 503 and body(ready)["redis"] == "unavailable"
    assert fake_app.store.items[("ns", "a")].consumed == 0


def test_unknown_routes_and_methods_answer_json(fake_app: FakeApp) -> None:
    assert body(fake_app.client.get("/nowhere"))["error"] == "not_found"
    r = fake_app.client.delete("/v1/ns/items/a")
    assert (r.status_code, body(r)["error"]) == (405, "method_not_allowed")


def test_readyz_names_a_lagging_ledger_and_metrics_show_the_lag() -> None:
    from allocation.config import Config
    from tests.helpers.apps import FakeApp

    lagging = FakeApp(Config(ledger_lag_threshold_seconds=-1))
    lagging.client.put("/v1/ns/items/a", json={"total": 3})
    lagging.client.post("/v1/ns/items/a/decrements", json={"qty": 1},
                        headers={"Idempotency-Key": "k"})
    ready = lagging.client.get("/readyz")
    assert ready.status_code == 200 and body(ready)["ledger"].startswith("degraded: 1 ")
    assert "allocation_ledger_lag_entries 1" in lagging.client.get("/metrics").text
    lagging.drain()
    assert body(lagging.client.get("/readyz")) == {"database": "ok", "redis": "ok"}


def test_json_nested_too_deeply_is_a_400(fake_app: FakeApp) -> None:
    fake_app.client.put("/v1/ns/items/a", json={"total": 3})
    r = fake_app.client.post("/v1/ns/items/a/decrements", data="[" * 50_000, headers={
        "Content-Type": "application/json", "Idempotency-Key": "k"})
    assert (r.status_code, body(r)["error"]) == (400, "malformed_json")


def test_a_made_up_method_is_counted_as_other(fake_app: FakeApp) -> None:
    from prometheus_client import REGISTRY

    def count(method: str) -> float:
        return REGISTRY.get_sample_value("allocation_http_requests_total", {
            "method": method, "route": "unmatched", "status": "405"}) or 0.0

    before = count("other")
    assert fake_app.client.open("/v1/ns/items/a", method="BREW").status_code == 405
    assert (count("other") - before, count("BREW")) == (1, 0)


def test_an_idempotency_key_with_a_comma_is_refused(fake_app: FakeApp) -> None:
    # A server joins two headers of one name with a comma: such a key could be two.
    fake_app.client.put("/v1/ns/items/a", json={"total": 3})
    r = fake_app.client.post("/v1/ns/items/a/decrements", json={"qty": 1},
                             headers={"Idempotency-Key": "a,b"})
    assert (r.status_code, body(r)["error"], body(r)["field"]) == (
        400, "invalid_field", "Idempotency-Key")
    live = fake_app.counter.read("ns", "a")
    assert live is not None and live.consumed == 0


def test_a_body_that_repeats_a_key_is_malformed(fake_app: FakeApp) -> None:
    fake_app.client.put("/v1/ns/items/a", json={"total": 3})
    r = fake_app.client.post("/v1/ns/items/a/decrements", data='{"qty": 1, "qty": 2}', headers={
        "Content-Type": "application/json", "Idempotency-Key": "k"})
    assert (r.status_code, body(r)["error"], body(r)["field"]) == (400, "malformed_json", "qty")


def test_a_body_shorter_than_its_content_length_is_incomplete(fake_app: FakeApp) -> None:
    # The lane reads what arrived (a client that went mid-body) and refuses it.
    fake_app.client.put("/v1/ns/items/a", json={"total": 3})
    r = fake_app.client.post("/v1/ns/items/a/decrements", data='{"qty": 1}', headers={
        "Content-Type": "application/json", "Idempotency-Key": "k"},
        environ_overrides={"CONTENT_LENGTH": "20"})
    assert (r.status_code, body(r)["error"]) == (400, "incomplete_body")
    live = fake_app.counter.read("ns", "a")
    assert live is not None and live.consumed == 0


@pytest.mark.parametrize(("method", "path", "sent"), [
    ("PUT", "/v1/ns/items/a", '{"total": 9}'),
    ("PATCH", "/v1/ns/items/a", '{"limit_per_buyer": 1}'),
    ("POST", "/v1/ns/reservations", '{"lines": [{"sku": "a", "qty": 1}]}'),
    ("PUT", "/v1/ns/sales/s", '{"skus": ["a"]}'),
    ("POST", "/v1/ns/sales/s/close", "{}"),
    ("POST", "/v1/ns/items/a/refresh", "{}"),
])
def test_every_body_shorter_than_its_content_length_is_incomplete(
        fake_app: FakeApp, method: str, path: str, sent: str) -> None:
    """As a movement's (Flask's routes, as a plain WSGI server runs them)."""
    fake_app.client.put("/v1/ns/items/a", json={"total": 3})
    r = fake_app.client.open(path, method=method, data=sent, headers={
        "Content-Type": "application/json", "Idempotency-Key": "k"},
        environ_overrides={"CONTENT_LENGTH": str(len(sent) + 10)})
    assert (r.status_code, body(r)["error"]) == (400, "incomplete_body")
    live = fake_app.counter.read("ns", "a")
    assert live is not None and (live.total, live.held, live.limit) == (3, 0, None)


def test_after_seq_is_bounded_to_a_bigint(fake_app: FakeApp) -> None:
    fake_app.client.put("/v1/ns/items/a", json={"total": 3})
    ok = fake_app.client.get("/v1/ns/items/a/ledger", query_string={"after_seq": 2**63 - 1})
    assert ok.status_code == 200 and body(ok)["entries"] == []
    r = fake_app.client.get("/v1/ns/items/a/ledger", query_string={"after_seq": 2**63})
    assert (r.status_code, body(r)["field"]) == (400, "after_seq")
    # Digits past any bound are said to be too large, not to be something other than digits.
    huge = fake_app.client.get("/v1/ns/items/a/ledger", query_string={"after_seq": "9" * 23})
    assert (huge.status_code, body(huge)["field"]) == (400, "after_seq")
    assert "too large" in body(huge)["message"] and "digits" not in body(huge)["message"]


def test_a_limit_per_buyer_through_the_routes(fake_app: FakeApp) -> None:
    c = fake_app.client
    made = c.put("/v1/ns/items/l", json={"total": 10, "limit_per_buyer": 2})
    assert (made.status_code, body(made)["limit_per_buyer"]) == (201, 2)
    assert c.put("/v1/ns/items/l", json={"total": 10}).status_code == 409  # another limit
    assert c.put("/v1/ns/items/l", json={"total": 10, "limit_per_buyer": 2}).status_code == 200

    def buy(qty: int, key: str, **extra: object) -> tuple[int, dict[str, object]]:
        r = c.post("/v1/ns/items/l/decrements", json={"qty": qty, **extra},
                   headers={"Idempotency-Key": key})
        return r.status_code, body(r)

    assert buy(1, "n")[0] == 400 and buy(1, "n")[1]["field"] == "buyer"
    assert buy(1, "n")[1]["error"] == "buyer_required"
    assert buy(2, "a1", buyer="ann@x")[0] == 200
    status, refused = buy(1, "a2", buyer="ann@x")
    assert (status, refused["error"], refused["remaining"]) == (409, "limit_exceeded", 0)
    assert buy(1, "b", buyer="bad buyer!")[1]["field"] == "buyer"
    lifted = c.patch("/v1/ns/items/l", json={"limit_per_buyer": None})
    assert (lifted.status_code, body(lifted)["limit_per_buyer"]) == (200, None)
    assert buy(1, "a3", buyer="ann@x")[0] == 200
    assert c.patch("/v1/ns/items/l", json={}).status_code == 400  # the field is required
    assert c.patch("/v1/ns/items/zz", json={"limit_per_buyer": 1}).status_code == 404
    assert body(c.get("/v1/ns/items/l")) == {
        "namespace": "ns", "sku": "l", "total": 10, "consumed": 3, "held": 0, "available": 7,
        "limit_per_buyer": None}
