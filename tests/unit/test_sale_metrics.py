"""The sale's Prometheus metrics as /metrics shows them, after requests through the routes.
The registry is the process's own and outlives a test: each test sells in a namespace of its
own and reads only that namespace's samples."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import fakeredis
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from allocation.entrypoints import metrics
from allocation.entrypoints.stock_stream import Hub, Stream
from tests.helpers.apps import FakeApp, body
from tests.helpers.embedded import embedded_counter

_names = itertools.count()


def shop(app: FakeApp, limit: int | None = None) -> str:
    """A new namespace with items a (10) and b (2); its name."""
    ns = f"sale{next(_names)}"
    app.now = 1_700_000_000_000
    for sku, total in (("a", 10), ("b", 2)):
        assert app.client.put(f"/v1/{ns}/items/{sku}", json={
            "total": total, "limit_per_buyer": limit}).status_code == 201
    return ns


def scrape(app: FakeApp, namespace: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The namespace's samples: (name, other labels) -> value."""
    text = app.client.get("/metrics").text
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            if labels.pop("namespace", None) == namespace and not sample.name.endswith(
                    "_created"):
                found[sample.name, tuple(sorted(labels.items()))] = sample.value
    return found


def sale(app: FakeApp, namespace: str) -> dict[str, Any]:
    """The namespace's figures in a form a test compares at a glance."""
    samples = scrape(app, namespace)
    out: dict[str, Any] = {}
    for (name, labels), value in samples.items():
        short = name.removeprefix("allocation_").removesuffix("_total")
        key = f"{short}{{{','.join(v for _, v in labels)}}}" if labels else short
        out[key] = value
    return out


def decrement(app: FakeApp, ns: str, sku: str, qty: int, key: str,
              buyer: str | None = None) -> Any:
    payload: dict[str, Any] = {"qty": qty} if buyer is None else {"qty": qty, "buyer": buyer}
    return app.client.post(f"/v1/{ns}/items/{sku}/decrements", json=payload,
                           headers={"Idempotency-Key": key})


def reserve(app: FakeApp, ns: str, key: str, ttl: int = 60, **payload: Any) -> Any:
    payload.setdefault("lines", [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}])
    return app.client.post(f"/v1/{ns}/reservations", json={**payload, "ttl_seconds": ttl},
                           headers={"Idempotency-Key": key})


def step(app: FakeApp, ns: str, rid: str, name: str) -> Any:
    return app.client.post(f"/v1/{ns}/reservations/{rid}/{name}")


def test_decrements_sell_their_qty_once_and_refusals_count_their_reason(
        fake_app: FakeApp) -> None:
    ns = shop(fake_app)
    assert decrement(fake_app, ns, "a", 3, "d1").status_code == 200
    assert decrement(fake_app, ns, "a", 3, "d1").headers["Idempotent-Replayed"] == "true"
    assert decrement(fake_app, ns, "b", 3, "d2").status_code == 409  # insufficient_stock
    assert decrement(fake_app, ns, "b", 3, "d2").status_code == 409  # its replay
    assert decrement(fake_app, ns, "b", 1, "d2").status_code == 422  # the key reused
    assert fake_app.client.post(f"/v1/{ns}/items/a/refunds", json={"qty": 1},
                                headers={"Idempotency-Key": "r1"}).status_code == 200
    assert decrement(fake_app, ns, "zz", 1, "d3").status_code == 404
    assert fake_app.client.post(f"/v1/{ns}/items/a/adjustments",
                                json={"delta": 5}).status_code == 200
    assert sale(fake_app, ns) == {
        "sale_units_sold": 3, "sale_units_refunded": 1,
        "sale_refusals{insufficient_stock}": 1, "sale_refusals{idempotency_key_reused}": 1,
        "sale_refusals{not_found}": 1}


def test_a_limit_per_buyer_refuses_by_its_reasons(fake_app: FakeApp) -> None:
    ns = shop(fake_app, limit=2)
    assert decrement(fake_app, ns, "a", 1, "d1").status_code == 400  # buyer_required
    assert decrement(fake_app, ns, "a", 2, "d2", buyer="ann").status_code == 200
    assert decrement(fake_app, ns, "a", 1, "d3", buyer="ann").status_code == 409
    assert reserve(fake_app, ns, "k1", buyer="ann").status_code == 409  # limit_exceeded
    assert reserve(fake_app, ns, "k2").status_code == 400  # buyer_required
    assert sale(fake_app, ns) == {
        "sale_units_sold": 2, "sale_refusals{buyer_required}": 2,
        "sale_refusals{limit_exceeded}": 2}


def test_holds_count_once_and_a_confirm_sells_the_reservations_units(
        fake_app: FakeApp) -> None:
    ns = shop(fake_app)
    made = reserve(fake_app, ns, "k1")
    assert made.status_code == 201
    assert reserve(fake_app, ns, "k1").headers["Idempotent-Replayed"] == "true"
    rid = body(made)["id"]
    assert step(fake_app, ns, rid, "extend").status_code == 415  # no body: counts nothing
    assert fake_app.client.post(f"/v1/{ns}/reservations/{rid}/extend",
                                json={"ttl_seconds": 600}).status_code == 200
    assert sale(fake_app, ns) == {"sale_units_held": 3}
    assert body(step(fake_app, ns, rid, "confirm"))["state"] == "confirmed"
    assert step(fake_app, ns, rid, "confirm").status_code == 200  # a replay
    released = step(fake_app, ns, rid, "release")
    assert body(released)["error"] == "reservation_confirmed"
    assert reserve(fake_app, ns, "k2", lines=[{"sku": "b", "qty": 5}]).status_code == 409
    assert sale(fake_app, ns) == {
        "sale_units_held": 3, "sale_units_sold": 3, "sale_holds_ended{confirmed}": 2,
        "sale_refusals{reservation_confirmed}": 1, "sale_refusals{insufficient_stock}": 1}


def test_a_release_puts_its_units_back(fake_app: FakeApp) -> None:
    ns = shop(fake_app)
    rid = body(reserve(fake_app, ns, "k1"))["id"]
    assert body(step(fake_app, ns, rid, "release"))["state"] == "released"
    assert step(fake_app, ns, rid, "release").status_code == 200  # a replay
    assert sale(fake_app, ns) == {
        "sale_units_held": 3, "sale_units_released": 3, "sale_holds_ended{released}": 2}


def test_expiries_a_request_runs_into_are_counted_once(fake_app: FakeApp) -> None:
    ns = shop(fake_app)
    by_confirm = body(reserve(fake_app, ns, "k1", ttl=30))["id"]
    by_release = body(reserve(fake_app, ns, "k2", ttl=30,
                              lines=[{"sku": "a", "qty": 4}]))["id"]
    fake_app.now += 30_000
    refused = step(fake_app, ns, by_confirm, "confirm")
    assert (refused.status_code, body(refused)["error"]) == (409, "reservation_expired")
    released = step(fake_app, ns, by_release, "release")
    assert (released.status_code, body(released)["state"]) == (200, "expired")
    assert body(step(fake_app, ns, by_release, "release"))["state"] == "expired"  # a replay
    assert sale(fake_app, ns) == {
        "sale_units_held": 7, "sale_units_expired": 7, "sale_holds_ended{expired}": 3,
        "sale_refusals{reservation_expired}": 1}


def test_expiries_nobody_asks_about_are_counted_by_the_step_that_ends_them(
        fake_app: FakeApp) -> None:
    ns = shop(fake_app)
    reserve(fake_app, ns, "k1", ttl=30, lines=[{"sku": "a", "qty": 4}])
    reserve(fake_app, ns, "k2", ttl=30, lines=[{"sku": "b", "qty": 2}])
    fake_app.now += 30_000
    assert sale(fake_app, ns)["sale_units_held"] == 6
    assert "sale_units_expired" not in sale(fake_app, ns)  # due, not yet ended by anyone
    assert decrement(fake_app, ns, "a", 1, "d1").status_code == 200  # ends a's hold first
    assert sale(fake_app, ns)["sale_units_expired"] == 4
    # The sweeper ends b's (it may also visit a where a reservation's partition listed it).
    assert fake_app.counter.sweep() >= 1
    assert sale(fake_app, ns) == {
        "sale_units_held": 6, "sale_units_sold": 1, "sale_units_expired": 6,
        "sale_holds_ended{expired}": 2}


def test_stream_clients_are_a_gauge_of_watched_streams() -> None:
    async def run() -> None:
        hub = Hub(fakeredis.FakeRedis(), embedded_counter(), "events",
                  asyncio.get_running_loop(), per_token=10, per_process=10)

        def clients() -> float:
            return REGISTRY.get_sample_value("allocation_stream_clients",
                                             {"namespace": "streamed"}) or 0.0

        before = clients()
        first, second = hub.open(("streamed", "a"), None), hub.open(("streamed", "b"), "g")
        assert isinstance(first, Stream) and isinstance(second, Stream)
        hub.watch(first)
        hub.watch(second)
        assert clients() == before + 2
        hub.close(first)
        hub.close(second)
        hub.close(second)  # once counted out, a second close changes nothing
        assert clients() == before and hub.watched == {} and not hub.streams

    asyncio.run(run())


def test_stream_clients_show_in_metrics(fake_app: FakeApp) -> None:
    metrics.stream_clients("watching", 1)
    try:
        assert sale(fake_app, "watching") == {"stream_clients": 1}
    finally:
        metrics.stream_clients("watching", -1)


def test_metrics_answer_while_the_hold_tally_cannot_be_read(fake_app: FakeApp,
                                                           monkeypatch: Any) -> None:
    import redis

    def failing() -> dict[tuple[str, str], int]:
        raise redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down")

    monkeypatch.setattr(fake_app.counter, "hold_tally", failing)
    answer = fake_app.client.get("/metrics")
    assert answer.status_code == 200
    assert "allocation_sale_units_held_total" not in answer.text


def test_a_namespaces_stats_are_its_own_metrics(fake_app: FakeApp) -> None:
    """GET /v1/{ns}/stats: the figures /metrics has of that namespace, none of another's."""
    ns, other = shop(fake_app), shop(fake_app)
    assert decrement(fake_app, ns, "a", 3, "d1").status_code == 200
    assert decrement(fake_app, ns, "b", 3, "d2").status_code == 409
    assert decrement(fake_app, other, "a", 7, "d1").status_code == 200
    held = reserve(fake_app, ns, "k1")
    assert step(fake_app, ns, held.json["id"], "release").status_code == 200
    stats = fake_app.client.get(f"/v1/{ns}/stats")
    assert stats.status_code == 200 and stats.json is not None
    assert stats.json == {
        "namespace": ns,
        "units": {"sold": 3, "refunded": 0, "held": 3, "released": 3, "expired": 0},
        "holds_ended": {"confirmed": 0, "released": 2, "expired": 0},
        "refusals": {"insufficient_stock": 1}, "stream_clients": 0,
        "drift_items": stats.json["drift_items"], "sales": []}  # no open sale (waiting room)
    shown = sale(fake_app, ns)
    assert shown["sale_units_sold"] == stats.json["units"]["sold"]
    assert fake_app.client.get("/v1/bad%20ns/stats").status_code == 400
