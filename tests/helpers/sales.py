"""Many buyers of one hot item, from threads or from processes of their own."""

from __future__ import annotations

import multiprocessing
import threading

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands

ATTEMPTS = 3000  # purchases tried by sell_from_processes


def buy(app: Application, namespace: str, keys: range, sku: str = "hot") -> int:
    """One unit per key, each key a purchase; how many were sold."""
    sold = 0
    for n in keys:
        if app.bus.handle(commands.Decrement(namespace, sku, 1, f"buyer-{n}")).ok:
            sold += 1
    return sold


def _buyer_process(config: Config, namespace: str, start: int, stop: int,
                   results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    app = bootstrap(config)
    threads, sold, lock = [], [0], threading.Lock()

    def run(keys: range) -> None:
        n = buy(app, namespace, keys)
        with lock:
            sold[0] += n

    step = (stop - start) // 8 + 1
    for t in range(8):
        th = threading.Thread(target=run, args=(range(start + t * step,
                                                      min(start + (t + 1) * step, stop)),))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    results.put(sold[0])


def sell_from_processes(config: Config, namespace: str, processes: int = 4) -> int:
    """ATTEMPTS purchases of the hot item from ``processes`` processes of 8 threads each."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    share = ATTEMPTS // processes
    procs = [ctx.Process(target=_buyer_process,
                         args=(config, namespace, p * share, (p + 1) * share, results))
             for p in range(processes)]
    for p in procs:
        p.start()
    sold = sum(results.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return int(sold)
