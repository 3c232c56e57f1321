"""Reservations over real HTTP against `allocation serve`, PostgreSQL and Redis: races between
confirm, release and expiry; carts under contention; expiry with only the API running."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import text
from sqlalchemy.engine import Engine

from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.token_store import TokenStore
from allocation.config import Config
from tests.helpers.processes import Process, serve, wait_until


class Shop:
    def __init__(self, api: str, namespace: str) -> None:
        self.base = f"{api}/v1/{namespace}"
        self.http = requests.Session()

    def put(self, sku: str, total: int) -> None:
        assert self.http.put(f"{self.base}/items/{sku}", json={"total": total},
                             timeout=10).status_code == 201

    def item(self, sku: str) -> dict[str, Any]:
        found: dict[str, Any] = self.http.get(f"{self.base}/items/{sku}", timeout=10).json()
        return found

    def reserve(self, key: str, lines: list[tuple[str, int]], ttl: int = 600,
                **extra: Any) -> requests.Response:
        return self.http.post(f"{self.base}/reservations", timeout=10, headers={
            "Idempotency-Key": key}, json={"lines": [{"sku": s, "qty": q} for s, q in lines],
                                           "ttl_seconds": ttl, **extra})

    def step(self, rid: str, step: str) -> requests.Response:
        return self.http.post(f"{self.base}/reservations/{rid}/{step}", timeout=10)


def ledger_kinds(engine: Engine, namespace: str) -> dict[tuple[str, str], list[str]]:
    """Each (reservation, sku)'s ledger kinds, in seq order."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT reservation_id, sku, kind FROM inventory_ledger WHERE namespace = :ns AND "
            "reservation_id IS NOT NULL ORDER BY sku, seq"), {"ns": namespace})
        found: dict[tuple[str, str], list[str]] = {}
        for rid, sku, kind in rows:
            found.setdefault((rid, sku), []).append(kind)
        return found


def stored(engine: Engine, namespace: str) -> dict[str, tuple[int, int, int]]:
    with engine.connect() as conn:
        return {sku: (total, consumed, held) for sku, total, consumed, held in conn.execute(text(
            "SELECT sku, total, consumed, held FROM inventory_items WHERE namespace = :ns"),
            {"ns": namespace})}


def test_confirm_release_and_expiry_race_and_exactly_one_wins(api: str, namespace: str,
                                                             engine: Engine) -> None:
    shop = Shop(api, namespace)
    shop.put("a", 1000)
    shop.put("b", 1000)
    # 60 reservations of two lines, a third of them expiring as the race runs.
    rids = []
    for n in range(60):
        r = shop.reserve(f"r{n}", [("a", 1), ("b", 2)], ttl=1 if n % 3 == 0 else 600)
        assert r.status_code == 201, r.text
        rids.append(r.json()["id"])
    # Race once the short ones are due: confirm and release then meet expiry on them.
    last_short = rids[::3][-1]
    wait_until(lambda: shop.http.get(f"{shop.base}/reservations/{last_short}", timeout=10)
               .json()["state"] == "expired", 10, "the short reservations to be due")
    steps = [(rid, step) for rid in rids for step in ("confirm", "release", "confirm",
                                                      "release")]
    random.Random(7).shuffle(steps)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda s: (s[0], s[1], shop.step(*s)), steps))
    final = {rid: shop.http.get(f"{shop.base}/reservations/{rid}", timeout=10).json()["state"]
             for rid in rids}
    for rid, _, response in answers:
        assert response.status_code in (200, 409), response.text
        state = final[rid]
        if response.status_code == 200:
            # a 200 tells the one end the reservation had (released also answers "expired")
            assert response.json()["state"] == state
    assert set(final.values()) == {"confirmed", "released", "expired"}
    assert all(final[rid] == "expired" for rid in rids[::3])
    confirmed = sum(state == "confirmed" for state in final.values())

    wait_until(lambda: sum(len(k) for k in ledger_kinds(engine, namespace).values())
               >= 2 * len(rids) * 2, 30, "the ledger to hold every transition")
    kinds = ledger_kinds(engine, namespace)
    for rid in rids:
        for sku in ("a", "b"):
            assert len(kinds[(rid, sku)]) == 2 and kinds[(rid, sku)][0] == "hold"
            assert kinds[(rid, sku)][1] == {"confirmed": "confirm", "released": "release",
                                            "expired": "expire"}[final[rid]]
    figures = {sku: shop.item(sku) for sku in ("a", "b")}
    assert (figures["a"]["consumed"], figures["a"]["held"]) == (confirmed, 0)
    assert (figures["b"]["consumed"], figures["b"]["held"]) == (2 * confirmed, 0)
    wait_until(lambda: stored(engine, namespace) == {"a": (1000, confirmed, 0),
                                                     "b": (1000, 2 * confirmed, 0)},
               30, "the items table to agree with the counter")


def test_carts_of_three_items_under_contention_hold_all_or_none(api: str, namespace: str,
                                                                engine: Engine) -> None:
    shop = Shop(api, namespace)
    skus = [f"s{n}" for n in range(20)]
    for sku in skus:
        shop.put(sku, 5)

    def buyer(n: int) -> list[tuple[int, list[tuple[str, int]], dict[str, Any]]]:
        rng = random.Random(n)
        tried = []
        for attempt in range(6):
            lines = [(sku, rng.randint(1, 2)) for sku in rng.sample(skus, 3)]
            r = shop.reserve(f"c{n}-{attempt}", lines)
            assert r.status_code in (201, 409), r.text
            tried.append((r.status_code, lines, r.json()))
        return tried

    with ThreadPoolExecutor(16) as pool:
        results = [t for part in pool.map(buyer, range(32)) for t in part]
    held: Counter[str] = Counter()
    for status, lines, answer in results:
        if status == 201:
            assert answer["state"] == "held"
            held.update({sku: qty for sku, qty in lines})
        else:
            assert answer["error"] == "insufficient_stock" and answer["sku"] in {
                sku for sku, _ in lines}
    assert any(status == 409 for status, *_ in results)  # there was contention
    for sku in skus:
        figures = shop.item(sku)
        assert figures["held"] == held[sku] <= 5  # every line of every 201, none of a 409
        assert figures["available"] == 5 - held[sku] >= 0
    wait_until(lambda: all(h == held[s] for s, (_, _, h) in stored(engine, namespace).items()),
               30, "the ledger to hold every hold")


def test_a_hold_expires_and_its_stock_sells_to_others_within_a_second(
        api: str, namespace: str) -> None:
    """Only the API runs (the session's servers and ledger worker): no sweeper is needed."""
    shop = Shop(api, namespace)
    shop.put("last", 1)
    held = shop.reserve("h", [("last", 1)], ttl=1)
    assert held.status_code == 201
    expires = held.json()["expires_at"]
    refused = shop.http.post(f"{shop.base}/items/last/decrements", json={"qty": 1}, timeout=10,
                             headers={"Idempotency-Key": "early"})
    assert refused.status_code == 409
    sold: list[float] = []

    def sells() -> bool:
        r = shop.http.post(f"{shop.base}/items/last/decrements", json={"qty": 1}, timeout=10,
                           headers={"Idempotency-Key": f"try-{len(sold)}-{time.monotonic()}"})
        if r.status_code == 200:
            sold.append(time.time())
        return r.status_code == 200

    wait_until(sells, 10, "the expired hold's unit to sell")
    late = sold[0] - datetime.fromisoformat(expires).timestamp()
    assert late < 1.0, f"sold {late:.2f} s after the hold expired"
    assert shop.item("last")["consumed"] == 1
    state = shop.http.get(f"{shop.base}/reservations/{held.json()['id']}", timeout=10).json()
    assert state["state"] == "expired"


def holds_in_redis(config: Config, namespace: str, sku: str) -> int:
    keys = KeySpace(config.redis_key_prefix, config.partitions)
    client = redis.Redis.from_url(config.redis_url or "")
    try:
        return int(client.hlen(keys.holds(namespace, sku)))
    finally:
        client.close()


def holds_in_ledger(engine: Engine, namespace: str) -> list[tuple[str, str, int]]:
    with engine.connect() as conn:
        return [(rid, sku, qty) for rid, sku, qty in conn.execute(text(
            "SELECT reservation_id, sku, qty FROM inventory_ledger WHERE namespace = :ns AND "
            "kind = 'hold' ORDER BY sku"), {"ns": namespace})]


def test_one_key_names_one_reservation_whatever_the_body(
        api: str, namespace: str, engine: Engine, service_config: Config) -> None:
    shop = Shop(api, namespace)
    skus = [f"k{n}" for n in range(20)]
    for sku in skus:
        shop.put(sku, 100)
    first = shop.reserve("one-key", [("k0", 1), ("k1", 2)], buyer="ann")
    assert first.status_code == 201, first.text
    others: list[tuple[list[tuple[str, int]], dict[str, Any]]] = [
        ([("k1", 2), ("k0", 1)], {"buyer": "ann"}),  # the same lines in another order
        ([("k5", 1), ("k0", 1), ("k1", 2)], {"buyer": "ann"}),  # another first line
        ([("k0", 1), ("k1", 3)], {"buyer": "ann"}),  # another quantity
        ([("k0", 1), ("k1", 2)], {"buyer": "bob"}),  # another buyer
        ([("k0", 1), ("k1", 2)], {}),  # no buyer
        *(([(sku, 1)], {"buyer": "ann"}) for sku in skus),  # 20 single-line bodies
    ]
    for lines, extra in others:
        again = shop.reserve("one-key", lines, **extra)
        assert again.status_code == 422, (lines, extra, again.text)
        assert again.json()["error"] == "idempotency_key_reused"
    ttl = shop.reserve("one-key", [("k0", 1), ("k1", 2)], ttl=601, buyer="ann")
    assert ttl.status_code == 422, ttl.text
    replay = shop.reserve("one-key", [("k0", 1), ("k1", 2)], buyer="ann")
    assert (replay.status_code, replay.content) == (201, first.content)
    # One reservation, held once: in Redis and in the ledger.
    assert [holds_in_redis(service_config, namespace, sku) for sku in skus] == [1, 1] + [0] * 18
    assert [(shop.item(sku)["held"]) for sku in ("k0", "k1", "k5")] == [1, 2, 0]
    rid = first.json()["id"]
    wait_until(lambda: len(holds_in_ledger(engine, namespace)) >= 2, 30, "the holds' entries")
    assert holds_in_ledger(engine, namespace) == [(rid, "k0", 1), (rid, "k1", 2)]


def test_a_replayed_create_answers_its_first_response_byte_for_byte(
        api: str, namespace: str) -> None:
    shop = Shop(api, namespace)
    shop.put("r", 5)
    for step in ("confirm", "extend", "release"):
        made = shop.reserve(f"then-{step}", [("r", 1)], ttl=60)
        assert made.status_code == 201, made.text
        assert "Idempotent-Replayed" not in made.headers
        rid = made.json()["id"]
        if step == "extend":
            ended = shop.http.post(f"{shop.base}/reservations/{rid}/extend", timeout=10,
                                   json={"ttl_seconds": 3600})
            assert ended.json()["expires_at"] != made.json()["expires_at"]
        else:
            ended = shop.step(rid, step)
        assert ended.status_code == 200, ended.text
        replay = shop.reserve(f"then-{step}", [("r", 1)], ttl=60)
        assert (replay.status_code, replay.content) == (201, made.content), step
        assert replay.headers["Idempotent-Replayed"] == "true"
    # A refusal replays as it was first answered, though the stock is there by now.
    refused = shop.reserve("too-many", [("r", 5)])
    assert refused.status_code == 409 and refused.json()["error"] == "insufficient_stock"
    assert "Idempotent-Replayed" not in refused.headers
    shop.http.post(f"{shop.base}/items/r/adjustments", json={"delta": 10}, timeout=10,
                   headers={"Idempotency-Key": "more"})
    replay = shop.reserve("too-many", [("r", 5)])
    assert (replay.status_code, replay.content) == (409, refused.content)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert shop.item("r")["held"] == 1  # the extended one; the refusal's replay held nothing


@pytest.fixture
def capped_api(service_config: Config, ledger_workers: Process) -> Iterator[str]:
    yield from serve(service_config, {"MAX_OPEN_RESERVATIONS_PER_BUYER": "3",
                                      "MAX_OPEN_RESERVATIONS_PER_TOKEN": "12"})


def test_hoarding_is_bounded_per_line_per_buyer_and_per_token(
        capped_api: str, namespace: str, engine: Engine) -> None:
    shop = Shop(capped_api, namespace)
    shop.put("big", 500)
    shop.put("other", 500)
    # A cart of one sku may not add up to more than one line may hold.
    merged = shop.reserve("merged", [("big", 1_000_000)] * 100)
    assert merged.status_code == 400, merged.text
    assert (merged.json()["error"], merged.json()["field"]) == ("invalid_field", "lines")
    assert shop.reserve("merged-2", [("big", 600_000), ("other", 1), ("big", 400_001)]
                        ).json()["field"] == "lines"
    assert shop.item("big")["held"] == 0
    # One buyer, ten carts at once: three held, the others refused, whichever worker took them.
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda n: shop.reserve(f"b{n}", [("big", 1)], buyer="hoarder"),
                                range(10)))
    assert sorted(a.status_code for a in answers) == [201] * 3 + [429] * 7
    refusal = next(a.json() for a in answers if a.status_code == 429)
    assert (refusal["error"], refusal["limit"]) == ("too_many_open_reservations", 3)
    assert shop.item("big")["held"] == 3
    # An ended reservation no longer counts: the buyer may hold another.
    held = [a.json()["id"] for a in answers if a.status_code == 201]
    assert shop.step(held[0], "confirm").status_code == 200
    assert shop.reserve("b-next", [("big", 1)], buyer="hoarder").status_code == 201
    assert shop.reserve("b-over", [("big", 1)], buyer="hoarder").status_code == 429
    # A token of its own: at most twelve open reservations a server process.
    _, token = TokenStore(engine).create(namespace, "sell", "hoarding test")
    made = [shop.http.post(f"{shop.base}/reservations", timeout=10, json={
        "lines": [{"sku": "other", "qty": 1}], "buyer": f"buyer-{n}"}, headers={
        "Idempotency-Key": f"t{n}", "Authorization": f"Bearer {token}"}) for n in range(30)]
    statuses = [m.status_code for m in made]
    assert set(statuses) == {201, 429}, statuses
    assert 12 <= statuses.count(201) <= 24  # two workers, twelve each at most
    assert made[-1].json()["error"] == "too_many_open_reservations"
    assert shop.item("other")["held"] == statuses.count(201)


def test_a_create_refused_at_the_buyers_cap_is_not_its_keys_answer(
        capped_api: str, namespace: str) -> None:
    shop = Shop(capped_api, namespace)
    shop.put("cap", 50)
    held = [shop.reserve(f"c{n}", [("cap", 1)], ttl=60 + n, buyer="carol") for n in range(3)]
    assert [h.status_code for h in held] == [201] * 3
    refused = shop.reserve("c-over", [("cap", 1)], buyer="carol")
    assert (refused.status_code, refused.json()["error"]) == (429, "too_many_open_reservations")
    # Room comes back by itself when the first of carol's reservations expires (60 s).
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "Idempotent-Replayed" not in refused.headers
    assert shop.reserve("c-over", [("cap", 1)], buyer="carol").status_code == 429
    assert shop.step(held[0].json()["id"], "release").status_code == 200
    # Never processed, so never remembered: the same key and body is served now.
    served = shop.reserve("c-over", [("cap", 1)], buyer="carol")
    assert served.status_code == 201, served.text
    assert "Idempotent-Replayed" not in served.headers
    again = shop.reserve("c-over", [("cap", 1)], buyer="carol")
    assert (again.status_code, again.json()["id"], again.headers["Idempotent-Replayed"]) == (
        201, served.json()["id"], "true")
    assert shop.item("cap")["held"] == 3
