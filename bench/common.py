"""Shared pieces of the benchmark: a scratch database and key space, timing, results."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


@dataclass
class Result:
    scenario: str
    contender: str
    ops: int
    seconds: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    checks: list[str] = field(default_factory=list)  # failed checks; empty means correct
    note: str = ""
    # "in-process" or "http": the rows of a group are a share of the group's reference ceiling,
    # measured in the same run (report's "of ceiling"): redis-benchmark's EVALSHA in process,
    # the bare one-EVALSHA WSGI app over HTTP.
    group: str = "in-process"
    ceiling: bool = False  # a ceiling row, not a contender: no "ours x" for it
    reference: bool = False  # the ceiling its group's rows are a share of
    sales: bool = True  # its operations are sales (else no "of ceiling": rebuilds, ledger rows)

    @property
    def throughput(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return not self.checks

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "throughput": round(self.throughput, 1), "ok": self.ok}


def percentiles(latencies: list[float]) -> tuple[float | None, float | None]:
    if len(latencies) < 2:
        return None, None
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return round(cuts[49] * 1000, 3), round(cuts[98] * 1000, 3)


def run_threads(count: int, body: Callable[[int], tuple[int, list[float]]]
                ) -> tuple[int, list[float], float]:
    """Run ``body(i)`` in ``count`` threads started together; (ops, latencies, seconds).
    A body that raises makes this raise once every thread is done (rather than count as a
    buyer who bought nothing)."""
    results: list[tuple[int, list[float]]] = [(0, [])] * count
    failures: list[Exception] = []
    start = threading.Barrier(count + 1)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = body(i)
        except Exception as exc:  # noqa: BLE001 - raised again once every thread is done
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"{len(failures)} of {count} threads failed, the first with "
                           f"{failures[0]!r}") from failures[0]
    return (sum(r[0] for r in results), [x for r in results for x in r[1]], seconds)


@dataclass(frozen=True)
class Services:
    database_url: str
    redis_url: str
    prefix: str


@contextmanager
def scratch_services(admin_url: str, redis_url: str) -> Iterator[Services]:
    """A database and a Redis key prefix of this run's own, removed afterwards."""
    run = uuid.uuid4().hex[:8]
    name = f"allocation_bench_{run}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    prefix = f"bench-{run}"
    try:
        yield Services(url, redis_url, prefix)
    finally:
        client = redis.Redis.from_url(redis_url)
        seeds = (f"s{run}", f"bench_{run}")  # the seed's prefixes (see contenders.py)
        for pattern in (f"{prefix}*", *(f"{seed}*" for seed in seeds),
                        *(f"InventoryManager.{seed}*" for seed in seeds)):
            delete_matching(client, pattern)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def delete_matching(client: redis.Redis[bytes], pattern: str) -> None:
    """Delete the keys matching ``pattern``, a thousand per round trip."""
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) == 1000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def wait_for(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False
