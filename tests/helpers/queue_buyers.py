"""Buyers of a sale's waiting room over HTTP, many per process: each joins, polls its ticket,
reserves one unit with its pass once admitted and confirms it, or, for an ``abandon`` share of
them, never pays. Run by a process pool (``run_buyers``) so the herd comes from several
processes, as in production. Each process counts the rounds it has made of its buyers in an
array the pool shares (``share_rounds``): the test moves the scripts' clock by them, so that a
pass lasts as many rounds of every buyer however slow the machine."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import SynchronizedArray

import requests

DONE = ("used", "expired", "sold_out", "closed")
FINISHED = 2**31 - 1  # a process's rounds once all its buyers are done
_rounds: SynchronizedArray[int] | None = None  # this process's pool's, from share_rounds


@dataclass
class Buyer:
    name: str
    abandons: bool
    ticket: str = ""
    state: str = "new"
    holds: int = 0  # holds taken with a pass: at most one
    confirmed: bool = False
    confirmed_at: float = 0.0
    sold_out_at: float = 0.0
    waiting_at: float = 0.0  # when the last poll that read "waiting" was sent
    passes: set[str] = field(default_factory=set)  # places admitted, as the pass says


@dataclass(frozen=True)
class Plan:
    base: str
    namespace: str
    sale: str
    sku: str
    token: str  # a sell token of the namespace
    names: tuple[str, ...]
    index: int = 0  # this process's place in the shared rounds
    abandon_percent: int = 30
    deadline: float = 240.0


def _abandons(name: str, percent: int) -> bool:
    return zlib.crc32(name.encode()) % 100 < percent


def share_rounds(rounds: SynchronizedArray[int]) -> None:
    """A pool's initializer: the only way a shared array reaches a spawned process."""
    global _rounds
    _rounds = rounds


def run_buyers(plan: Plan) -> list[Buyer]:
    """Every buyer of ``plan`` until each reads a state that ends it (or the deadline)."""
    http = requests.Session()
    sell = {"Authorization": f"Bearer {plan.token}"}
    sale = f"{plan.base}/v1/{plan.namespace}/sales/{plan.sale}"
    buyers = [Buyer(name, _abandons(name, plan.abandon_percent)) for name in plan.names]
    for buyer in buyers:
        joined = http.post(f"{sale}/queue", json={"buyer": buyer.name}, headers=sell,
                           timeout=10)
        assert joined.status_code == 201, joined.text
        buyer.ticket, buyer.state = joined.json()["ticket"], joined.json()["state"]
    until = time.monotonic() + plan.deadline
    try:
        while time.monotonic() < until:
            active = [b for b in buyers if b.state not in DONE and b.state != "paid"
                      and b.state != "abandoned"]
            if not active:
                break
            for buyer in active:
                _step(http, plan, sale, sell, buyer)
            if _rounds is not None:
                _rounds[plan.index] += 1
    finally:
        if _rounds is not None:
            _rounds[plan.index] = FINISHED
    return buyers


def _step(http: requests.Session, plan: Plan, sale: str, sell: dict[str, str],
          buyer: Buyer) -> None:
    sent = time.time()
    polled = http.get(f"{sale}/queue/{buyer.ticket}", timeout=10)
    assert polled.status_code == 200, polled.text
    ticket = polled.json()
    buyer.state = ticket["state"]
    if buyer.state == "waiting":
        buyer.waiting_at = sent
    if buyer.state == "sold_out" and not buyer.sold_out_at:
        buyer.sold_out_at = time.time()
    if buyer.state != "admitted":
        return
    buyer.passes.add(ticket["pass"].split(".")[0])
    held = http.post(f"{plan.base}/v1/{plan.namespace}/reservations", timeout=10, json={
        "lines": [{"sku": plan.sku, "qty": 1}], "buyer": buyer.name, "ttl_seconds": 30},
        headers={**sell, "Idempotency-Key": f"{buyer.name}-{buyer.holds}-{time.time_ns()}",
                 "Sale-Pass": ticket["pass"]})
    if held.status_code != 201:
        assert held.status_code in (409, 403), held.text  # sold for now / pass ended
        return
    buyer.holds += 1
    if buyer.abandons:
        buyer.state = "abandoned"
        return
    rid = held.json()["id"]
    confirmed = http.post(f"{plan.base}/v1/{plan.namespace}/reservations/{rid}/confirm",
                          headers=sell, timeout=10)
    if confirmed.status_code == 200:
        buyer.confirmed, buyer.confirmed_at, buyer.state = True, time.time(), "paid"
    else:
        assert confirmed.status_code == 409, confirmed.text  # expired before it was paid
        buyer.state = "abandoned"
