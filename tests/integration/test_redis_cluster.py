"""The service on a real Redis Cluster (three masters on loopback): the counter contract, the
outbox, the domain machine, items spread over masters, and a sale with exactly the stock sold."""

from __future__ import annotations

import dataclasses
import multiprocessing
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from allocation.adapters.counter import Counter
from allocation.adapters.outbox import Outbox
from allocation.adapters.redis_client import connect
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_outbox import RedisOutbox
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from allocation.entrypoints import ledger_worker
from tests.counter_contract import CounterContract, OutboxContract, counter_machine
from tests.e2e.conftest import wait_until
from tests.integration.conftest import ledger_rows, stored
from tests.integration.test_concurrency import _buyer_process
from tests.redis_cluster import LocalCluster

CLUSTER: list[str] = []  # the URL, for classes built without fixtures


@pytest.fixture(autouse=True, scope="module")
def _cluster_url(redis_cluster: LocalCluster) -> None:
    CLUSTER[:] = [redis_cluster.url]


def cluster_counter() -> RedisCounter:
    return RedisCounter(connect(CLUSTER[0]), KeySpace(f"c{uuid.uuid4().hex[:6]}", 16))


class TestClusterCounter(CounterContract):
    def make_counter(self) -> Counter:
        return cluster_counter()


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
    workers = []
    if request.param == "async":
        workers = [ledger_worker.from_bus(bootstrap(config)) for _ in range(2)]
        for worker in workers:
            worker.start_thread()
    yield config
    for worker in workers:
        worker.stop()


def test_processes_sell_exactly_the_stock_on_the_cluster(on_cluster: Config, engine: Engine,
                                                         namespace: str) -> None:
    bus = bootstrap(on_cluster)
    bus.handle(commands.InitInventory(namespace, "hot", 1000))
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_buyer_process,
                         args=(on_cluster, namespace, p * 750, (p + 1) * 750, results))
             for p in range(4)]
    for p in procs:
        p.start()
    sold = sum(results.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert sold == 1000
    wait_until(lambda: stored(engine, namespace, "hot")[2] == 1001, 60, "the ledger")
    assert stored(engine, namespace, "hot") == (1000, 1000, 1001)
    assert [seq for seq, *_ in ledger_rows(engine, namespace, "hot")] == list(range(1, 1002))
    assert bus.dependencies["counter"].read(namespace, "hot").consumed == 1000
