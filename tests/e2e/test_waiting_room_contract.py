"""The waiting room (API.md, "Waiting room (a sale's front door)"), tried from outside as a client
would: a server process of its own with a SALE_SECRET, real PostgreSQL and Redis, one test per
promise of the contract. Time passes on the scripts' test clock (ADR 0031), never by sleeping."""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from allocation.adapters.token_store import TokenStore
from allocation.config import Config
from tests.e2e import waiting_room_client as wr
from tests.helpers.processes import Process, allocation_command, serve, service_env

server = contextmanager(serve)
SECRET = "wr-contract-" + uuid.uuid4().hex
URL_SAFE = re.compile(r"^[A-Za-z0-9._~-]+$")


@pytest.fixture(scope="module")
def sale_config(service_config: Config, redis_url: str) -> Iterator[Config]:
    yield from wr.own_key_space(service_config, redis_url)


@pytest.fixture(scope="module")
def sale_api(sale_config: Config) -> Iterator[str]:
    yield from serve(sale_config, extra_env={"SALE_SECRET": SECRET})


@pytest.fixture
def shop(sale_api: str, namespace: str) -> wr.Shop:
    return wr.Shop(sale_api, namespace)


@pytest.fixture
def clock(redis_url: str, sale_config: Config) -> Iterator[wr.ScriptClock]:
    with closing(wr.ScriptClock(redis_url, sale_config)) as moved:
        yield moved


def test_a_sale_answers_its_fields_with_the_defaults(shop: wr.Shop) -> None:
    made = shop.open_sale("launch", {"tee": 5, "cap": 3})
    assert set(made) == wr.SALE_FIELDS
    assert {k: made[k] for k in wr.SALE_FIELDS - {"opens_at"}} == {
        "namespace": shop.namespace, "sale": "launch", "skus": made["skus"], "state": "open",
        "admit_factor": 2, "pass_ttl_seconds": 300, "max_admitted": None, "waiting": 0,
        "admitted": 0, "used": 0, "expired": 0, "available": 8}
    assert sorted(made["skus"]) == ["cap", "tee"]
    assert shop.figures_of("launch") == made


@pytest.mark.parametrize(("field", "value"), [
    ("admit_factor", 0), ("admit_factor", 11), ("admit_factor", True), ("admit_factor", "2"),
    ("pass_ttl_seconds", 29), ("pass_ttl_seconds", 3601), ("pass_ttl_seconds", 60.5),
    ("max_admitted", 0), ("max_admitted", 1_000_001), ("skus", []), ("skus", "tee"),
    ("skus", [f"s{n}" for n in range(101)]),
    ("opens_at", "tomorrow"), ("shape", "round")])
def test_a_sale_out_of_bounds_is_400_naming_the_field_and_makes_nothing(
        shop: wr.Shop, field: str, value: Any) -> None:
    shop.item("tee", 5)
    refused = shop.put_sale("bad", {"skus": ["tee"], field: value})
    assert (refused.status_code, refused.json().get("field")) == (400, field), refused.text
    assert shop.sale("bad").status_code == 404
    assert shop.decrement("tee").status_code == 200  # not gated by the sale refused


@pytest.mark.parametrize("terms", [
    {"admit_factor": 1, "pass_ttl_seconds": 30, "max_admitted": 1},
    {"admit_factor": 10, "pass_ttl_seconds": 3600, "max_admitted": 1_000_000}])
def test_the_bounds_themselves_are_accepted(shop: wr.Shop, terms: dict[str, int]) -> None:
    made = shop.open_sale("edge", {"tee": 5}, **terms)
    assert {k: made[k] for k in terms} == terms


def test_put_again_is_200_when_the_same_and_409_otherwise(shop: wr.Shop) -> None:
    opens = wr.iso(datetime.datetime.now(datetime.UTC).replace(microsecond=0)
                   - datetime.timedelta(minutes=1))
    made = shop.open_sale("drop", {"tee": 5}, opens_at=opens, admit_factor=3)
    assert wr.moment(made["opens_at"]) == wr.moment(opens)
    again = shop.put_sale("drop", {"skus": ["tee"], "opens_at": opens, "admit_factor": 3})
    assert (again.status_code, again.json()) == (200, made)
    wr.refused(shop.put_sale("drop", {"skus": ["tee"], "opens_at": opens, "admit_factor": 4}),
               409, "already_exists")
    assert shop.figures_of("drop")["admit_factor"] == 3


def test_a_sku_in_another_open_sale_is_409_sku_gated_until_that_sale_closes(shop: wr.Shop) -> None:
    shop.open_sale("first", {"tee": 5})
    shop.item("cap", 5)
    clash = shop.put_sale("second", {"skus": ["cap", "tee"]})
    assert (clash.status_code, clash.json()["error"], clash.json()["sku"]) == (
        409, "sku_gated", "tee")
    assert shop.sale("second").status_code == 404
    closed = shop.close("first")
    assert (closed.status_code, closed.json()["state"]) == (200, "closed")
    assert shop.put_sale("second", {"skus": ["cap", "tee"]}).status_code == 201


def test_an_unknown_sku_is_404_naming_it(shop: wr.Shop) -> None:
    shop.item("tee", 5)
    missing = shop.put_sale("ghost", {"skus": ["tee", "nope"]})
    assert (missing.status_code, missing.json()["sku"]) == (404, "nope"), missing.text
    assert shop.sale("ghost").status_code == 404
    assert shop.decrement("tee").status_code == 200


def test_closing_ungates_its_skus_and_refuses_joins(shop: wr.Shop) -> None:
    shop.open_sale("gone", {"tee": 5})
    ticket = shop.ticket_of("gone", "ann")
    assert shop.close("gone").json()["state"] == "closed"
    assert shop.figures_of("gone")["state"] == "closed"
    assert shop.decrement("tee").status_code == 200  # no pass needed any more
    wr.refused(shop.join("gone", "bob"), 409, "sale_closed")
    shop.reads("gone", ticket, "closed")
    assert shop.close("never").status_code == 404
    assert shop.sale("never").status_code == 404


def test_joining_is_201_then_200_with_the_same_ticket(shop: wr.Shop) -> None:
    shop.open_sale("q", {"tee": 5})
    first = shop.join("q", "ann")
    again = shop.join("q", "ann")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["ticket"] == first.json()["ticket"]
    ticket = first.json()
    assert {"ticket", "state", "position"} <= set(ticket) <= wr.TICKET_FIELDS
    assert URL_SAFE.match(ticket["ticket"]) and len(ticket["ticket"]) <= 512
    assert shop.join("nosuch", "ann").status_code == 404


def test_a_ticket_is_polled_and_streamed_without_a_token_of_its_own_sale_only(
        shop: wr.Shop) -> None:
    shop.open_sale("a", {"tee": 5})
    shop.open_sale("b", {"cap": 5})
    ticket, elsewhere = shop.ticket_of("a", "ann"), shop.ticket_of("b", "ann")
    polled = shop.poll("a", ticket)
    assert polled.status_code == 200 and polled.json()["ticket"] == ticket
    with shop.stream("a", ticket) as events:
        assert events.status == 200
        assert "text/event-stream" in events.response.headers["Content-Type"]
        assert events.next()["ticket"] == ticket
    refused = [elsewhere, *wr.forged(ticket), "x" * 40]
    assert [shop.poll("a", t).status_code for t in refused] == [404] * len(refused)
    assert shop.poll("nosuch", ticket).status_code == 404
    for t in (elsewhere, wr.forged(ticket)[1]):
        with shop.stream("a", t) as events:
            assert events.status == 404


def test_a_gated_sku_without_a_pass_is_403_pass_required_and_sells_nothing(shop: wr.Shop) -> None:
    shop.open_sale("door", {"tee": 5})
    shop.item("free", 5)
    for refused in (shop.decrement("tee", buyer="ann"), shop.decrement("tee"),
                    shop.reserve([{"sku": "free", "qty": 1}, {"sku": "tee", "qty": 1}],
                                 buyer="ann")):
        wr.refused(refused, 403, "pass_required")
    assert shop.sold_nothing("tee", 5) and shop.sold_nothing("free", 5)
    assert shop.decrement("free").status_code == 200  # an ungated sku needs none


def test_forged_other_sales_and_other_buyers_passes_are_403_pass_invalid(shop: wr.Shop) -> None:
    shop.open_sale("door", {"tee": 5})
    shop.open_sale("next", {"cap": 5})
    good = shop.admitted_pass("door", shop.ticket_of("door", "ann"))
    other_sale = shop.admitted_pass("next", shop.ticket_of("next", "ann"))
    bob_ticket = shop.ticket_of("door", "bob")
    for bad, buyer in [*((f, "ann") for f in wr.forged(good)), (other_sale, "ann"),
                       (good, "bob"), (bob_ticket, "bob")]:
        wr.refused(shop.decrement("tee", buyer=buyer, sale_pass=bad), 403, "pass_invalid")
        wr.refused(shop.reserve([{"sku": "tee", "qty": 1}], buyer=buyer, sale_pass=bad),
                   403, "pass_invalid")
    assert shop.sold_nothing("tee", 5)
    assert shop.decrement("tee", buyer="ann", sale_pass=good).status_code == 200


def test_a_pass_is_used_once_and_the_buyers_limit_still_applies(shop: wr.Shop) -> None:
    shop.item("tee", 5, limit_per_buyer=1)
    assert shop.put_sale("once", {"skus": ["tee"]}).status_code == 201
    ticket = shop.ticket_of("once", "ann")
    sale_pass = shop.admitted_pass("once", ticket)
    wr.refused(shop.decrement("tee", 2, buyer="ann", sale_pass=sale_pass), 409, "limit_exceeded")
    assert shop.decrement("tee", buyer="ann", sale_pass=sale_pass).status_code == 200
    shop.refund("tee", buyer="ann")
    wr.refused(shop.decrement("tee", buyer="ann", sale_pass=sale_pass), 403, "pass_invalid")
    shop.reads("once", ticket, "used")
    assert shop.figures("tee")["consumed"] == 0  # sold one, refunded it, nothing since
    assert shop.figures_of("once")["used"] == 1


def test_an_unused_pass_expires_and_gives_its_room_back(
        shop: wr.Shop, clock: wr.ScriptClock) -> None:
    shop.open_sale("brief", {"tee": 1}, admit_factor=1, pass_ttl_seconds=30)
    first, second = shop.ticket_of("brief", "ann"), shop.ticket_of("brief", "bob")
    sale_pass = shop.admitted_pass("brief", first)
    assert shop.read("brief", second)["state"] == "waiting"
    clock.move(31)
    shop.reads("brief", first, "expired", 5)
    wr.refused(shop.decrement("tee", buyer="ann", sale_pass=sale_pass), 403, "pass_invalid")
    assert shop.decrement("tee", buyer="bob",
                          sale_pass=shop.admitted_pass("brief", second)).status_code == 200
    assert shop.figures_of("brief")["expired"] == 1


def test_passes_outstanding_never_exceed_the_factor_times_available(
        shop: wr.Shop, clock: wr.ScriptClock) -> None:
    shop.open_sale("herd", {"tee": 3}, admit_factor=2, pass_ttl_seconds=30)
    tickets = [shop.ticket_of("herd", f"b{n}") for n in range(10)]
    wr.steady(lambda: shop.states("herd", tickets),  # first come, first served
              lambda s: s == ["admitted"] * 6 + ["waiting"] * 4,
              "six passes for three units at factor 2")
    assert [shop.read("herd", t)["position"] for t in tickets[6:]] == [0, 1, 2, 3]
    sale_pass = shop.read("herd", tickets[0])["pass"]
    assert shop.decrement("tee", buyer="b0", sale_pass=sale_pass).status_code == 200
    wr.steady(lambda: shop.figures_of("herd"),  # 5 out, room for 2 x 2: no one more
              lambda f: (f["admitted"], f["available"]) == (5, 2), "five passes, two units")
    assert shop.states("herd", tickets[6:]) == ["waiting"] * 4
    clock.move(31)  # the five unused passes expire: room for 2 x 2
    wr.steady(lambda: shop.states("herd", tickets[6:]), lambda s: s == ["admitted"] * 4,
              "four passes for the two units left")
    assert shop.figures_of("herd")["admitted"] == 4 and shop.figures_of("herd")["expired"] == 5


def test_max_admitted_caps_the_passes_outstanding(shop: wr.Shop) -> None:
    shop.open_sale("few", {"tee": 100}, max_admitted=2)
    tickets = [shop.ticket_of("few", f"b{n}") for n in range(5)]
    wr.steady(lambda: shop.states("few", tickets),
              lambda s: s == ["admitted"] * 2 + ["waiting"] * 3, "two passes and no more")


def test_sold_out_reaches_every_waiting_ticket_and_a_refund_reopens_the_queue(
        shop: wr.Shop) -> None:
    shop.open_sale("last", {"tee": 1}, admit_factor=1)
    tickets = [shop.ticket_of("last", f"b{n}") for n in range(4)]
    sale_pass = shop.admitted_pass("last", tickets[0])
    with shop.stream("last", tickets[3]) as events:
        assert events.next()["state"] == "waiting"
        held = shop.reserve([{"sku": "tee", "qty": 1}], buyer="b0", sale_pass=sale_pass)
        assert held.status_code == 201, held.text
        for states in wr.observe(lambda: shop.states("last", tickets[1:]), 1.5):  # one held
            assert "sold_out" not in states
        assert shop.reservation(held.json()["id"], "confirm").status_code == 200
        wr.until(lambda: shop.states("last", tickets[1:]), lambda s: s == ["sold_out"] * 3, 5,
              "every waiting ticket to read sold_out")
        sold_out = wr.until(events.next, lambda e: e["state"] == "sold_out", 5, "sold_out")
        assert sold_out["ticket"] == tickets[3]
    shop.reads("last", tickets[0], "used")
    assert shop.figures_of("last")["state"] == "sold_out"
    assert shop.refund("tee", buyer="b0").status_code == 200
    wr.steady(lambda: shop.states("last", tickets[1:]),  # in their order
              lambda s: s == ["admitted", "waiting", "waiting"], "the queue again after a refund")
    assert shop.read("last", tickets[3])["position"] == 1


def test_a_retry_of_the_purchase_that_used_the_pass_answers_as_it_first_did(
        shop: wr.Shop) -> None:
    shop.open_sale("retry", {"tee": 5, "cap": 5})
    ann = shop.admitted_pass("retry", shop.ticket_of("retry", "ann"))
    bought = shop.decrement("tee", buyer="ann", sale_pass=ann, key="ann-1")
    assert bought.status_code == 200, bought.text
    again = shop.decrement("tee", buyer="ann", sale_pass=ann, key="ann-1")
    assert (again.status_code, again.content) == (200, bought.content)
    assert again.headers["Idempotent-Replayed"] == "true"
    wr.refused(shop.decrement("tee", buyer="ann", sale_pass=ann), 403, "pass_invalid")
    bob = shop.admitted_pass("retry", shop.ticket_of("retry", "bob"))
    lines = [{"sku": "cap", "qty": 1}]
    held = shop.reserve(lines, buyer="bob", sale_pass=bob, key="bob-1")
    assert held.status_code == 201, held.text
    again = shop.reserve(lines, buyer="bob", sale_pass=bob, key="bob-1")
    assert (again.status_code, again.content) == (201, held.content)
    wr.refused(shop.reserve(lines, buyer="bob", sale_pass=bob), 403, "pass_invalid")
    assert (shop.figures("tee")["consumed"], shop.figures("cap")["held"]) == (1, 1)


def test_a_tickets_stream_sends_each_state_once(shop: wr.Shop) -> None:
    shop.open_sale("once", {"tee": 1}, admit_factor=1)
    ann = shop.admitted_pass("once", shop.ticket_of("once", "ann"))
    bob = shop.ticket_of("once", "bob")
    with shop.stream("once", bob) as events:
        assert events.next()["state"] == "waiting"
        assert shop.decrement("tee", buyer="ann", sale_pass=ann).status_code == 200
        assert events.next()["state"] == "sold_out"  # the next event is news, not the first


def test_a_pre_queue_is_drawn_at_random_ahead_of_later_joiners(
        shop: wr.Shop, clock: wr.ScriptClock) -> None:
    opens = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=8)
    made = shop.open_sale("draw", {"tee": 100}, opens_at=wr.iso(opens), max_admitted=1)
    assert made["state"] == "scheduled"
    early = [shop.join("draw", f"e{n}").json() for n in range(12)]
    assert [(t["state"], t["position"]) for t in early] == [("scheduled", None)] * 12
    assert shop.read("draw", early[0]["ticket"])["position"] is None
    clock.move(9)  # the scripts open the sale; the server's own clock gets there too
    wr.until(lambda: shop.figures_of("draw")["state"], lambda s: s == "open", 15, "the opening")
    late = [shop.ticket_of("draw", f"l{n}") for n in range(3)]
    tickets = [t["ticket"] for t in early] + late
    served = wr.steady(lambda: shop.serving_order("draw", tickets, admitted=1),
                       lambda o: o is not None, "one admitted, 14 waiting in line")
    assert served is not None
    assert set(served[:12]) == set(range(12)) and served[12:] == [12, 13, 14]
    assert served[:12] != list(range(12)), "the pre-queue kept its join order"


def test_an_unknown_field_is_400_naming_it(shop: wr.Shop) -> None:
    shop.open_sale("strict", {"tee": 5})
    joined = shop.join("strict", "ann", body={"buyer": "ann", "vip": True})
    assert (joined.status_code, joined.json().get("field")) == (400, "vip")
    assert shop.figures_of("strict")["waiting"] == 0
    bad_buyer = shop.join("strict", "x", body={"buyer": "no spaces"})
    assert (bad_buyer.status_code, bad_buyer.json().get("field")) == (400, "buyer")


def test_access_follows_the_roles(shop: wr.Shop, engine: Engine) -> None:
    shop.open_sale("roles", {"tee": 5})
    ns, tokens = shop.namespace, TokenStore(engine)
    read, sell, admin = (shop.as_token(tokens.create(ns, r, "wr")[1])
                         for r in ("read", "sell", "admin"))
    elsewhere = shop.as_token(tokens.create(f"{ns}x", "admin", "wr")[1])
    anyone = shop.as_token(None)
    body = {"skus": ["tee"], "admit_factor": 99}  # access is decided before the body is read
    assert read.sale("roles").status_code == 200
    assert [read.put_sale("r2", body).status_code, read.close("roles").status_code,
            read.join("roles", "ann").status_code] == [403, 403, 403]
    assert sell.join("roles", "ann").status_code == 201
    assert [sell.put_sale("r2", body).status_code, sell.close("roles").status_code] == [403, 403]
    assert [elsewhere.sale("roles").status_code, elsewhere.join("roles", "bob").status_code,
            elsewhere.close("roles").status_code] == [403, 403, 403]
    for refused in (anyone.sale("roles"), anyone.join("roles", "bob"), anyone.close("roles")):
        assert refused.status_code == 401 and "Bearer" in refused.headers["WWW-Authenticate"]
    assert admin.put_sale("r2", {"skus": ["tee"]}).json()["error"] == "sku_gated"
    assert shop.figures_of("roles")["state"] == "open"


def test_servers_sharing_the_secret_accept_each_others_tickets_and_passes(
        shop: wr.Shop, sale_config: Config) -> None:
    shop.open_sale("shared", {"tee": 5})
    ticket = shop.ticket_of("shared", "ann")
    sale_pass = shop.admitted_pass("shared", ticket)
    with server(sale_config, extra_env={"SALE_SECRET": SECRET}, workers=1) as other_base:
        other = wr.Shop(other_base, shop.namespace)
        assert other.read("shared", ticket)["state"] == "admitted"
        assert other.decrement("tee", buyer="ann", sale_pass=sale_pass).status_code == 200
    with server(sale_config, extra_env={"SALE_SECRET": "another-" + SECRET},
                workers=1) as stranger_base:
        stranger = wr.Shop(stranger_base, shop.namespace)
        assert stranger.poll("shared", ticket).status_code == 404
        refused = stranger.decrement("tee", buyer="bob",
                                     sale_pass=shop.admitted_pass("shared",
                                                                  shop.ticket_of("shared", "bob")))
        wr.refused(refused, 403, "pass_invalid")


def test_sale_events_and_the_join_queue_command(shop: wr.Shop, sale_config: Config,
                                                redis_url: str) -> None:
    consumer = Process(allocation_command("consume"), {**service_env(sale_config),
                                                       "SALE_SECRET": SECRET})
    with closing(wr.EventsHeard(redis_url, sale_config.events_channel)) as heard, \
            wr.running(consumer):
        shop.open_sale("pub", {"tee": 1})
        heard.event("SaleOpened", shop.namespace)
        sale_pass = shop.admitted_pass("pub", shop.ticket_of("pub", "ann"))
        wr.until(lambda: heard.client.pubsub_numsub(sale_config.commands_channel)[0][1],
                 lambda listeners: listeners > 0, 15, "the consumer to subscribe")
        heard.publish(sale_config.commands_channel, command="JoinQueue",
                      namespace=shop.namespace, sale="pub", buyer="bob")
        joined = heard.event("QueueJoined", shop.namespace)
        assert shop.poll("pub", joined["ticket"]).status_code == 200
        assert shop.ticket_of("pub", "bob") == joined["ticket"]  # one ticket per buyer
        assert shop.decrement("tee", buyer="ann", sale_pass=sale_pass).status_code == 200
        heard.event("SaleSoldOut", shop.namespace)
        shop.close("pub")
        heard.event("SaleClosed", shop.namespace)


# A ticket's position in every state, and a gated reservation's refusals naming its sku:
# `position` is "the number of tickets ahead that are still waiting (null while `scheduled`)";
# sold out, a ticket keeps the place it waits at again when stock comes back; given a pass, or
# of a closed sale, it has nobody ahead.


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
