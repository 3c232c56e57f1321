"""The waiting room when Redis loses its data (restarted without persistence) mid-sale, against
a real server whose Redis is its own (so that the test may restart it): the sale admits again
without anyone reading its items (probe 7), and the tickets and passes of the queue Redis lost
are no longer taken for the new queue's (probe 6, docs/adr/0046). Also: identical sale PUTs at
once (probe 8)."""

from __future__ import annotations

import dataclasses
import functools
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from allocation.config import Config
from tests.e2e import waiting_room_client as wr
from tests.helpers.processes import PrivateRedis, serve

SECRET = "wr-lost-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def sale_api(service_config: Config, own_redis: PrivateRedis) -> Iterator[str]:
    yield from serve(dataclasses.replace(service_config, redis_url=own_redis.url),
                     extra_env={"SALE_SECRET": SECRET})


@pytest.fixture
def shop(sale_api: str, namespace: str) -> wr.Shop:
    return wr.Shop(sale_api, namespace)


def restarted(redis_server: PrivateRedis) -> None:
    """Redis restarted with nothing kept (``--save ""``, no AOF): every key is gone."""
    redis_server.stop()
    redis_server.start()


def test_after_redis_lost_its_data_the_sale_admits_and_old_tickets_are_void(
        shop: wr.Shop, own_redis: PrivateRedis) -> None:
    shop.open_sale("lost", {"tee": 50}, max_admitted=1)
    old = {b: shop.ticket_of("lost", b) for b in ("ann", "bob", "cat")}
    ann_pass = shop.admitted_pass("lost", old["ann"])
    restarted(own_redis)
    # Nobody reads the item: the sale's loop rebuilds it, and the sale sees its 50 again.
    wr.until(lambda: shop.sale("lost"), lambda r: r.status_code == 200
             and r.json()["available"] == 50, 5, "the sale to see its item again")
    dan = shop.ticket_of("lost", "dan")  # the new queue's first: number 0 again
    dan_pass = shop.admitted_pass("lost", dan, seconds=5)
    for ticket in old.values():  # not of the new queue, whichever worker answers
        wr.until(functools.partial(shop.poll, "lost", ticket), lambda r: r.status_code == 404,
                 3, "an old ticket to be 404")
    wr.refused(shop.decrement("tee", buyer="ann", sale_pass=ann_pass), 403, "pass_invalid")
    bought = shop.decrement("tee", buyer="dan", sale_pass=dan_pass)
    assert bought.status_code == 200, bought.text  # dan's turn was not taken by ann's old pass
    again = shop.join("lost", "ann")  # one valid ticket: the new one
    assert again.status_code == 201, again.text
    assert again.json()["ticket"] != old["ann"]
    assert shop.read("lost", again.json()["ticket"])["state"] in ("waiting", "admitted")
    assert shop.poll("lost", old["ann"]).status_code == 404
    assert shop.figures("tee")["consumed"] == 1


def test_identical_sale_puts_at_once_are_201_once_and_200_for_the_rest(shop: wr.Shop) -> None:
    shop.item("q1", 5)
    shop.item("q2", 5)

    def put(name: str, body: dict[str, object]) -> requests.Response:
        client = wr.Shop(shop.base, shop.namespace)
        for _ in range(50):  # a 503 (a process's record calls all taken) is to be retried
            answer = client.put_sale(name, body)
            if answer.status_code != 503:
                return answer
            assert answer.headers.get("Retry-After")
            time.sleep(0.05)
        return answer

    for n in range(3):
        body = {"skus": ["q1", "q2"] if n % 2 else ["q2", "q1"],
                "opens_at": "2027-01-01T00:00:00+00:00"}
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _, n=n, body=body: put(f"race{n}", body), range(8)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] * 7 + [201], (codes, [r.text[:80] for r in answers])
        assert shop.close(f"race{n}").status_code == 200
