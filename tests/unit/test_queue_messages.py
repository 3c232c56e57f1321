"""``JoinQueue`` on the commands channel, answered by ``QueueJoined`` with the ticket (API.md,
"Waiting room"); a bad one by ``CommandRejected``."""

from __future__ import annotations

import json
from typing import Any

from allocation.domain import commands
from allocation.entrypoints.command_messages import judge, parse
from tests.helpers.apps import FakeApp

JOIN = {"command": "JoinQueue", "namespace": "ns", "sale": "drop", "buyer": "ann"}


def test_the_message_becomes_the_command() -> None:
    assert parse(json.dumps(JOIN)) == commands.JoinQueue("ns", "drop", "ann")


def test_joined_then_the_same_ticket_again(fake_app: FakeApp) -> None:
    fake_app.client.put("/v1/ns/items/s", json={"total": 1})
    assert fake_app.client.put("/v1/ns/sales/drop", json={"skus": ["s"]}).status_code == 201
    first, again = (judge(json.dumps(JOIN), fake_app.bus).answers for _ in range(2))
    assert [m["event"] for m in (*first, *again)] == ["QueueJoined"] * 2
    assert (first[0]["joined"], again[0]["joined"]) == (True, False)
    assert first[0]["ticket"] == again[0]["ticket"]
    polled = fake_app.client.get(f"/v1/ns/sales/drop/queue/{first[0]['ticket']}")
    assert polled.status_code == 200


def test_bad_ones_are_rejected(fake_app: FakeApp) -> None:
    bad: list[dict[str, Any]] = [{**JOIN, "buyer": "a b"}, {**JOIN, "extra": 1},
                                 {**JOIN, "sale": "nope"}]
    answers = [judge(json.dumps(m), fake_app.bus).answers[0] for m in bad]
    assert [(a["event"], a["reason"]) for a in answers] == [
        ("CommandRejected", "invalid_message"), ("CommandRejected", "invalid_message"),
        ("CommandRejected", "not_found")]


def test_a_sold_out_sales_joiner_is_told_its_place_as_a_poll_tells_it(fake_app: FakeApp) -> None:
    """API.md: a position is null only while scheduled; sold out, a ticket keeps its place."""
    fake_app.client.put("/v1/ns/items/s", json={"total": 0})  # nothing to sell, nothing held
    assert fake_app.client.put("/v1/ns/sales/drop", json={"skus": ["s"]}).status_code == 201
    first = fake_app.client.post("/v1/ns/sales/drop/queue", json={"buyer": "bob"}).get_json()
    (joined,) = judge(json.dumps(JOIN), fake_app.bus).answers
    assert (first["state"], first["position"]) == ("sold_out", 0)
    assert (joined["event"], joined["state"], joined["position"]) == ("QueueJoined",
                                                                      "sold_out", 1)
    polled = fake_app.client.get(f"/v1/ns/sales/drop/queue/{joined['ticket']}").get_json()
    assert (polled["state"], polled["position"]) == ("sold_out", 1)
