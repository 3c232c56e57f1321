"""A database partition in the middle of an async sale over HTTP (ADR 0025): the same wrk sale
on one server without and with PostgreSQL partitioned (a proxy that forwards nothing) for the
whole measured run, while an orchestrator polls ``/readyz`` twice a second. An async sale needs
no database: sales during the partition should be at least 0.8x those without it."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading

import requests
from sqlalchemy.engine import make_url

from allocation.bootstrap import bootstrap
from allocation.domain import commands
from bench.common import Result, Services, wait_for
from bench.contenders import (
    HTTP_THREADS,
    WARM_UP_SECONDS,
    _serve,
    _written,
    _wrk,
    config,
    engine_of,
    env,
    free_port,
    ledger_worker,
    sell_token,
)
from tests.helpers.tcp_proxy import proxy_to

SCENARIO = "database partition over HTTP"
TARGET = 0.8  # sales during the partition, of those without it
POLL_SECONDS = 0.5  # an orchestrator's readiness probe period


def partition_sale(services: Services, seconds: int, buyers: int) -> list[Result]:
    """Two rows: the sale without a partition, then with one for its whole ``seconds``."""
    database = make_url(services.database_url)
    with proxy_to(database.port or 5432) as proxy:
        via_proxy = database.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False)
        cfg = dataclasses.replace(config(services, "async"), database_url=via_proxy)
        namespace, stock = "partition", 10_000_000
        app = bootstrap(cfg)
        app.bus.handle(commands.InitInventory(namespace, "hot", stock))
        engine_of(app).dispose()
        token = sell_token(cfg, namespace)
        worker = ledger_worker(cfg)
        port, workers = free_port(), os.cpu_count() or 2
        server = _serve([sys.executable, "-m", "allocation.entrypoints.cli", "serve",
                         "--port", str(port), "--workers", str(workers), "--threads",
                         str(HTTP_THREADS)], {**env(cfg), "AUTH": "required"}, port, workers)
        path = f"/v1/{namespace}/items/hot/decrements"
        stopping = threading.Event()
        ready: list[int] = []
        poller = threading.Thread(target=_poll_readiness, args=(port, stopping, ready))
        try:
            poller.start()
            _wrk(port, path, buyers, WARM_UP_SECONDS, token)
            without = _wrk(port, path, buyers, seconds, token)
            proxy.partition()
            polled_before = len(ready)
            try:
                during = _wrk(port, path, buyers, seconds, token)
                partitioned_polls = ready[polled_before:]
            finally:
                proxy.heal()
        finally:
            stopping.set()
            poller.join(timeout=30)
            server.terminate()
            server.wait(timeout=30)
        results = [_row(f"allocation over HTTP (async), {label}", run)
                   for label, run in (("no partition", without),
                                      (f"database partitioned {seconds}s", during))]
        ratio = results[1].throughput / results[0].throughput if results[0].throughput else 0
        results[1].note = f"{ratio:.2f}x the sale without it (target {TARGET}x)"
        if ratio < TARGET:
            results[1].checks.append(f"sales during the partition {ratio:.2f}x, under {TARGET}x")
        if 503 not in partitioned_polls or 0 in partitioned_polls:
            results[1].checks.append(
                f"/readyz in the partition: {partitioned_polls.count(503)} polls 503, "
                f"{partitioned_polls.count(0)} unanswered within 1 s, of {len(partitioned_polls)}")
        sold = app.counter.read(namespace, "hot")
        consumed = 0 if sold is None else sold.consumed
        if not wait_for(lambda: _written(cfg, namespace)[1] == consumed, 120):
            results[1].checks.append(f"ledger rows {_written(cfg, namespace)[1]} != "
                                     f"{consumed} sold")
        worker.terminate()
        worker.wait(timeout=30)
        return results


def _row(contender: str, run: dict[str, object]) -> Result:
    counts = run["counts"]
    assert isinstance(counts, dict)
    result = Result(SCENARIO, contender, int(counts["ok"]), float(str(run["seconds"])),
                    float(str(run["p50_ms"])), float(str(run["p99_ms"])), group="http")
    if any(counts[k] for k in ("other", "sold_out", "socket_errors")):
        result.checks.append(f"unexpected answers: {counts} ({run['statuses']})")
    return result


def _poll_readiness(port: int, stopping: threading.Event, statuses: list[int]) -> None:
    """``/readyz`` every POLL_SECONDS with a 1 s timeout, as an orchestrator probes (0: none
    in time)."""
    while not stopping.wait(POLL_SECONDS):
        try:
            statuses.append(requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                            .status_code)
        except requests.RequestException:
            statuses.append(0)

