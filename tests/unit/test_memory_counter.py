from allocation.adapters.counter import Counter
from allocation.adapters.memory_counter import InProcessCounter, InProcessOutbox
from allocation.adapters.outbox import Outbox
from allocation.domain.rules import Kind
from tests.helpers.counter_contract import (
    CounterContract,
    LimitContract,
    OutboxContract,
    ReservationContract,
    counter_machine,
)


class TestInProcessCounter(ReservationContract, LimitContract, CounterContract):
    def make_counter(self) -> Counter:
        self.clock = 1_000_000
        return InProcessCounter(clock_ms=lambda: self.clock)  # a clock the test moves

    def pass_time(self, ms: int) -> None:
        self.clock += ms

    def make_counter_with_ttls(self, ttl: int, refusal_ttl: int) -> Counter:
        counter = InProcessCounter(ttl, refusal_ttl)
        self.now = 1000.0
        counter._now = lambda: self.now  # a clock the test moves
        return counter

    def assert_remembered_for(self, counter: Counter, namespace: str, sku: str, key: str,
                              move: tuple[Kind, int], seconds: int) -> None:
        kind, qty = move
        self.now = 1000.0 + seconds - 0.5
        assert counter.apply(namespace, sku, kind, qty, key).replayed, (key, seconds)
        self.now = 1000.0 + seconds + 0.5
        assert not counter.apply(namespace, sku, kind, qty, key).replayed, (key, seconds)


TestInProcessCounterMatchesTheDomain = counter_machine(InProcessCounter).TestCase


class TestInProcessOutbox(OutboxContract):
    def make_pair(self) -> tuple[Counter, Outbox]:
        counter = InProcessCounter()
        return counter, InProcessOutbox(counter)
