"""A ticket's position in every state, and a gated reservation's refusals naming its sku (API.md,
"Waiting room"; probe finding 13), tried from outside over a server process of its own with a
SALE_SECRET, real PostgreSQL and Redis, beside test_waiting_room_contract.py.

`position` is "the number of tickets ahead that are still waiting (null while `scheduled`)":
sold out, a ticket keeps the place it waits at again when stock comes back; given a pass, or
of a closed sale, it has nobody ahead."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from allocation.config import Config
from tests.e2e import waiting_room_client as wr
from tests.helpers.processes import serve

SECRET = "wr-positions-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def sale_config(service_config: Config, redis_url: str) -> Iterator[Config]:
    yield from wr.own_key_space(service_config, redis_url)


@pytest.fixture(scope="module")
def sale_api(sale_config: Config) -> Iterator[str]:
    yield from serve(sale_config, extra_env={"SALE_SECRET": SECRET})


@pytest.fixture
def shop(sale_api: str, namespace: str) -> wr.Shop:
    return wr.Shop(sale_api, namespace)


def places(shop: wr.Shop, sale: str, tickets: list[str]) -> list[tuple[str, Any]]:
    return [(t["state"], t["position"]) for t in (shop.read(sale, n) for n in tickets)]


def test_every_state_but_scheduled_has_an_integer_position(shop: wr.Shop) -> None:
    shop.open_sale("last", {"tee": 1}, admit_factor=1)
    tickets = [shop.ticket_of("last", f"b{n}") for n in range(4)]
    sale_pass = shop.admitted_pass("last", tickets[0])
    wr.steady(lambda: places(shop, "last", tickets),  # every worker's figures alike
              lambda p: p == [("admitted", 0), ("waiting", 0), ("waiting", 1), ("waiting", 2)],
              "one admitted, three waiting")
    assert shop.decrement("tee", buyer="b0", sale_pass=sale_pass).status_code == 200
    # Sold out: each waiting ticket keeps its place, polled, streamed and joined alike.
    wr.until(lambda: places(shop, "last", tickets),
             lambda p: p == [("used", 0), ("sold_out", 0), ("sold_out", 1), ("sold_out", 2)],
             5, "the used pass and three sold-out places")
    with shop.stream("last", tickets[3]) as events:  # a worker's figures may lag a second
        streamed = wr.until(events.next, lambda e: e["state"] == "sold_out", 5, "sold_out")
        assert streamed["position"] == 2
    first = shop.join("last", "b4")
    assert first.status_code == 201, first.text
    joined = wr.until(lambda: shop.join("last", "b4").json(),  # again: the same ticket
                      lambda j: j["state"] == "sold_out", 5, "the join to read sold_out")
    assert (joined["ticket"], joined["position"]) == (first.json()["ticket"], 3)
    tickets.append(joined["ticket"])
    # Stock comes back: they wait again in their order, from the places they kept.
    assert shop.refund("tee", buyer="b0").status_code == 200
    wr.steady(lambda: places(shop, "last", tickets),
              lambda p: p == [("used", 0), ("admitted", 0), ("waiting", 0), ("waiting", 1),
                              ("waiting", 2)], "the queue again after a refund")
    assert shop.close("last").status_code == 200
    wr.until(lambda: places(shop, "last", tickets), lambda p: p == [("closed", 0)] * 5, 5,
             "every ticket to read closed")
    with shop.stream("last", tickets[4]) as events:
        streamed = wr.until(events.next, lambda e: e["state"] == "closed", 5, "closed")
        assert streamed["position"] == 0


def test_a_gated_reservations_403_names_the_gated_line(shop: wr.Shop) -> None:
    shop.open_sale("door", {"tee": 5})
    shop.open_sale("next", {"cap": 5})
    shop.item("free", 5)
    good = shop.admitted_pass("door", shop.ticket_of("door", "ann"))
    lines = [{"sku": "free", "qty": 1}, {"sku": "tee", "qty": 1}]
    for refused, error in [
            (shop.reserve(lines, buyer="ann"), "pass_required"),
            (shop.reserve(lines, buyer="ann", sale_pass=wr.forged(good)[1]), "pass_invalid"),
            (shop.reserve(lines, buyer="bob", sale_pass=good), "pass_invalid")]:
        assert (refused.status_code, refused.json()["error"], refused.json().get("sku")) == (
            403, error, "tee"), refused.text
    # Lines of two sales: the first line of the second is named (a worker that has not read
    # that sale yet hears of it from the hold's script: pass_required, naming it too).
    both = wr.until(lambda: shop.reserve([*lines, {"sku": "cap", "qty": 1}], buyer="ann",
                                         sale_pass=good),
                    lambda r: r.json().get("error") == "pass_invalid", 5, "two sales' lines")
    assert (both.status_code, both.json().get("sku")) == (403, "cap"), both.text
    wr.refused(shop.decrement("tee", buyer="ann"), 403, "pass_required")  # its path names it
    assert all(shop.sold_nothing(sku, 5) for sku in ("tee", "cap", "free"))
    held = shop.reserve(lines, buyer="ann", sale_pass=good)
    assert held.status_code == 201, held.text
