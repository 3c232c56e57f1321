"""The waiting room end to end (issue 27): real servers, PostgreSQL and Redis, buyers in
several processes, the scripts' clock moved by the test rather than waited for."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import requests
from sqlalchemy import create_engine

from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.token_store import TokenStore
from allocation.config import Config
from tests.helpers.counter_contract import move_clock, restart_clock, set_clock
from tests.helpers.processes import (
    Process,
    allocation_command,
    ledger_worker,
    serve,
    service_env,
    wait_until,
)
from tests.helpers.queue_buyers import Buyer, Plan, run_buyers

BUYERS, UNITS, FACTOR, PROCESSES = 2000, 100, 2, 4


@pytest.fixture(scope="module")
def config(service_config: Config) -> Config:
    return dataclasses.replace(service_config, redis_key_prefix=f"{service_config.redis_key_prefix}"
                                                                f":w{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def clock(config: Config) -> Iterator[RedisCounter]:
    """The scripts' clock of this module's key space, stopped now; the tests move it."""
    client: redis.Redis[bytes] = redis.Redis.from_url(config.redis_url or "")
    counter = RedisCounter(client, KeySpace(config.redis_key_prefix, config.partitions))
    move_clock(counter, 0)
    yield counter
    restart_clock(counter)
    client.close()


@pytest.fixture(scope="module")
def api(config: Config, clock: RedisCounter) -> Iterator[str]:
    worker = ledger_worker(config)
    sweeper = Process(allocation_command("sweep"), service_env(config))
    sweeper.start()
    servers = serve(config)
    try:
        yield next(servers)
    finally:
        next(servers, None)
        sweeper.stop()
        worker.stop()


@pytest.fixture
def sell_token(config: Config, namespace: str) -> str:
    engine = create_engine(config.database_url)
    _, token = TokenStore(engine).create(namespace, "sell", "e2e buyers")
    engine.dispose()
    return token


def the_sale(api: str, namespace: str, **terms: object) -> str:
    sale = f"{api}/v1/{namespace}/sales/drop"
    assert requests.put(f"{api}/v1/{namespace}/items/hot", json={"total": UNITS},
                        timeout=10).status_code == 201
    made = requests.put(sale, json={"skus": ["hot"], **terms}, timeout=10)
    assert made.status_code == 201, made.text
    return sale


def test_two_thousand_buyers_for_a_hundred_units(api: str, namespace: str, sell_token: str,
                                                 clock: RedisCounter) -> None:
    sale = the_sale(api, namespace, admit_factor=FACTOR, pass_ttl_seconds=300)
    names = [f"buyer-{n}" for n in range(BUYERS)]
    plans = [Plan(api, namespace, "drop", "hot", sell_token, tuple(names[i::PROCESSES]))
             for i in range(PROCESSES)]
    item = clock.keys.item(namespace, "hot")
    admitted_seen: list[int] = []
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        running = pool.map_async(run_buyers, plans)
        while not running.ready():
            # The never-paying buyers' holds (30 s) end as the scripts' clock passes them.
            move_clock(clock, 31_000)
            admitted_seen.append(requests.get(sale, timeout=10).json()["admitted"])
            running.wait(1.5)
            consumed = int(clock.client.hget(item, "consumed") or 0)
            assert consumed <= UNITS
        buyers: list[Buyer] = [b for part in running.get(timeout=10) for b in part]
    last_confirm = max(b.confirmed_at for b in buyers)
    paid = [b for b in buyers if b.confirmed]
    figures = requests.get(f"{api}/v1/{namespace}/items/hot", timeout=10).json()
    assert (figures["consumed"], figures["held"], figures["available"]) == (UNITS, 0, 0)
    assert len(paid) == UNITS  # exactly the units, each to one paying buyer
    assert all(b.holds <= 1 and len(b.passes) <= 1 for b in buyers)  # never admitted twice
    assert max(admitted_seen) <= FACTOR * UNITS
    ended = requests.get(sale, timeout=10).json()
    assert ended["state"] == "sold_out"
    assert ended["used"] + ended["expired"] + ended["admitted"] <= BUYERS
    assert {b.state for b in buyers} <= {"paid", "abandoned", "sold_out", "expired", "used"}
    # Every ticket read sold_out within 2 s of the last confirm: no poll sent later than
    # that read anything else (the buyers' own polling round is not the service's lag).
    assert all(b.state != "sold_out" or b.sold_out_at for b in buyers)
    assert max(b.waiting_at for b in buyers) <= last_confirm + 2.0


def test_the_prequeue_is_drawn_at_random_and_served_first(api: str, namespace: str,
                                                          sell_token: str,
                                                          clock: RedisCounter) -> None:
    opens = int(clock.client.get(clock.keys.clock(0)) or 0) + 60_000
    opens_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(opens / 1000)) + (
        f".{opens % 1000:03d}+00:00")
    sale = the_sale(api, namespace, opens_at=opens_at, max_admitted=1)
    sell = {"Authorization": f"Bearer {sell_token}"}

    def join(buyer: str) -> str:
        joined = requests.post(f"{sale}/queue", json={"buyer": buyer}, headers=sell,
                               timeout=10)
        assert joined.status_code == 201
        return str(joined.json()["ticket"])

    early = [join(f"early-{n}") for n in range(40)]
    assert {requests.get(f"{sale}/queue/{t}", timeout=10).json()["state"]
            for t in early} == {"scheduled"}
    set_clock(clock, opens)
    late = [join(f"late-{n}") for n in range(10)]

    def positions(tickets: list[str]) -> list[int]:
        return [requests.get(f"{sale}/queue/{t}", timeout=10).json()["position"]
                for t in tickets]

    wait_until(lambda: None not in positions(early + late), 5, "the queue to open")
    early_places, late_places = positions(early), positions(late)
    assert max(early_places) < min(late_places)  # every early joiner ahead of any later one
    assert early_places != sorted(early_places)  # not in joining order
    assert late_places == sorted(late_places)  # later: first come, first served
