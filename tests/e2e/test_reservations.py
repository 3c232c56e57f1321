"""Reservations over real HTTP against `allocation serve`, PostgreSQL and Redis: races between
confirm, release and expiry; carts under contention; expiry with only the API running."""

from __future__ import annotations

import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import requests
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.helpers.processes import wait_until


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
