"""The waiting room end to end (issue 27): real servers, PostgreSQL and Redis, buyers in
several processes, the scripts' clock moved by the test rather than waited for."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

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
    free_port,
    ledger_worker,
    serve,
    service_env,
    wait_until,
)
from tests.helpers.queue_buyers import FINISHED, Buyer, Plan, run_buyers, share_rounds

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
    plans = [Plan(api, namespace, "drop", "hot", sell_token, tuple(names[i::PROCESSES]), i)
             for i in range(PROCESSES)]
    item = clock.keys.item(namespace, "hot")
    admitted_seen: list[int] = []
    ctx = multiprocessing.get_context("spawn")
    rounds = ctx.Array("i", PROCESSES)
    with ctx.Pool(PROCESSES, initializer=share_rounds, initargs=(rounds,)) as pool:
        running = pool.map_async(run_buyers, plans)
        while not running.ready():
            # The never-paying buyers' holds (30 s) end as the scripts' clock passes them.
            move_clock(clock, 31_000)
            read = requests.get(sale, timeout=10)
            if read.status_code == 200:
                admitted_seen.append(read.json()["admitted"])
            else:  # a server too busy to step the queue on within its wait says so: retry
                assert read.status_code == 503, read.text
            consumed = int(clock.client.hget(item, "consumed") or 0)
            assert consumed <= UNITS
            # The next move once every process has been round its buyers since this one (and
            # 1.5 s have passed): a pass (300 s) lasts 9 rounds of each, however slow the
            # machine. Moved by the wall clock alone, a busy machine's passes expired before
            # their buyers polled again: 140-150 moves instead of about 12, to the deadline.
            made = rounds[:]
            moved_at = time.monotonic()
            while not running.ready() and time.monotonic() - moved_at < 60 and (
                    time.monotonic() - moved_at < 1.5
                    or any(then == now != FINISHED
                           for now, then in zip(rounds[:], made, strict=True))):
                running.wait(0.1)
        buyers: list[Buyer] = [b for part in running.get(timeout=10) for b in part]
    assert admitted_seen  # the figures were read
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


def admitted_pass(sale: str, sell: dict[str, str], buyer: str) -> tuple[str, str]:
    ticket = requests.post(f"{sale}/queue", json={"buyer": buyer}, headers=sell,
                           timeout=10).json()["ticket"]
    answer: dict[str, str] = {}

    def admitted() -> bool:
        answer.update(requests.get(f"{sale}/queue/{ticket}", timeout=10).json())
        return answer["state"] == "admitted"

    wait_until(admitted, 5, f"{buyer} to be admitted")
    return ticket, answer["pass"]


def test_bad_passes_are_refused_and_sell_nothing(api: str, namespace: str, sell_token: str,
                                                 clock: RedisCounter) -> None:
    sale = the_sale(api, namespace, pass_ttl_seconds=30)
    assert requests.put(f"{api}/v1/{namespace}/items/cap", json={"total": 5},
                        timeout=10).status_code == 201
    other = requests.put(f"{api}/v1/{namespace}/sales/other", json={"skus": ["cap"]},
                         timeout=10)
    assert other.status_code == 201
    sell = {"Authorization": f"Bearer {sell_token}"}
    _, ann = admitted_pass(sale, sell, "ann")
    _, others = admitted_pass(f"{api}/v1/{namespace}/sales/other", sell, "ann")

    def decrement(buyer: str, sale_pass: str | None, key: str) -> requests.Response:
        headers = {**sell, "Idempotency-Key": key}
        if sale_pass is not None:
            headers["Sale-Pass"] = sale_pass
        return requests.post(f"{api}/v1/{namespace}/items/hot/decrements", headers=headers,
                             json={"qty": 1, "buyer": buyer}, timeout=10)

    refusals = {"none": decrement("ann", None, "k1"),
                "forged": decrement("ann", ann[:-4] + ("AAAA" if ann[-4:] != "AAAA" else "BBBB"),
                                    "k2"),
                "another sale's": decrement("ann", others, "k3"),
                "another buyer's": decrement("bob", ann, "k4")}
    assert {why: (r.status_code, r.json()["error"]) for why, r in refusals.items()} == {
        "none": (403, "pass_required"), "forged": (403, "pass_invalid"),
        "another sale's": (403, "pass_invalid"), "another buyer's": (403, "pass_invalid")}
    move_clock(clock, 30_000)  # the pass's expiry, by the scripts' clock
    expired = decrement("ann", ann, "k5")
    assert (expired.status_code, expired.json()["error"]) == (403, "pass_invalid")
    item = requests.get(f"{api}/v1/{namespace}/items/hot", timeout=10).json()
    assert (item["consumed"], item["held"]) == (0, 0)


def places(clock: RedisCounter,
           namespace: str) -> tuple[dict[bytes, bytes], list[bytes | None]]:
    """Where every joiner stands, as the sale's Redis keys have it: each buyer's number and
    the pre-queue's size and key (a place is a function of these alone)."""
    sale, buyers, *_ = clock.keys.sale(namespace, "drop")
    return (clock.client.hgetall(buyers),
            clock.client.hmget(sale, ["prequeue", "order_key"]))


def kill_9(server: Process) -> None:
    """SIGKILL the server and its workers (granian's children), by their ids."""
    assert server.proc is not None
    pid = server.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)
    server.stop(kill=True)


def test_kill_9_of_a_server_mid_queue(config: Config, api: str, namespace: str,
                                      sell_token: str, clock: RedisCounter) -> None:
    """A second server is killed (-9) while it joins buyers and sells with a pass: no ticket
    loses its place, and the pass is never used twice."""
    port = free_port()
    doomed = Process(allocation_command("serve", "--port", str(port), "--workers", "1"),
                     service_env(config))
    doomed.start()
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return requests.get(f"{base}/healthz", timeout=2).ok
            except requests.ConnectionError:
                return False

        wait_until(up, 60, "the server to answer")
        sale = the_sale(api, namespace, admit_factor=1, max_admitted=2)
        sell = {"Authorization": f"Bearer {sell_token}"}
        there = f"{base}/v1/{namespace}/sales/drop"
        tickets = [requests.post(f"{there}/queue", json={"buyer": f"b{n}"}, headers=sell,
                                 timeout=10).json()["ticket"] for n in range(20)]
        _, first = admitted_pass(there, sell, "b0")
        before = places(clock, namespace)
        stop = threading.Event()

        def herd() -> None:  # joins and sales with b0's pass, in flight when it dies
            for n in itertools.count():
                if stop.is_set():
                    return
                with contextlib.suppress(requests.RequestException):
                    requests.post(f"{there}/queue", json={"buyer": f"c{n}"}, headers=sell,
                                  timeout=2)
                    requests.post(f"{base}/v1/{namespace}/items/hot/decrements", timeout=2,
                                  json={"qty": 1, "buyer": "b0"}, headers={
                                      **sell, "Idempotency-Key": f"h{n}", "Sale-Pass": first})

        thread = threading.Thread(target=herd)
        thread.start()
        time.sleep(0.3)  # not a synchronisation: the herd is mid-flight when it dies
        kill_9(doomed)
        stop.set()
        thread.join(10)
    finally:
        doomed.stop(kill=True)
    move_clock(clock, 30_000)  # a claim its server never resolved lapses, as spent
    after = places(clock, namespace)
    assert {k: v for k, v in after[0].items() if k.startswith(b"b")} == before[0]
    assert after[1] == before[1]
    for ticket in tickets:  # each still this sale's, answered by the surviving server
        assert requests.get(f"{sale}/queue/{ticket}", timeout=10).status_code == 200
    again = requests.post(f"{sale}/queue", json={"buyer": "b3"}, headers=sell, timeout=10)
    assert (again.status_code, again.json()["ticket"]) == (200, tickets[3])
    retry = requests.post(f"{api}/v1/{namespace}/items/hot/decrements", json={
        "qty": 1, "buyer": "b0"}, headers={**sell, "Idempotency-Key": "after",
                                           "Sale-Pass": first}, timeout=10)
    assert retry.status_code in (200, 403)
    consumed = requests.get(f"{api}/v1/{namespace}/items/hot", timeout=10).json()["consumed"]
    assert consumed <= 1  # one pass, one sale at most, whatever the kill interrupted
    assert retry.status_code != 200 or consumed == 1


def test_a_tickets_stream_follows_it_to_sold_out(api: str, namespace: str, sell_token: str,
                                                 clock: RedisCounter) -> None:
    sale = f"{api}/v1/{namespace}/sales/drop"
    assert requests.put(f"{api}/v1/{namespace}/items/one", json={"total": 1},
                        timeout=10).status_code == 201
    assert requests.put(sale, json={"skus": ["one"], "admit_factor": 1},
                        timeout=10).status_code == 201
    sell = {"Authorization": f"Bearer {sell_token}"}
    _, ann = admitted_pass(sale, sell, "ann")
    bob = requests.post(f"{sale}/queue", json={"buyer": "bob"}, headers=sell,
                        timeout=10).json()["ticket"]
    states: list[str] = []
    with requests.get(f"{sale}/queue/{bob}/stream", stream=True, timeout=10,
                      headers={"Authorization": None}) as streamed:  # no token: public
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith("text/event-stream")
        lines = streamed.iter_lines()

        def heard(state: str) -> bool:
            for line in lines:
                if line.startswith(b"data: "):
                    states.append(json.loads(line[6:])["state"])
                    return states[-1] == state
            return False

        wait_until(lambda: heard("waiting"), 5, "bob's first event")
        sold = requests.post(f"{api}/v1/{namespace}/items/one/decrements", json={
            "qty": 1, "buyer": "ann"}, headers={**sell, "Idempotency-Key": "k1",
                                                "Sale-Pass": ann}, timeout=10)
        assert sold.status_code == 200
        wait_until(lambda: heard("sold_out"), 10, "bob's stream to say sold out")
    assert states[0] == "waiting" and states[-1] == "sold_out"
