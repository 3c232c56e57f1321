"""The Streams consumer-group adapter both the outbox and the command stream read through (on
fakeredis; the e2e and integration suites run it on a real Redis)."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
import redis

from allocation.adapters.redis_consumer_group import ConsumerGroup, entry_id, lost_group

STREAM = "test:stream"


@pytest.fixture
def client() -> Iterator[redis.Redis[bytes]]:
    fake: redis.Redis[bytes] = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield fake
    fake.close()


def add(client: redis.Redis[bytes], n: int) -> list[str]:
    return [entry_id(client.xadd(STREAM, {"message": f"m{i}"})) for i in range(n)]


def test_new_entries_then_held_ones_in_batches(client: redis.Redis[bytes]) -> None:
    group = ConsumerGroup(client, STREAM, "g")
    group.ensure()
    ids = add(client, 5)
    assert [entry_id(i) for i, _ in group.read("me", ">", 10)] == ids
    batches = list(group.read_held("me", 2, most=10))
    assert [[entry_id(i) for i, _ in b] for b in batches] == [ids[:2], ids[2:4], ids[4:]]
    assert [len(b) for b in group.read_held("me", 2, most=1)] == [2]  # at most ``most``


def test_acknowledged_entries_leave_the_stream_and_the_discount(
        client: redis.Redis[bytes]) -> None:
    group = ConsumerGroup(client, STREAM, "g")
    group.ensure()
    ids = add(client, 3)
    group.read("me", ">", 10)
    client.hset("waited", ids[0], 1)
    group.ack(ids[:2], forget="waited")
    assert [entry_id(i) for i, _ in client.xrange(STREAM)] == ids[2:]
    assert client.hgetall("waited") == {}
    assert list(group.read_held("me", 10, most=10)) != []  # the third is still held


def test_deliveries_count_this_one_less_the_discounted_but_at_least_one(
        client: redis.Redis[bytes]) -> None:
    group = ConsumerGroup(client, STREAM, "g")
    group.ensure()
    ids = add(client, 2)
    group.read("me", ">", 10)
    for _ in range(2):
        entries = next(iter(group.read_held("me", 10, most=1)))
    client.hset("waited", ids[1], 5)
    assert group.deliveries(entries) == {ids[0]: 3, ids[1]: 3}
    assert group.deliveries(entries, discount="waited") == {ids[0]: 3, ids[1]: 1}


def test_idle_entries_of_another_consumer_are_claimed_going_on_from_the_last_claim(
        client: redis.Redis[bytes]) -> None:
    group = ConsumerGroup(client, STREAM, "g")
    group.ensure()
    ids = add(client, 3)
    group.read("dead", ">", 10)
    assert [entry_id(i) for i, _ in group.claim_idle("me", 0, 2)] == ids[:2]
    assert [entry_id(i) for i, _ in group.claim_idle("me", 0, 2)] == ids[2:]
    assert [entry_id(i) for i, _ in group.claim_idle("me", 0, 2, resume=False)] == ids[:2]


def test_a_lost_group_is_made_again(client: redis.Redis[bytes]) -> None:
    group = ConsumerGroup(client, STREAM, "g")
    group.ensure()
    group.ensure()  # known to exist: no BUSYGROUP
    # as a Redis that lost its data and was written again
    client.xgroup_destroy(STREAM, "g")  # type: ignore[no-untyped-call]
    with pytest.raises(redis.ResponseError) as failure:
        group.read("me", ">", 10)
    assert lost_group(failure.value)
    group.lost()
    group.ensure()
    assert group.read("me", ">", 10) == []


def test_dead_letters_go_to_their_own_stream(client: redis.Redis[bytes]) -> None:
    group = ConsumerGroup(client, STREAM, "g")
    group.dead_letter({"entry": "1-0", "reason": "bad"})
    assert [f for _, f in client.xrange(f"{STREAM}:dead")] == [{b"entry": b"1-0",
                                                                b"reason": b"bad"}]
