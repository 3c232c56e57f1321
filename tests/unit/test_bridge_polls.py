"""The RSGI bridge answers a waiting ticket's poll on its event loop, byte for byte as Flask's
route would, and leaves to the route (on a request thread) every poll that needs I/O or is
refused: an admitted ticket, a forged one, a sale not known here, figures a window old."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from allocation.entrypoints import route_table
from allocation.entrypoints.movement_requests import MAX_BODY
from allocation.entrypoints.route_table import AccessGuard
from allocation.entrypoints.rsgi_bridge import RsgiBridge
from tests.helpers.apps import FakeApp, body
from tests.unit.test_fast_lane import count_views
from tests.unit.test_sale_routes import NS, SALE, fresh, put_sale, stocked_shop

POLL = f"GET {route_table.TICKET}"  # Flask's endpoint of the poll (flask_app.create_app)


@dataclass
class Scope:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    query_string: str = ""
    proto: str = "http"
    http_version: str = "1.1"
    scheme: str = "http"
    server: str = "127.0.0.1:8000"
    client: str = "127.0.0.1:50000"


class Protocol:
    def __init__(self) -> None:
        self.sent: tuple[int, list[tuple[str, str]], bytes] | None = None

    def response_bytes(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.sent = (status, headers, data)

    async def __call__(self) -> bytes:
        return b""


def bridged(shop: FakeApp, path: str, query: str = "") -> tuple[int, list[tuple[str, str]], bytes]:
    """``query`` as granian hands it: as sent (percent-encoded or not), decoded as UTF-8."""
    guard = shop.app.wsgi_app
    assert isinstance(guard, AccessGuard)
    bridge = RsgiBridge(shop.app, threads=2, body_timeout=5, max_body=MAX_BODY,
                        application=shop.application, guard=guard)
    protocol = Protocol()
    try:
        scope = Scope("GET", path, query_string=query)
        asyncio.run(bridge.__rsgi__(scope, protocol))  # type: ignore[arg-type]
    finally:
        bridge.pool.shutdown()
    assert protocol.sent is not None
    return protocol.sent


def flasks(shop: FakeApp, path: str, query: str = ""
           ) -> tuple[int, list[tuple[str, str]], bytes]:
    """``query``'s UTF-8 bytes as a WSGI server hands them (as latin-1)."""
    response = shop.client.get(path, query_string=query)
    return response.status_code, list(response.headers), response.data


@pytest.fixture
def shop() -> FakeApp:
    shop = stocked_shop()
    put_sale(shop, opens_at="2030-01-01T00:00:00+00:00", admit_factor=1)  # opened: T0 is later
    return shop


def tickets(shop: FakeApp, *buyers: str) -> list[str]:
    """The buyers' tickets, once the process holds the sale's figures after their joins."""
    made = [body(shop.client.post(f"{SALE}/queue", json={"buyer": b}))["ticket"]
            for b in buyers]
    fresh(shop)
    flasks(shop, f"{SALE}/queue/{made[0]}")  # steps the queue on: the figures are now held
    return made


def test_a_waiting_tickets_poll_is_answered_on_the_loop_as_flask_answers_it(
        shop: FakeApp) -> None:
    # 3 units: the first three are admitted, the other two wait at places 0 and 1.
    dan, eve = tickets(shop, "ann", "bob", "cat", "dan", "eve")[3:]
    calls = count_views(shop)
    for ticket, position in ((dan, 0), (eve, 1)):
        answer = bridged(shop, f"{SALE}/queue/{ticket}")
        assert answer == flasks(shop, f"{SALE}/queue/{ticket}")
        assert answer[0] == 200 and answer[1] == [("Content-Type", "application/json"),
                                                  ("Content-Length", str(len(answer[2])))]
        assert body_of(answer) == {"ticket": ticket, "state": "waiting", "position": position}
    assert calls == Counter({POLL: 2})  # Flask's own two answers, for the comparison alone


def body_of(answer: tuple[int, list[tuple[str, str]], bytes]) -> Any:
    return json.loads(answer[2])


def test_what_needs_io_or_is_refused_goes_to_flasks_route(shop: FakeApp) -> None:
    ann, dan = tickets(shop, "ann", "bob", "cat", "dan")[::3]
    calls = count_views(shop)
    paths = [f"{SALE}/queue/{ann}",  # admitted: its pass is read from Redis
             f"{SALE}/queue/{dan[:-2]}xx",  # forged: 404
             f"/v1/{NS}/sales/other/queue/{dan}",  # another sale's: 404 (read from the record)
             f"/v1/{NS}/sales/-bad/queue/{dan}"]  # a name the schema refuses: 400
    statuses = []
    for path in paths:
        answer = bridged(shop, path)
        assert calls[POLL] == 1, path  # the bridge left it to the route
        assert answer == flasks(shop, path), path
        statuses.append(answer[0])
        calls.clear()
    assert statuses == [200, 404, 404, 400]


def test_figures_a_window_old_are_stepped_on_by_the_route(shop: FakeApp,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    dan = tickets(shop, "ann", "bob", "cat", "dan")[3]
    room = shop.application.bus.services.sales
    later = room.clock() + room.window
    monkeypatch.setattr(room, "clock", lambda: later)
    calls = count_views(shop)
    answer = bridged(shop, f"{SALE}/queue/{dan}")
    assert calls == Counter({POLL: 1}) and body_of(answer)["state"] == "waiting"
    assert bridged(shop, f"{SALE}/queue/{dan}") == answer  # stepped on: the loop's again
    assert calls == Counter({POLL: 1})


def test_a_closed_sales_tickets_read_closed_on_the_loop(shop: FakeApp) -> None:
    (dan,) = tickets(shop, "dan")
    shop.client.post(f"{SALE}/close")
    calls = count_views(shop)
    answer = bridged(shop, f"{SALE}/queue/{dan}")
    assert body_of(answer) == {"ticket": dan, "state": "closed", "position": 0}
    assert calls == Counter() and answer == flasks(shop, f"{SALE}/queue/{dan}")


def test_sold_out_tickets_keep_their_places_on_the_loop_as_in_flask(shop: FakeApp) -> None:
    """API.md: a position is null only while scheduled. Sold out, a waiting ticket keeps the
    place it waits at again when stock comes back, and both front ends say so alike."""
    dan, eve = tickets(shop, "ann", "bob", "cat", "dan", "eve")[3:]
    for sku, units in (("a", 2), ("b", 1)):  # every gated unit gone, nothing held
        moved = shop.client.post(f"/v1/{NS}/items/{sku}/adjustments", json={"delta": -units},
                                 headers={"Idempotency-Key": f"gone-{sku}"})
        assert moved.status_code == 200, moved.data
    fresh(shop)
    flasks(shop, f"{SALE}/queue/{dan}")  # steps the queue on: it reads sold out
    calls = count_views(shop)
    for ticket, position in ((dan, 0), (eve, 1)):
        answer = bridged(shop, f"{SALE}/queue/{ticket}")
        assert body_of(answer) == {"ticket": ticket, "state": "sold_out", "position": position}
        assert answer == flasks(shop, f"{SALE}/queue/{ticket}")
    assert calls == Counter({POLL: 2})  # Flask's own two answers, for the comparison alone


# (path, query, status, the field named, whether a route's view ran)
@pytest.mark.parametrize(("path", "query", "status", "field", "viewed"), [
    (f"/v1/{NS}/items", "after=\u00e9", 400, "after", True),  # a name the schema refuses
    (f"/v1/{NS}/items", "limit=\uff15", 400, "limit", True),  # fullwidth 5: not plain digits
    (f"/v1/{NS}/items", "after=%FF", 400, "after", False),  # not UTF-8
    (f"/v1/{NS}/items", "\u00e9=1", 400, "\u00e9", False),  # not a parameter of the route
    (f"/v1/{NS}/items", "limit=1&x", 400, "x", False),
    (f"/v1/{NS}/items", "limit=1&after=a", 200, None, True),
    (f"/v1/{NS}/items/a/ledger", "after_seq=\u00e9", 400, "after_seq", True),
    (f"/v1/{NS}/items/a/ledger", "after=1", 400, "after", False),
    (f"/v1/{NS}/items/a", "x=1", 400, "x", False),  # the fast lane's
    (f"/v1/{NS}/items/a", "\u00e9", 400, "\u00e9", False),
    (SALE, "x=1", 400, "x", False),
    (f"/v1/{NS}/stats", "x=1", 400, "x", False),
    ("/healthz", "x=1", 400, "x", False),  # the bridge answers /healthz itself, unless a query
    ("/readyz", "\u00e9", 400, "\u00e9", False),
    ("/openapi.json", "v=2", 400, "v", False),
])
def test_a_query_is_read_as_sent_and_checked_on_both_front_ends(
        shop: FakeApp, path: str, query: str, status: int, field: str | None,
        viewed: bool) -> None:
    calls = count_views(shop)
    answers = [bridged(shop, path, query), flasks(shop, path, query)]
    for answer in answers:
        assert answer[0] == status, (answer, path, query)
        if field is not None:
            assert body_of(answer)["field"] == field
    assert body_of(answers[0]) == body_of(answers[1])
    assert sum(calls.values()) == (2 if viewed else 0)


def test_a_polls_query_is_refused_before_the_loop_answers_it(shop: FakeApp) -> None:
    dan = tickets(shop, "ann", "bob", "cat", "dan")[3]
    calls = count_views(shop)
    for query in ("x=1", "\u00e9=1", "ticket=%FF"):
        answer = bridged(shop, f"{SALE}/queue/{dan}", query)
        assert answer[0] == 400 and body_of(answer)["error"] == "invalid_field", query
        assert body_of(answer) == body_of(flasks(shop, f"{SALE}/queue/{dan}", query))
    assert calls == Counter()
    assert body_of(bridged(shop, f"{SALE}/queue/{dan}"))["state"] == "waiting"
