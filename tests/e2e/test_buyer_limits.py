"""Limits per buyer over real HTTP, from several processes at once, as a sale's buyers would
come: many tabs, many machines, one limit."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import requests
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.helpers.processes import wait_until

BUYERS, LIMIT, STOCK, PROCESSES = 64, 2, 100, 4


def _tab(url: str, token: str, buyer: str, tab: int) -> list[int]:
    """One browser tab of one buyer: three tries to buy a unit."""
    session = requests.Session()
    statuses = []
    for attempt in range(3):
        r = session.post(url, json={"qty": 1, "buyer": buyer}, timeout=30, headers={
            "Authorization": f"Bearer {token}",
            "Idempotency-Key": f"{buyer}-{tab}-{attempt}"})
        assert r.status_code in (200, 409), r.text
        if r.status_code == 409:
            body = r.json()
            assert body["error"] in ("limit_exceeded", "insufficient_stock"), body
            assert body.get("remaining", 0) <= LIMIT
        statuses.append(r.status_code)
    return statuses


def _process(url: str, token: str, buyers: list[str]) -> dict[str, int]:
    """Each buyer's two tabs, all at once; the units each buyer was sold."""
    tabs = [(buyer, tab) for buyer in buyers for tab in (0, 1)]
    with ThreadPoolExecutor(len(tabs)) as pool:
        results = pool.map(lambda t: _tab(url, token, *t), tabs)
        sold: Counter[str] = Counter()
        for (buyer, _), statuses in zip(tabs, results, strict=True):
            sold[buyer] += statuses.count(200)
    return dict(sold)


def test_64_buyers_in_several_processes_never_pass_their_limit(
        api: str, admin_token: str, namespace: str, engine: Engine) -> None:
    item = f"{api}/v1/{namespace}/items/hot"
    made = requests.put(item, json={"total": STOCK, "limit_per_buyer": LIMIT}, timeout=10)
    assert (made.status_code, made.json()["limit_per_buyer"]) == (201, LIMIT)
    buyers = [f"buyer:{n}@sale" for n in range(BUYERS)]
    shares = [buyers[i::PROCESSES] for i in range(PROCESSES)]
    # Spawned, not forked: each process starts clean, as separate machines would.
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_process, [f"{item}/decrements"] * PROCESSES,
                              [admin_token] * PROCESSES, shares))
    sold = {buyer: n for part in parts for buyer, n in part.items()}
    assert max(sold.values()) <= LIMIT
    assert sum(sold.values()) == STOCK  # sold out exactly: 128 allowed, 100 there
    figures = requests.get(item, timeout=10).json()
    assert (figures["consumed"], figures["available"]) == (STOCK, 0)

    def in_ledger() -> dict[str, int]:
        with engine.connect() as conn:
            return {b: int(n) for b, n in conn.execute(text(
                "SELECT buyer, SUM(qty) FROM inventory_ledger WHERE namespace = :ns AND "
                "sku = 'hot' AND kind = 'decrement' GROUP BY buyer"), {"ns": namespace})}

    wait_until(lambda: sum(in_ledger().values()) == STOCK, 30, "the ledger to hold the sale")
    assert in_ledger() == {b: n for b, n in sold.items() if n}


def test_a_limit_is_set_changed_and_named_in_every_answer(api: str, namespace: str) -> None:
    item = f"{api}/v1/{namespace}/items/cap"
    assert requests.put(item, json={"total": 5}, timeout=10).json()["limit_per_buyer"] is None
    changed = requests.patch(item, json={"limit_per_buyer": 1}, timeout=10)
    assert (changed.status_code, changed.json()["limit_per_buyer"]) == (200, 1)

    def sell(key: str, **body: object) -> requests.Response:
        return requests.post(f"{item}/decrements", json={"qty": 1, **body}, timeout=10,
                             headers={"Idempotency-Key": key})

    unnamed = sell("u")
    assert (unnamed.status_code, unnamed.json()["error"], unnamed.json()["field"]) == (
        400, "buyer_required", "buyer")
    assert sell("a1", buyer="ann").json()["limit_per_buyer"] == 1
    over = sell("a2", buyer="ann")
    assert (over.status_code, over.json()["error"], over.json()["remaining"]) == (
        409, "limit_exceeded", 0)
    assert sell("a2", buyer="ann").headers["Idempotent-Replayed"] == "true"
    assert requests.patch(item, json={"limit_per_buyer": 0}, timeout=10).json()["field"] == (
        "limit_per_buyer")
    sold_role = requests.patch(item, json={"limit_per_buyer": None}, timeout=10)
    assert sold_role.json()["limit_per_buyer"] is None
    assert sell("n2").status_code == 200
    listed = requests.get(f"{api}/v1/{namespace}/items", timeout=10).json()["items"]
    assert [(i["sku"], i["limit_per_buyer"], i["held"]) for i in listed] == [("cap", None, 0)]


def test_a_refund_naming_a_buyer_returns_no_more_than_that_buyers_units(
        api: str, namespace: str) -> None:
    item = f"{api}/v1/{namespace}/items/capped"
    assert requests.put(item, json={"total": 10, "limit_per_buyer": 3},
                        timeout=10).status_code == 201

    def move(what: str, key: str, qty: int, buyer: str) -> requests.Response:
        return requests.post(f"{item}/{what}", json={"qty": qty, "buyer": buyer}, timeout=10,
                             headers={"Idempotency-Key": key})

    assert move("decrements", "d1", 3, "ann").status_code == 200
    # eve never bought: her refund is refused, and changes nothing.
    stranger = move("refunds", "r-eve", 1, "eve")
    assert (stranger.status_code, stranger.json()["error"]) == (409, "refund_exceeds_consumed")
    assert "buyer" in stranger.json()["message"]
    assert move("refunds", "r-ann-4", 4, "ann").status_code == 409  # ann has 3
    assert requests.get(item, timeout=10).json()["consumed"] == 3
    # ann's own refund goes through, all of it.
    refunded = move("refunds", "r-ann", 3, "ann")
    assert (refunded.status_code, refunded.json()["consumed"]) == (200, 0), refunded.text
    assert move("decrements", "d2", 3, "ann").status_code == 200  # her allowance is back
