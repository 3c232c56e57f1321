from allocation.adapters.counter import Counter
from allocation.adapters.memory_counter import InProcessCounter, InProcessOutbox
from allocation.adapters.outbox import Outbox
from tests.counter_contract import CounterContract, OutboxContract, counter_machine


class TestInProcessCounter(CounterContract):
    def make_counter(self) -> Counter:
        return InProcessCounter()


TestInProcessCounterMatchesTheDomain = counter_machine(InProcessCounter).TestCase


class TestInProcessOutbox(OutboxContract):
    def make_pair(self) -> tuple[Counter, Outbox]:
        counter = InProcessCounter()
        return counter, InProcessOutbox(counter)
