"""The service on a real Redis Cluster (three masters on loopback): the counter contract, the
outbox, the domain machine, items spread over masters, and a sale with exactly the stock sold."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import uuid
from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy.engine import Engine

from allocation.adapters.counter import Counter, Reserved
from allocation.adapters.outbox import Outbox
from allocation.adapters.redis_client import connect
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_outbox import RedisOutbox
from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from allocation.domain.outcome import Figures
from allocation.service_layer.results import Reservation
from tests.helpers.counter_contract import (
    CounterContract,
    LimitContract,
    OutboxContract,
    RedisRecordTtls,
    ReservationContract,
    check_reserved_events,
    counter_machine,
    move_clock,
)
from tests.helpers.ledger import ledger_rows, ledger_threads, stored
from tests.helpers.processes import wait_until
from tests.helpers.redis_cluster import LocalCluster, started_cluster
from tests.helpers.sales import sell_from_processes

CLUSTER: list[str] = []  # the URL, for classes built without fixtures


@pytest.fixture(autouse=True, scope="module")
def _cluster_url(redis_cluster: LocalCluster) -> None:
    CLUSTER[:] = [redis_cluster.url]


def cluster_counter() -> RedisCounter:
    return RedisCounter(connect(CLUSTER[0]), KeySpace(f"c{uuid.uuid4().hex[:6]}", 16))


class TestClusterCounter(RedisRecordTtls, ReservationContract, LimitContract, CounterContract):
    def make_counter(self) -> Counter:
        return cluster_counter()

    def pass_time(self, ms: int) -> None:
        move_clock(self.counter, ms)

    def skus(self, n: int) -> list[str]:
        # Carts in one slot: one script does a step.
        assert isinstance(self.counter, RedisCounter)
        keys = self.counter.keys
        return [sku for sku in (f"c{i}" for i in range(1000))
                if keys.partition(self.ns, sku) == keys.partition(self.ns, "x")][:n]

    def make_counter_with_ttls(self, ttl: int, refusal_ttl: int) -> Counter:
        return RedisCounter(connect(CLUSTER[0]), KeySpace(f"c{uuid.uuid4().hex[:6]}", 16), ttl,
                            refusal_ttl=refusal_ttl)


class TestClusterCartsAcrossSlots(ReservationContract):
    """The same contract with every line of a cart in a slot of its own: the coordinator of
    redis_carts steps through them."""

    def setup_method(self) -> None:
        self.counter = cluster_counter()
        self.ns = "ns-" + uuid.uuid4().hex[:8]

    def pass_time(self, ms: int) -> None:
        move_clock(self.counter, ms)

    def skus(self, n: int) -> list[str]:
        assert isinstance(self.counter, RedisCounter)
        keys, chosen, slots = self.counter.keys, [], set()
        for sku in (f"c{i}" for i in range(1000)):
            if keys.partition(self.ns, sku) not in slots:
                chosen.append(sku)
                slots.add(keys.partition(self.ns, sku))
        return chosen[:n]


def test_a_cart_across_slots_publishes_reserved_events_with_the_requests_key() -> None:
    counter = RedisCounter(connect(CLUSTER[0]), KeySpace(f"c{uuid.uuid4().hex[:6]}", 16),
                           events_channel=f"ev-{uuid.uuid4().hex[:6]}")
    ns = "ns-" + uuid.uuid4().hex[:8]
    skus: dict[int, str] = {}
    for sku in (f"c{i}" for i in range(1000)):
        skus.setdefault(counter.keys.partition(ns, sku), sku)
    check_reserved_events(counter, ns, list(skus.values())[:3])


def test_a_cart_that_meets_another_carts_unfinished_step_waits_for_it() -> None:
    """Another cart's coordinator holds the last unit of x for a moment (its step unfinished):
    a cart that needs it tries again while it is held, and gets it once that cart is undone."""
    counter = cluster_counter()
    ns = "ns-" + uuid.uuid4().hex[:8]
    spread = TestClusterCartsAcrossSlots()
    spread.counter, spread.ns = counter, ns
    x, y = spread.skus(2)  # two slots
    counter.load(ns, x, Figures(1, 0, seq=1))
    counter.load(ns, y, Figures(1, 0, seq=1))
    other = counter.reservation_id(ns, "other")
    assert counter.part_step("hold", ns, other, [(x, 1)], 2**41).ok  # its tentative hold
    tried: list[str] = []
    part_step = counter.part_step

    def recorded(op: str, *args: Any, **kwargs: Any) -> Reserved:
        answer = part_step(op, *args, **kwargs)
        if op == "hold":
            tried.append(answer.status)
        return answer

    counter.part_step = recorded  # type: ignore[method-assign]
    mine = counter.reservation_id(ns, "mine")
    result: list[Reserved] = []
    cart = threading.Thread(target=lambda: result.append(counter.reservation_step(
        "hold", ns, mine, [(x, 1), (y, 1)], ttl_ms=60_000, fingerprint="f")))
    cart.start()
    wait_until(lambda: "insufficient_stock" in tried or not cart.is_alive(), 10,
               "the cart to meet the held unit")
    part_step("release", ns, other, [(x, 1)], 2**41)  # the other cart is undone
    cart.join(10)
    assert [r.status for r in result] == ["ok"], tried
    # Units sold, not held: the refusal stands at once, with no second try.
    assert counter.reservation_step("confirm", ns, mine, [(x, 1), (y, 1)]).ok
    tried.clear()
    late = counter.reservation_step("hold", ns, counter.reservation_id(ns, "late"),
                                    [(x, 1), (y, 1)], ttl_ms=60_000, fingerprint="g")
    assert (late.status, tried) == ("insufficient_stock", ["insufficient_stock"])


def test_a_cart_in_one_other_slot_lives_there_and_its_key_keeps_only_a_claim() -> None:
    counter = cluster_counter()
    ns = "ns-" + uuid.uuid4().hex[:8]
    rid = counter.reservation_id(ns, "k")
    key_slot = int(rid.partition(".")[0])
    sku = next(f"s{n}" for n in range(1000) if counter.keys.partition(ns, f"s{n}") != key_slot)
    there = counter.keys.partition(ns, sku)
    counter.load(ns, sku, Figures(5, 0, seq=1))
    held = counter.reservation_step("hold", ns, rid, [(sku, 2)], ttl_ms=60_000, fingerprint="f")
    assert held.ok
    record, claim = (counter.keys.reservation(ns, p, rid) for p in (there, key_slot))
    assert counter.client.hget(record, "state") == b"held"
    assert counter.client.hmget(claim, ["state", "fp"]) == [b"claimed", b"f"]
    other = next(f"o{n}" for n in range(1000)
                 if counter.keys.partition(ns, f"o{n}") not in (there, key_slot))
    counter.load(ns, other, Figures(5, 0, seq=1))
    assert counter.reservation_step("hold", ns, rid, [(other, 1)], ttl_ms=60_000,
                                    fingerprint="g").status == "idempotency_key_reused"
    # Redis lost both: put back from the ledger, the reservation is where its lines are again.
    counter.client.delete(record)
    counter.client.delete(claim)
    counter.restore_reservation(ns, rid, [(sku, 2)], None, "held", held.created_ms,
                                held.expires_ms, "f")
    again = counter.reservation_step("hold", ns, rid, [(sku, 2)], ttl_ms=60_000,
                                     fingerprint="f")
    assert (again.status, again.replayed, again.expires_ms) == ("ok", True, held.expires_ms)
    assert counter.reservation_step("hold", ns, rid, [(other, 1)], ttl_ms=60_000,
                                    fingerprint="g").status == "idempotency_key_reused"
    assert counter.reservation_step("confirm", ns, rid, [(sku, 2)]).state == "confirmed"
    assert [f.consumed for f in counter.read_many(ns, [sku, other]) if f] == [2, 0]


class TestClusterOutbox(OutboxContract):
    def make_pair(self) -> tuple[Counter, Outbox]:
        counter = cluster_counter()
        return counter, RedisOutbox(counter.client, counter.keys)


TestClusterCounterMatchesTheDomain = counter_machine(cluster_counter).TestCase


def test_a_namespace_spreads_over_every_master(redis_cluster: LocalCluster) -> None:
    keys = KeySpace("spread", 16)
    owners = {redis_cluster.owner(keys.item("shop", f"sku-{n}")) for n in range(64)}
    outboxes = {redis_cluster.owner(keys.outbox(p)) for p in range(16)}
    assert len(owners) == 3 and len(outboxes) == 3
    assert owners == set(redis_cluster.masters())


@pytest.fixture(params=["sync", "async"])
def on_cluster(request: pytest.FixtureRequest, service_config: Config,
               redis_cluster: LocalCluster) -> Iterator[Config]:
    config = dataclasses.replace(service_config, redis_url=redis_cluster.url,
                                 durability=request.param,
                                 redis_key_prefix=f"k{uuid.uuid4().hex[:6]}")
    with ledger_threads(config, 2):
        yield config


def test_processes_sell_exactly_the_stock_on_the_cluster(on_cluster: Config, engine: Engine,
                                                         namespace: str) -> None:
    app = bootstrap(on_cluster)
    app.bus.handle(commands.InitInventory(namespace, "hot", 1000))
    sold = sell_from_processes(on_cluster, namespace)
    assert sold == 1000
    wait_until(lambda: stored(engine, namespace, "hot")[2] == 1001, 60, "the ledger")
    assert stored(engine, namespace, "hot") == (1000, 1000, 1001)
    assert [seq for seq, *_ in ledger_rows(engine, namespace, "hot")] == list(range(1, 1002))
    live = app.counter.read(namespace, "hot")
    assert live is not None and live.consumed == 1000


def carts_under_contention(app: Application, namespace: str) -> dict[str, int]:
    """32 buyers reserving carts of 3 of 20 items (5 units each), then confirming or releasing
    them; every cart holds all its lines or none, and no item goes below zero. Returns the
    units sold per item."""
    skus = [f"s{n}" for n in range(20)]
    for sku in skus:
        app.bus.handle(commands.InitInventory(namespace, sku, 5))
    held: list[tuple[Reservation, int]] = []
    lock = threading.Lock()

    def buyer(n: int) -> None:
        rng = random.Random(n)
        for attempt in range(5):
            lines = tuple((sku, rng.randint(1, 2)) for sku in rng.sample(skus, 3))
            try:
                made = app.bus.handle(commands.Reserve(namespace, lines, f"{n}-{attempt}"))
            except errors.InsufficientStock as refused:
                assert refused.details["sku"] in {sku for sku, _ in lines}
                continue
            with lock:
                held.append((made, n))

    threads = [threading.Thread(target=buyer, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    holding: Tally[str] = Tally()
    for made, _ in held:
        assert made.state == "held"
        holding.update(dict(made.lines))
    figures = dict(zip(skus, app.counter.read_many(namespace, skus), strict=True))
    assert {sku: f.held for sku, f in figures.items() if f} == {s: holding[s] for s in skus}
    assert all(f is not None and f.available >= 0 for f in figures.values())
    assert 0 < len(held) < 160  # contention: some carts were refused
    sold: Tally[str] = Tally()
    for made, n in held:
        if n % 2:
            app.bus.handle(commands.ConfirmReservation(namespace, made.id))
            sold.update(dict(made.lines))
        else:
            app.bus.handle(commands.ReleaseReservation(namespace, made.id))
    after = dict(zip(skus, app.counter.read_many(namespace, skus), strict=True))
    assert {sku: (f.consumed, f.held) for sku, f in after.items() if f} == {
        s: (sold[s], 0) for s in skus}
    return dict(sold)


@pytest.mark.parametrize("where", ["one Redis", "cluster"])
def test_carts_across_slots_hold_all_or_nothing_under_contention(
        where: str, service_config: Config, redis_cluster: LocalCluster, engine: Engine,
        namespace: str) -> None:
    config = dataclasses.replace(service_config, durability="async",
                                 redis_key_prefix=f"k{uuid.uuid4().hex[:6]}")
    if where == "cluster":
        config = dataclasses.replace(config, redis_url=redis_cluster.url)
    app = bootstrap(config)
    with ledger_threads(config, 1):
        sold = carts_under_contention(app, namespace)
        wait_until(lambda: all(stored(engine, namespace, sku)[1] == n
                               for sku, n in sold.items()), 60, "the ledger")


@pytest.mark.parametrize("where", ["one Redis", "cluster"])
def test_one_key_holds_one_reservation_whatever_the_body(
        where: str, service_config: Config, redis_cluster: LocalCluster, engine: Engine,
        namespace: str) -> None:
    config = dataclasses.replace(service_config, durability="async",
                                 redis_key_prefix=f"k{uuid.uuid4().hex[:6]}")
    if where == "cluster":
        config = dataclasses.replace(config, redis_url=redis_cluster.url)
    app = bootstrap(config)
    skus = [f"s{n}" for n in range(20)]
    app.bus.handle(commands.InitMany(namespace, tuple((sku, 100) for sku in skus)))
    with ledger_threads(config, 1):
        made = app.bus.handle(commands.Reserve(namespace, (("s0", 1), ("s1", 2)), "key"))
        for lines in ((("s1", 2), ("s0", 1)), (("s7", 1), ("s0", 1), ("s1", 2)),
                      (("s0", 1), ("s1", 3)), *(((sku, 1),) for sku in skus)):
            with pytest.raises(errors.IdempotencyKeyReused):
                app.bus.handle(commands.Reserve(namespace, lines, "key"))
        again = app.bus.handle(commands.Reserve(namespace, (("s0", 1), ("s1", 2)), "key"))
        assert (again.id, again.replayed) == (made.id, True)
        assert isinstance(app.counter, RedisCounter)
        keys = app.counter.keys
        assert [app.counter.client.hlen(keys.holds(namespace, sku)) for sku in skus] == [
            1, 1] + [0] * 18
        wait_until(lambda: stored(engine, namespace, "s0")[2] == 2
                   and stored(engine, namespace, "s1")[2] == 2, 60, "the ledger")
    held = {sku: [(kind, qty) for _, kind, qty, _ in ledger_rows(engine, namespace, sku)
                  if kind == "hold"] for sku in skus}
    assert {sku: rows for sku, rows in held.items() if rows} == {
        "s0": [("hold", 1)], "s1": [("hold", 2)]}


def test_a_coordinator_killed_mid_cart_leaves_nothing_held_past_the_expiry(
        redis_cluster: LocalCluster) -> None:
    counter = cluster_counter()
    ns = "ns-" + uuid.uuid4().hex[:8]
    spread = TestClusterCartsAcrossSlots()
    spread.counter, spread.ns = counter, ns
    a, b, c = spread.skus(3)
    for sku in (a, b, c):
        counter.load(ns, sku, Figures(4, 0, seq=1))
    # A key whose reservation lives in a's slot, so that the first step holds a there.
    rid = next(rid for n in range(10_000) if int(
        (rid := counter.reservation_id(ns, f"k{n}")).partition(".")[0]) == counter.keys.partition(
            ns, a))
    lines = [(a, 1), (b, 2), (c, 3)]
    # The coordinator's first two steps, then it dies: the home holds "pending", one slot held.
    first = counter.home_step("hold", ns, rid, [(a, 1)], ttl_ms=500, whole=False,
                              every_line=lines)
    assert first.state == "pending"
    assert counter.part_step("hold", ns, rid, [(b, 2)], first.expires_ms).ok
    assert [f.held for f in counter.read_many(ns, [a, b, c]) if f] == [1, 2, 0]

    def nothing_held() -> bool:
        counter.sweep()  # the sweeper ends holds on items nobody touches
        return [f.held for f in counter.read_many(ns, [a, b, c]) if f] == [0, 0, 0]

    wait_until(nothing_held, 10, "the dead coordinator's holds to end at their expiry")
    assert counter.reservation_step("get", ns, rid, lines).state == "expired"
    assert [f.available for f in counter.read_many(ns, [a, b, c]) if f] == [4, 4, 4]


@pytest.fixture
def cluster_with_replicas(tmp_path: Path) -> Iterator[LocalCluster]:
    with started_cluster(tmp_path, replicas=1) as cluster:
        yield cluster


def test_stream_reads_survive_the_death_of_the_clients_default_node(
        cluster_with_replicas: LocalCluster, service_config: Config) -> None:
    """redis-py asks its default node for XREADGROUP's keys; when that node died, every read of
    the outbox failed until the process restarted (a worker stuck while sales waited on it)."""
    cluster = cluster_with_replicas
    client = connect(cluster.url)
    outbox = RedisOutbox(client, KeySpace(f"d{uuid.uuid4().hex[:6]}", 16))
    everything = list(range(16))
    outbox.read_new(everything, "w", 10)
    default = client.get_default_node()  # type: ignore[attr-defined]
    assert default is not None
    cluster.kill(default.port)

    def reads() -> bool:
        try:
            outbox.read_new(everything, "w", 10)
            return all(outbox.read(p, "w", 10) == [] for p in everything)
        except (errors.Unavailable, redis.RedisError):
            return False

    wait_until(reads, 30, "the outbox to be read again after the failover")


def test_selling_goes_on_through_a_failover(cluster_with_replicas: LocalCluster,
                                            service_config: Config, engine: Engine,
                                            namespace: str) -> None:
    """Synchronous durability: a sale is answered only once the ledger has it, so every
    acknowledged sale is in PostgreSQL however the failover goes."""
    cluster = cluster_with_replicas
    config = dataclasses.replace(service_config, redis_url=cluster.url, durability="sync",
                                 redis_key_prefix=f"f{uuid.uuid4().hex[:6]}")
    app = bootstrap(config)
    app.bus.handle(commands.InitInventory(namespace, "hot", 400))
    doomed = cluster.owner(KeySpace(config.redis_key_prefix, config.partitions)
                           .item(namespace, "hot"))
    sold: set[str] = set()
    lock = threading.Lock()
    errors_seen = [0]

    def buyer(n: int) -> None:
        deadline = time.monotonic() + 90
        for attempt in range(80):
            key = f"{n}-{attempt}"
            while time.monotonic() < deadline:  # a failed attempt is retried, same key
                try:
                    outcome = app.bus.handle(commands.Decrement(namespace, "hot", 1, key))
                except Exception:  # noqa: BLE001 - the failover window: retry
                    with lock:
                        errors_seen[0] += 1
                    continue
                if outcome.ok:
                    with lock:
                        sold.add(key)
                break

    threads = [threading.Thread(target=buyer, args=(n,)) for n in range(8)]
    with ledger_threads(config, 2):
        for t in threads:
            t.start()
        wait_until(lambda: len(sold) >= 100, 30, "the sale to be under way")
        cluster.kill(doomed)
        for t in threads:
            t.join(timeout=120)
    assert doomed not in cluster.masters()  # its replica took over
    assert len(sold) == 400  # 640 attempts for 400 units: all sold, none twice
    assert stored(engine, namespace, "hot") == (400, 400, 401)
    rows = ledger_rows(engine, namespace, "hot")
    assert sorted(key for *_, key in rows if key) == sorted(sold)
    live = app.counter.read(namespace, "hot")
    assert live is not None and live.consumed == 400
