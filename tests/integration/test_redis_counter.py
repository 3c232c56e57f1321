from __future__ import annotations

import threading
import uuid

import pytest
import redis

from allocation.adapters.counter import Counter, Restored
from allocation.adapters.outbox import Outbox
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_ledger_progress import RedisLedgerProgress
from allocation.adapters.redis_outbox import RedisOutbox
from allocation.domain import errors
from allocation.domain.outcome import Figures, Outcome
from allocation.domain.rules import Kind
from tests.helpers.counter_contract import (
    CounterContract,
    LimitContract,
    OutboxContract,
    RedisRecordTtls,
    ReservationContract,
    check_reserved_events,
    counter_machine,
    heard,
    move_clock,
)


@pytest.fixture(autouse=True, scope="module")
def _redis(request: pytest.FixtureRequest, redis_url: str, key_space: KeySpace) -> None:
    # The contract and machine classes build counters without fixtures; hand them the settings:
    # a key space of this module's own under the run's, as they stop its scripts' clock.
    request.module.REDIS = (redis_url, KeySpace(f"{key_space.prefix}:counter",
                                                key_space.partitions))


REDIS: tuple[str, KeySpace] = ("", KeySpace())


def _evalsha_calls(counter: RedisCounter) -> int:
    stats = counter.client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0))


def make_redis_counter() -> RedisCounter:
    url, keys = REDIS
    return RedisCounter(redis.Redis.from_url(url), keys)


class TestRedisCounter(RedisRecordTtls, ReservationContract, LimitContract, CounterContract):
    def make_counter(self) -> Counter:
        return make_redis_counter()

    def pass_time(self, ms: int) -> None:
        move_clock(self.counter, ms)

    def make_counter_with_ttls(self, ttl: int, refusal_ttl: int) -> Counter:
        url, keys = REDIS
        return RedisCounter(redis.Redis.from_url(url), keys, ttl, refusal_ttl=refusal_ttl)

    def test_the_sweeper_leaves_no_item_listed_due_in_a_reservations_partition(self) -> None:
        """On one Redis a reservation lives in the partition its key names, and its lines'
        items are listed due in that partition's index: the sweep clears them there too."""
        assert isinstance(self.counter, RedisCounter)
        keys = self.counter.keys
        sku = "swept"
        rid = next(rid for n in range(1000) if int((rid := self.rid(f"s{n}")).partition(".")[0])
                   != keys.partition(self.ns, sku))
        self.counter.load(self.ns, sku, Figures(5, 0, seq=1))
        assert self.hold(rid, [(sku, 2)], ttl_ms=200).ok
        home = keys.due(int(rid.partition(".")[0]))
        assert self.counter.client.zscore(home, f"{self.ns}\n{sku}") is not None
        self.pass_time(300)
        self.counter.sweep()
        assert self.counter.client.zscore(home, f"{self.ns}\n{sku}") is None
        assert self.available(sku) == (0, 0, 5)

    def test_a_record_an_older_version_wrote_still_replays(self) -> None:
        """Before 0.8 an idempotency record had no seq: "fingerprint|status|total|consumed"."""
        counter = make_redis_counter()
        counter.client.set(counter.keys.idempotency(self.ns, "sku", "old"), "decrement:3|ok|10|3",
                           ex=60)
        assert counter.apply(self.ns, "sku", "decrement", 3, "old") == Outcome(
            "ok", Figures(10, 3, seq=0), replayed=True)
        assert counter.apply(self.ns, "sku", "decrement", 4, "old") == Outcome(
            "idempotency_key_reused", Figures(10, 3, seq=0), replayed=True)
        counter.client.set(counter.keys.idempotency(self.ns, "sku", "old-refusal"),
                           "decrement:30|insufficient_stock|10|0", ex=60)
        assert counter.apply(self.ns, "sku", "decrement", 30, "old-refusal") == Outcome(
            "insufficient_stock", Figures(10, 0, seq=0), replayed=True)
        assert counter.read(self.ns, "sku") == Figures(10, 0, seq=1)  # nothing applied

    def test_a_restore_lists_an_item_due_at_its_earliest_hold_with_its_parts_and_gate(
            self) -> None:
        """rebuild.lua's load: an item's rows in one command each (its buyers, its holds), the
        partition's due index at the earliest of the item's holds, a gate only where the record
        has one, stale parts replaced."""
        assert isinstance(self.counter, RedisCounter)
        counter, keys = self.counter, self.counter.keys
        soon, later = 3_000_000_000_000, 3_500_000_000_000
        counter.client.hset(keys.buyers(self.ns, "a"), "stale", 9)
        counter.restore_many(self.ns, Restored(
            ["a", "b"], [10, 10], [0, 0], [3, 1], [4, 2], "g", [None, 4], ["", "sale-1"],
            units=(["a", "a", "b"], ["ann", "bob", "cat"], [2, 1, 1]),
            holds=(["a", "a", "b"], ["r1", "r2", "r3"], [2, 1, 1], ["ann", "bob", "cat"],
                   [later, soon, later])))
        due = keys.due(keys.partition(self.ns, "a"))
        assert counter.client.zscore(due, f"{self.ns}\na") == soon
        assert counter.client.hgetall(keys.buyers(self.ns, "a")) == {b"ann": b"2", b"bob": b"1"}
        assert counter.client.zrange(keys.expiries(self.ns, "a"), 0, -1) == [b"r2", b"r1"]
        assert counter.client.hget(keys.holds(self.ns, "b"), "r3") == f"1|{later}|cat".encode()
        assert counter.client.hmget(keys.item(self.ns, "a"), "gate", "gen", "limit") == [
            None, b"g", None]
        assert counter.client.hmget(keys.item(self.ns, "b"), "gate", "limit") == [b"sale-1",
                                                                                  b"4"]

    def test_seqs_of_a_lost_batch_a_gated_hash_and_a_held_item(self) -> None:
        """rebuild.lua's seqs: a hash that holds only a sale's gate is not an item."""
        assert isinstance(self.counter, RedisCounter)
        counter, keys = self.counter, self.counter.keys
        lost = [f"lost{n}" for n in range(40)]
        assert counter.seqs_many(self.ns, lost) == [None] * 40
        counter.client.hset(keys.item(self.ns, "lost3"), "gate", "sale-1")
        counter.load(self.ns, "lost7", Figures(5, 1, seq=4, gen="g"))
        assert counter.seqs_many(self.ns, lost) == [("g", 4) if n == 7 else None
                                                    for n in range(40)]

    def test_loading_an_item_marks_its_ledger_written_up_to_its_seq(self) -> None:
        counter = make_redis_counter()
        counter.load_many(self.ns, [("a", Figures(5, 1, seq=7)), ("b", Figures(3, 0, seq=1))])
        assert counter.client.hget(counter.keys.item(self.ns, "a"), "written") == b"7"
        assert counter.client.hget(counter.keys.item(self.ns, "b"), "written") == b"1"

    def test_a_mark_on_a_key_that_is_not_an_item_is_skipped_not_raised(self) -> None:
        """A writer marks after its commit; a corrupt key must not stop it (it used to kill
        the worker with WRONGTYPE, and every later sale waited on a ledger nobody wrote)."""
        counter = make_redis_counter()
        progress = RedisLedgerProgress(counter.client, counter.keys)
        counter.load_many(self.ns, [("fine", Figures(5, 0, seq=1, gen="g"))])
        counter.client.set(counter.keys.item(self.ns, "corrupt"), "not a hash")
        progress.mark({(self.ns, "corrupt"): ("g", 2), (self.ns, "fine"): ("g", 2)})
        assert progress.read(self.ns, "fine") == ("g", 2)
        assert counter.client.get(counter.keys.item(self.ns, "corrupt")) == b"not a hash"

    def test_every_key_of_a_movement_shares_one_hash_slot(self) -> None:
        counter = make_redis_counter()
        keys = counter.keys
        for sku in ("a", "b", "sku-99"):
            tags = {k[k.index("{"):k.index("}") + 1]
                    for k in (keys.item("ns", sku), keys.idempotency("ns", sku, "k{x}"),
                              keys.outbox_of("ns", sku))}
            assert len(tags) == 1

    def test_scripts_are_reloaded_after_script_flush(self) -> None:
        counter = make_redis_counter()
        counter.client.script_flush()
        assert counter.apply(self.ns, "sku", "decrement", 1, "k").ok

    def test_callers_sharing_a_round_trip_each_get_their_own_reply(self) -> None:
        counter = make_redis_counter()
        skus = [f"b{i}" for i in range(4)]
        counter.load_many(self.ns, ((sku, Figures(100, 0, seq=1)) for sku in skus))
        replies: dict[tuple[str, str], Outcome] = {}
        before = _evalsha_calls(counter)

        def buyer(t: int) -> None:
            for n in range(50):
                sku, key = skus[(t + n) % 4], f"t{t}-{n}"
                replies[(sku, key)] = counter.apply(self.ns, sku, "decrement", 1, key)

        threads = [threading.Thread(target=buyer, args=(t,)) for t in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert _evalsha_calls(counter) - before < 800  # calls did share commands
        for sku in skus:
            sold = [o for (s, _), o in replies.items() if s == sku and o.ok]
            assert sorted(o.figures.seq for o in sold) == list(range(2, 102))
        for (sku, key), got in replies.items():
            # Redis remembers each key's outcome: the caller was handed that one, not a
            # neighbour's.
            again = counter.apply(self.ns, sku, "decrement", 1, key)
            assert again.replayed and (again.status, again.figures.consumed) == (
                got.status, got.figures.consumed)

    def test_an_unreachable_redis_is_unavailable(self) -> None:
        down = RedisCounter(redis.Redis(port=1, socket_connect_timeout=0.5), KeySpace())
        with pytest.raises(errors.Unavailable):
            down.apply("ns", "sku", "decrement", 1, "k")


class TestRedisOutbox(OutboxContract):
    def make_pair(self) -> tuple[Counter, Outbox]:
        url, keys = REDIS
        # Streams of its own, so other tests' entries are not in the way (still under the run's
        # prefix, so the run's clean-up removes them).
        own = KeySpace(f"{keys.prefix}:o{uuid.uuid4().hex[:8]}", keys.partitions)
        counter = RedisCounter(redis.Redis.from_url(url), own)
        return counter, RedisOutbox(counter.client, own)


def test_entries_an_older_version_wrote_are_still_read(redis_url: str,
                                                       key_space: KeySpace) -> None:
    """Before 0.6 an outbox entry had a field per value, before 0.9 its packed head had no
    buyer; a backlog left then is written."""
    client = redis.Redis.from_url(redis_url)
    own = KeySpace(f"{key_space.prefix}:old{uuid.uuid4().hex[:8]}", key_space.partitions)
    outbox = RedisOutbox(client, own)
    partition = own.partition("ns", "s")
    client.xadd(own.outbox(partition), {
        "ns": "ns", "sku": "s", "seq": 7, "kind": "refund", "qty": 2, "key": "r1", "total": 10,
        "consumed": 3})
    client.xadd(own.outbox(partition), {
        "ns": "ns", "sku": "s", "seq": 8, "kind": "adjust", "qty": -1, "key": "", "total": 9,
        "consumed": 3})
    client.xadd(own.outbox(partition), {"m": "9 1 9 4 decrement 2 1 gx|nsskey"})
    client.xadd(own.outbox(partition), {"m": "10 1 9 5 decrement 2 1 gx 3|nssannkey"})
    assert [e[2:12] for e in outbox.read(partition, "w", 1000)] == [
        ("ns", "s", 7, "refund", 2, "r1", 10, 3, None, None),
        ("ns", "s", 8, "adjust", -1, None, 9, 3, None, None),  # no generation before 0.8
        ("ns", "s", 9, "decrement", 1, "key", 9, 4, "gx", None),  # no buyer before 0.9
        ("ns", "s", 10, "decrement", 1, "key", 9, 5, "gx", "ann")]  # nor holds


TestRedisCounterMatchesTheDomain = counter_machine(make_redis_counter).TestCase


def test_recorded_movements_publish_the_domain_events(redis_url: str, key_space: KeySpace
                                                      ) -> None:
    """The script publishes what domain.events.of_movement says, as the publisher would."""
    from allocation.adapters.event_publisher import event_message
    from allocation.domain import events

    client = redis.Redis.from_url(redis_url)
    channel = f"{key_space.prefix}:events:{uuid.uuid4().hex[:6]}"
    listener = client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel)
    counter = RedisCounter(client, key_space, events_channel=channel)
    ns = "ev-" + uuid.uuid4().hex[:6]
    counter.load(ns, "s", Figures(3, 0, seq=1))
    moves: list[tuple[Kind, int, str | None]] = [
        ("decrement", 2, "k1"), ("refund", 1, "r1"), ("adjust", -1, None),
        ("decrement", 1, "k2"), ("decrement", 5, "k3"),  # the last is refused: no event
        ("adjust", 2, "a2"), ("adjust", -2, "a3")]  # taken down to none left: sold out
    expected = []
    for kind, qty, key in moves:
        outcome = counter.apply(ns, "s", kind, qty, key, record=True)
        if outcome.ok:
            expected += [event_message(e) for e in events.of_movement(
                kind, ns, "s", qty, key, outcome.figures.total, outcome.figures.consumed)]
    got = heard(listener, len(expected), "the published events")
    assert got == expected
    assert [e["event"] for e in got] == ["Decremented", "Refunded", "TotalAdjusted",
                                        "Decremented", "SoldOut", "TotalAdjusted",
                                        "TotalAdjusted", "SoldOut"]
    listener.close()


def test_a_hold_publishes_reserved_events_with_the_requests_key(redis_url: str,
                                                                key_space: KeySpace) -> None:
    channel = f"{key_space.prefix}:events:{uuid.uuid4().hex[:6]}"
    counter = RedisCounter(redis.Redis.from_url(redis_url), key_space, events_channel=channel)
    check_reserved_events(counter, "ev-" + uuid.uuid4().hex[:6], ["a", "b"])
