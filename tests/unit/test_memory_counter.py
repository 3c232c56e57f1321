from allocation.adapters.counter import Counter
from allocation.adapters.memory_counter import InProcessCounter
from tests.counter_contract import CounterContract, counter_machine


class TestInProcessCounter(CounterContract):
    def make_counter(self) -> Counter:
        return InProcessCounter()


TestInProcessCounterMatchesTheDomain = counter_machine(InProcessCounter).TestCase
