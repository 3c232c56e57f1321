"""The contenders, each running a scenario and checking its own correctness."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import requests
from sqlalchemy import text

from allocation.adapters import migrate
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from allocation.entrypoints import cpu_pinning
from allocation.entrypoints.ledger_worker import DEFAULT_THREADS, LedgerWorker, split
from bench.common import Result, Services, percentiles, run_threads, wait_for

HERE = Path(__file__).parent
SEED_VENV = HERE / ".seed-venv"


def config(services: Services, durability: str) -> Config:
    return Config(database_url=services.database_url, redis_url=services.redis_url,
                  redis_key_prefix=services.prefix, durability=durability,
                  db_pool_size=80, events_channel=f"{services.prefix}:events")


def on_cluster(services: Services, cluster_url: str) -> Services:
    """The same database, Redis Cluster instead of a single Redis."""
    return dataclasses.replace(services, redis_url=cluster_url, prefix=f"{services.prefix}c")


def env(cfg: Config) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": cfg.database_url, "REDIS_URL": cfg.redis_url or "",
            "REDIS_KEY_PREFIX": cfg.redis_key_prefix, "DURABILITY": cfg.durability,
            "EVENTS_CHANNEL": cfg.events_channel, "DB_POOL_SIZE": "40"}


# Where the HTTP servers' logs go: read it when a contender fails its checks.
SERVER_LOG = Path(tempfile.gettempdir()) / "allocation-bench-servers.log"
# Every process the harness starts, so that a run that fails half-way leaves none behind.
CHILDREN: list[subprocess.Popen[bytes]] = []


def stop_children() -> None:
    for child in CHILDREN:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
    CHILDREN.clear()


def ledger_worker(cfg: Config) -> subprocess.Popen[bytes]:
    """A ledger worker process, returned once it is up: in production it is already running, so
    its start-up is no part of a sale."""
    log = Path(tempfile.mkdtemp(prefix="bench-worker-")) / "stderr.log"
    with log.open("wb") as stderr:  # the child keeps its own handle
        # At idle priority, as README advises where the worker shares cores with the API.
        worker = subprocess.Popen([sys.executable, "-m", "allocation.entrypoints.cli",
                                   "ledger-worker", "--idle-priority"], env=env(cfg),
                                  stderr=stderr, stdout=subprocess.DEVNULL)
    CHILDREN.append(worker)
    if not wait_for(lambda: "started" in log.read_text(), 60):
        worker.kill()
        raise RuntimeError("the ledger worker did not start")
    return worker


def _written(cfg: Config, namespace: str) -> tuple[int, int, int]:
    bus = bootstrap(cfg)
    engine = bus.dependencies["engine"]
    with engine.connect() as conn:
        consumed, rows, bad = conn.execute(text(
            "SELECT (SELECT coalesce(sum(consumed), 0) FROM inventory_items "
            "        WHERE namespace = :ns), "
            "       (SELECT count(*) FROM inventory_ledger WHERE namespace = :ns "
            "        AND kind IN ('decrement', 'refund')), "
            "       (SELECT count(*) FROM inventory_items i WHERE namespace = :ns AND "
            "        last_seq <> (SELECT count(*) FROM inventory_ledger l "
            "        WHERE l.namespace = i.namespace AND l.sku = i.sku))"),
            {"ns": namespace}).one()
    engine.dispose()
    return int(consumed), int(rows), int(bad)


def shopping(rng: random.Random, skus: list[str], sold_out: set[str]) -> Iterator[str]:
    """The items a buyer tries, at random, until every one is known to be sold out."""
    while len(sold_out) < len(skus):
        sku = skus[0] if len(skus) == 1 else rng.choice(skus)
        if sku not in sold_out:
            yield sku


def ours(services: Services, durability: str, scenario: str, items: int, stock: int,
         buyers: int, refunds: float = 0.0, label: str = "") -> Result:
    """This project in-process through the bus; in async mode a ledger worker process writes."""
    cfg = config(services, durability)
    bus = bootstrap(cfg)
    ns = f"{scenario}-{durability}{label}".replace(" ", "-").replace(",", "")
    skus = [f"i{n}" for n in range(items)]
    bus.handle(commands.InitMany(ns, tuple((s, stock) for s in skus)))
    worker = ledger_worker(cfg) if durability == "async" else None
    sold_out: set[str] = set()  # what buyers learn is sold out, they all know (a storefront)

    def buyer(i: int) -> tuple[int, list[float]]:
        rng = random.Random(i)
        mine: list[str] = []
        latencies: list[float] = []
        n = 0
        for sku in shopping(rng, skus, sold_out):
            n += 1
            t0 = time.perf_counter()
            if mine and rng.random() < refunds:
                bus.handle(commands.Refund(ns, mine.pop(), 1, f"r{i}-{n}"))
            else:
                outcome = bus.handle(commands.Decrement(ns, sku, 1, f"b{i}-{n}"))
                if outcome.ok:
                    mine.append(sku)
                else:
                    sold_out.add(sku)
            latencies.append(time.perf_counter() - t0)
        return n, latencies

    ops, latencies, seconds = run_threads(buyers, buyer)
    p50, p99 = percentiles(latencies)
    result = Result(scenario, f"allocation in-process ({durability}){label}", ops, seconds,
                    p50, p99)
    for sku in skus:  # untimed: sell what refunds put back after the buyers left
        n = 0
        while bus.handle(commands.Decrement(ns, sku, 1, f"sweep-{sku}-{n}")).ok:
            n += 1
    live = bus.dependencies["counter"].read_many(ns, skus)
    if any(o is None or o.consumed != o.total for o in live):
        result.checks.append("not every unit sold")
    drained = wait_for(lambda: _written(cfg, ns)[0] == items * stock, 120)
    if worker is not None:
        worker.terminate()
        worker.wait(timeout=30)
    consumed, rows, gaps = _written(cfg, ns)
    if not drained or consumed != items * stock:
        result.checks.append(f"ledger holds {consumed} of {items * stock} sold")
    if gaps:
        result.checks.append(f"{gaps} items' seq has gaps")
    result.note = f"{rows} ledger rows"
    bus.dependencies["engine"].dispose()
    return result


def plain_postgres(services: Services, scenario: str, items: int, stock: int,
                   buyers: int, refunds: float = 0.0) -> Result:
    """A conditional UPDATE plus a ledger INSERT, one transaction per purchase."""
    dsn = services.database_url
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS plain_items (sku text PRIMARY KEY, "
                    "total bigint, consumed bigint)")
        cur.execute("CREATE TABLE IF NOT EXISTS plain_ledger (id bigserial PRIMARY KEY, "
                    "sku text, qty bigint, created_at timestamptz DEFAULT now())")
        cur.execute("TRUNCATE plain_items, plain_ledger")
        cur.executemany("INSERT INTO plain_items VALUES (%s, %s, 0)",
                        [(f"i{n}", stock) for n in range(items)])
    skus = [f"i{n}" for n in range(items)]
    sold_out: set[str] = set()

    def buyer(i: int) -> tuple[int, list[float]]:
        rng = random.Random(i)
        conn = psycopg2.connect(dsn)
        cur = conn.cursor()
        mine: list[str] = []
        latencies: list[float] = []
        n = 0
        for sku in shopping(rng, skus, sold_out):
            n += 1
            t0 = time.perf_counter()
            if mine and rng.random() < refunds:
                back = mine.pop()
                cur.execute("UPDATE plain_items SET consumed = consumed - 1 WHERE sku = %s "
                            "AND consumed >= 1", (back,))
                cur.execute("INSERT INTO plain_ledger (sku, qty) VALUES (%s, 1)", (back,))
            else:
                cur.execute("UPDATE plain_items SET consumed = consumed + 1 WHERE sku = %s "
                            "AND total - consumed >= 1 RETURNING consumed", (sku,))
                if cur.fetchone() is None:
                    sold_out.add(sku)
                else:
                    cur.execute("INSERT INTO plain_ledger (sku, qty) VALUES (%s, -1)", (sku,))
                    mine.append(sku)
            conn.commit()
            latencies.append(time.perf_counter() - t0)
        conn.close()
        return n, latencies

    ops, latencies, seconds = run_threads(buyers, buyer)
    p50, p99 = percentiles(latencies)
    result = Result(scenario, "plain PostgreSQL", ops, seconds, p50, p99)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:  # untimed: sell what is left
        cur.execute("INSERT INTO plain_ledger (sku, qty) SELECT sku, -1 FROM plain_items, "
                    "generate_series(1, total - consumed) WHERE total > consumed")
        cur.execute("UPDATE plain_items SET consumed = total")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT sum(consumed), sum(total), count(*) FILTER (WHERE consumed > total)"
                    " FROM plain_items")
        consumed, total, over = cur.fetchone() or (0, 0, 0)
        cur.execute("SELECT coalesce(-sum(qty), 0) FROM plain_ledger")
        (net,) = cur.fetchone() or (0,)
    if over or consumed != total:
        result.checks.append("oversold or unsold stock")
    if net != consumed:
        result.checks.append(f"ledger net {net} != consumed {consumed}")
    return result


SEED_REQUIREMENTS = ["inventory-manager==0.0.9.dev0", "sqlalchemy>=1.4,<2", "redis<6",
                     "psycopg2-binary", "flask<4", "granian>=2.5,<3"]


def ensure_seed_venv() -> Path:
    """The seed's own virtualenv, (re)installed when its requirements change."""
    python = SEED_VENV / "bin" / "python"
    stamp = SEED_VENV / "requirements.txt"
    wanted = "\n".join(SEED_REQUIREMENTS)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SEED_VENV)], check=True)
    if not stamp.exists() or stamp.read_text() != wanted:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *SEED_REQUIREMENTS],
                       check=True)
        stamp.write_text(wanted)
    return python


def seed(services: Services, scenario: str, items: int, stock: int, buyers: int,
         refunds: float = 0.0) -> Result:
    """The seed library's usage_decr / usage_incr, in its own virtualenv."""
    # Short: the seed names tables after it, and PostgreSQL stops at 63 characters.
    prefix = f"s{services.prefix[-8:]}_{abs(hash(scenario)) % 10_000}"
    args = {"database_url": services.database_url, "redis_url": services.redis_url,
            "prefix": prefix, "threads": buyers, "items": items, "stock": stock,
            "refunds": refunds, "scenario": scenario}
    out = subprocess.run([str(ensure_seed_venv()), str(HERE / "seed_driver.py"),
                          json.dumps(args)], capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        return Result(scenario, "seed inventory-manager", 0, 0.0,
                      checks=[f"crashed: {out.stderr.strip().splitlines()[-1:]}"])
    data = json.loads(out.stdout.strip().splitlines()[-1])
    result = Result(scenario, "seed inventory-manager", data["ops"], data["seconds"],
                    data.get("p50_ms"), data.get("p99_ms"))
    if scenario != "refresh_all":
        sold_net = data["sold"] - data["refunded"]
        if sold_net != items * stock:
            result.checks.append(f"sold {sold_net} of {items * stock}")
        if data["ledger_net"] != sold_net:
            result.checks.append(f"ledger net {data['ledger_net']} != sold {sold_net}")
        if any(left is None or left < 0 for left in data["left"]):
            result.checks.append("counter left negative")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(argv: list[str], environment: dict[str, str], port: int,
           workers: int) -> subprocess.Popen[bytes]:
    """A granian server, returned once every one of its ``workers`` accepts connections; its
    output goes to SERVER_LOG.

    Not merely once it answers: the first worker answers while the others still load the app,
    and wrk's 64 connections, opened at once and kept alive, would all stay on that one worker
    for the whole sale (5 of 9 runs here did so: ~0.65x the decrements)."""
    SERVER_LOG.touch()
    start = SERVER_LOG.stat().st_size
    with SERVER_LOG.open("ab") as log:  # the child keeps its own handle
        server = subprocess.Popen(argv, env=environment, stdout=log, stderr=log)
    CHILDREN.append(server)

    def started() -> int:  # granian says so as each worker enters its accept loop
        with SERVER_LOG.open("rb") as log:
            log.seek(start)
            return log.read().count(b"Started worker-")

    def up() -> bool:
        try:
            return started() >= workers and requests.get(
                f"http://127.0.0.1:{port}/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    if not wait_for(up, 60):
        server.kill()
        raise RuntimeError(f"server {argv} did not start ({started()} of {workers} workers)")
    return server


WARM_UP_SECONDS = 3
HTTP_NAMES = {"allocation": "allocation over HTTP (async)",
              "allocation-flask": "allocation over HTTP, no fast lane",
              "allocation-apart": "allocation over HTTP, ledger after",
              "seed": "seed inventory-manager over HTTP"}


def http(services: Services, who: str, seconds: int, buyers: int) -> Result:
    """Over HTTP with granian (workers = cores), driven by wrk from another process for a fixed
    time on one item whose stock does not run out. Checked on the server's side afterwards.
    ``who``: allocation (as `allocation serve` runs it), allocation-flask (the same app with
    every route left to Flask), allocation-apart (as allocation, with the ledger worker started
    once the load stops: what the API does when the worker and its database work run on other
    cores, as in production; here they share two cores with everything else), or seed."""
    name = HTTP_NAMES[who]
    if not shutil.which("wrk"):
        return Result("hot item over HTTP", name, 0, 0.0,
                      checks=["wrk is not installed (apt-get install wrk)"])
    port = free_port()
    workers = os.cpu_count() or 2
    stock = 10_000_000
    namespace = who.replace("-", "_")
    cfg = config(services, "async")
    worker = metrics_dir = None
    # Every contender is served by granian with `allocation serve`'s settings.
    granian = ["-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--blocking-threads", "16", "--no-access-log"]
    if who.startswith("allocation"):
        bus = bootstrap(cfg)
        bus.handle(commands.InitInventory(namespace, "hot", stock))
        bus.dependencies["engine"].dispose()
        worker = None if who == "allocation-apart" else ledger_worker(cfg)
        if who != "allocation-flask":
            argv = [sys.executable, "-m", "allocation.entrypoints.cli", "serve", "--port",
                    str(port), "--workers", str(workers), "--threads", "16", "--pin-workers"]
        else:
            argv = [sys.executable, *granian, "--factory", "--working-dir", str(HERE.parent),
                    "bench.flask_only:create_app"]
        metrics_dir = tempfile.mkdtemp(prefix="bench-metrics-")
        server = _serve(argv, {**env(cfg), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}, port,
                        workers)
        path = f"/v1/{namespace}/items/hot/decrements"
        counter = bootstrap(cfg).dependencies["counter"]

        def sold_now() -> int:
            live = counter.read(namespace, "hot")
            return 0 if live is None else live.consumed
    else:
        prefix = f"{services.prefix.replace('-', '_')}_http"
        args = {"database_url": services.database_url, "redis_url": services.redis_url,
                "prefix": prefix, "threads": 16, "items": 1, "stock": stock,
                "scenario": "init", "refunds": 0}
        python = ensure_seed_venv()
        subprocess.run([str(python), str(HERE / "seed_driver.py"), json.dumps(args)],
                       check=True, capture_output=True)
        server = _serve([str(python), *granian, "--working-dir", str(HERE), "seed_app:app"],
                        {**os.environ, "SEED_ARGS": json.dumps(args),
                         "PYTHONWARNINGS": "ignore"}, port, workers)
        path = "/buy/hot"

        def sold_now() -> int:
            return _seed_http_figures(services, prefix, stock)[0]
    if who in ("allocation-flask", "seed"):
        pin_workers(server, workers)
    try:
        # Unmeasured: the servers' threads and their Redis and database connections are made
        # on first use, and the first contender of a run measured ~0.8x without it.
        warm_up = _wrk(port, path, buyers, WARM_UP_SECONDS)
        load = _wrk(port, path, buyers, seconds)
        # wrk hangs up on the requests it has in flight; let the server finish them before it
        # is stopped (a stop abandons requests whose client is gone).
        _until_steady(sold_now)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    answered = load["counts"]["ok"] + load["counts"]["sold_out"] + load["counts"]["other"]
    result = Result("hot item over HTTP", name, answered, load["seconds"],
                    load["p50_ms"], load["p99_ms"])
    if any(load["counts"][k] for k in ("other", "sold_out", "socket_errors")):
        result.checks.append(f"unexpected answers: {load['counts']} (statuses: "
                             f"{load['statuses'] or 'none'}; server log: {SERVER_LOG})")
    if who.startswith("allocation"):
        sold = sold_now()
        worker = worker or ledger_worker(cfg)
        if not wait_for(lambda: _written(cfg, namespace)[1] == sold, 120):
            result.checks.append(f"ledger rows != {sold} sold")
        worker.terminate()
        worker.wait(timeout=30)
    else:
        sold, rows = _seed_http_figures(services, prefix, stock)
        if rows != sold:
            result.checks.append(f"seed ledger rows {rows} != {sold} sold")
    answered_ok = warm_up["counts"]["ok"] + load["counts"]["ok"]  # each its own sale
    if sold < answered_ok or sold > stock:
        result.checks.append(f"{sold} sold on the server, {answered_ok} answered ok")
    result.note = f"{sold} sold"
    return result


def pin_workers(server: subprocess.Popen[bytes], workers: int) -> None:
    """Hold each worker process of a granian server to a core of its own, as `allocation serve
    --pin-workers` holds its own, so that every HTTP contender is served the same way."""
    listing = Path(f"/proc/{server.pid}/task/{server.pid}/children")

    def children() -> list[int]:
        return sorted(int(pid) for pid in listing.read_text().split())

    if not wait_for(lambda: len(children()) >= workers, 60):
        raise RuntimeError(f"the server has {len(children())} of its {workers} workers")
    for slot, pid in enumerate(children()[:workers]):
        cpu_pinning.hold(pid, cpu_pinning.cpu_of(slot))


def _until_steady(read: Callable[[], int], quiet: float = 0.5, seconds: float = 30) -> None:
    """Wait until ``read()`` has not changed for ``quiet`` seconds."""
    last, since = read(), time.monotonic()

    def steady() -> bool:
        nonlocal last, since
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        return time.monotonic() - since >= quiet

    wait_for(steady, seconds)


def _seed_http_figures(services: Services, prefix: str, stock: int) -> tuple[int, int]:
    import redis

    left = redis.Redis.from_url(services.redis_url).get(f"InventoryManager.{prefix}.hot")
    with psycopg2.connect(services.database_url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {prefix}_inventory_usage_record")
        (rows,) = cur.fetchone() or (0,)
    return stock - int(left or 0), int(rows)


def _wrk(port: int, path: str, connections: int, seconds: int) -> dict[str, Any]:
    """wrk from another process: 2 threads, ``connections`` buyers, for ``seconds``."""
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                          "-s", str(HERE / "wrk_sale.lua"), f"http://127.0.0.1:{port}", "--",
                          path, uuid.uuid4().hex[:8]], capture_output=True, text=True,
                         timeout=300)
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRK "))
    data = json.loads(line[4:])
    return {"counts": {"ok": data["ok"], "sold_out": data["sold_out"],
                       "other": data["other"], "socket_errors": data["errors"]},
            "statuses": data["statuses"].strip(), "seconds": data["seconds"],
            "p50_ms": round(data["p50_ms"], 3),
            "p99_ms": round(data["p99_ms"], 3)}


def refresh_all(services: Services, items: int) -> Result:
    """Rebuild a namespace's counters from the database (async mode: fenced, batched)."""
    cfg = config(services, "async")
    bus = bootstrap(cfg)
    engine = bus.dependencies["engine"]
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO inventory_items (namespace, sku, total, consumed, last_seq, version) "
            "SELECT 'refresh', 's' || lpad(g::text, 7, '0'), 10, 0, 0, 1 "
            "FROM generate_series(1, :n) g"), {"n": items})
    began = time.perf_counter()
    progress = bus.handle(commands.RefreshAll("refresh", batch_size=2000))
    seconds = time.perf_counter() - began
    result = Result("refresh_all", "allocation", progress.refreshed, seconds)
    held = bus.dependencies["counter"].read_many("refresh", ["s0000001", f"s{items:07}"])
    if progress.refreshed != items or any(h is None or h.total != 10 for h in held):
        result.checks.append("not every item rebuilt")
    engine.dispose()
    return result


def ledger_drain(services: Services, entries: int) -> Result:
    """Time the worker writing a backlog of recorded movements to PostgreSQL."""
    cfg = config(services, "async")
    bus = bootstrap(cfg)
    items = 100
    bus.handle(commands.InitMany("drain", tuple((f"d{n}", entries) for n in range(items))))
    counter = bus.dependencies["counter"]
    pipe_counter = counter  # record the backlog quickly: many clients' worth of sales
    run_threads(8, lambda i: (sum(pipe_counter.apply("drain", f"d{(i * 7919 + n) % items}",
                                                     "decrement", 1, f"k{i}-{n}",
                                                     record=True).ok
                                  for n in range(entries // 8)), []))
    backlog = bus.dependencies["outbox"].backlog()[0]
    # As `allocation ledger-worker` runs it (its default --threads), timed in this process.
    workers = split(bus, DEFAULT_THREADS, batch_size=2000)
    threads = [threading.Thread(target=_drain, args=(w,)) for w in workers]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    written = sum(w.written for w in workers)
    result = Result("ledger drain", "allocation ledger worker", written, seconds)
    if written != backlog or backlog != entries // 8 * 8:
        result.checks.append(f"wrote {written} of a {backlog} backlog")
    consumed, _, gaps = _written(cfg, "drain")
    if consumed != backlog or gaps:
        result.checks.append("ledger and items disagree")
    bus.dependencies["engine"].dispose()
    return result


def _drain(worker: LedgerWorker) -> None:
    while worker.run_once():
        pass


def migrate_schema(services: Services) -> None:
    migrate.upgrade(services.database_url)


def scenarios_for(mode: str) -> dict[str, Any]:
    full = mode == "full"
    return {"hot_stock": 10_000 if full else 3_000, "buyers": 64,
            "many_items": 1_000, "many_stock": 10 if full else 3,
            "refund_stock": 10_000 if full else 3_000,
            "refresh_items": 100_000 if full else 20_000,
            "seed_refresh_items": 10_000 if full else 2_000,
            "drain_entries": 100_000 if full else 20_000}
