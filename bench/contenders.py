"""The contenders, each running a scenario and checking its own correctness."""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
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
from typing import Any, Literal

import psycopg2
import redis
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from allocation.adapters import migrate
from allocation.adapters.counter import Line, Step
from allocation.adapters.token_store import TokenStore
from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from allocation.domain.outcome import Outcome
from allocation.entrypoints import cpu_pinning
from allocation.entrypoints.ledger_worker import DEFAULT_THREADS, LedgerWorker, split
from allocation.service_layer.results import Reservation
from bench.ceiling_apps import CHECK_AND_DECREMENT, CHECK_AND_DECREMENT_SHA
from bench.common import Result, Services, percentiles, run_threads, wait_for
from bench.serving import serve_command, serving

HERE = Path(__file__).parent
SEED_VENV = HERE / ".seed-venv"


def config(services: Services, durability: str) -> Config:
    """The run's settings over the environment's (e.g. SYNC_WAIT_SECONDS), which the processes
    the bench starts see too (``env``)."""
    return dataclasses.replace(
        Config.from_env(), database_url=services.database_url, redis_url=services.redis_url,
        redis_key_prefix=services.prefix, durability=durability, db_pool_size=80,
        events_channel=f"{services.prefix}:events")


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
    """A ledger worker process (`allocation ledger-worker`, its default threads), returned once
    it is up: in production it is already running, so its start-up is no part of a sale.

    Async: at idle priority, as README advises where the worker shares cores with the API (it
    writes behind). Sync: at normal priority, since every answer waits for its commit (at idle
    priority a load that leaves no core idle would starve it, and sync answers 503)."""
    log = Path(tempfile.mkdtemp(prefix="bench-worker-")) / "stderr.log"
    idle = ["--idle-priority"] if cfg.durability == "async" else []
    with log.open("wb") as stderr:  # the child keeps its own handle
        worker = subprocess.Popen([sys.executable, "-m", "allocation.entrypoints.cli",
                                   "ledger-worker", *idle], env=env(cfg),
                                  stderr=stderr, stdout=subprocess.DEVNULL)
    CHILDREN.append(worker)
    if not wait_for(lambda: "started" in log.read_text(), 60):
        worker.kill()
        raise RuntimeError("the ledger worker did not start")
    return worker


def worker_note(cfg: Config) -> str:
    priority = "idle" if cfg.durability == "async" else "normal"
    return f"ledger worker: a separate process, {priority} priority"


def engine_of(app: Application) -> Engine:
    if app.engine is None:
        raise RuntimeError("the application has no database engine")
    return app.engine


@functools.cache
def _checking_engine(database_url: str) -> Engine:
    """One small engine per database for the checks, which poll (a bootstrap per poll would
    open a pool and a Redis client each time)."""
    return create_engine(database_url, pool_size=2, max_overflow=2)


def _written(cfg: Config, namespace: str) -> tuple[int, int, int]:
    """The database's side of a namespace: (units consumed, ledger rows of sales and refunds,
    items whose last seq is not their count of ledger rows)."""
    with _checking_engine(cfg.database_url).connect() as conn:
        consumed, rows, bad = conn.execute(text(
            "SELECT (SELECT coalesce(sum(consumed), 0) FROM inventory_items "
            "        WHERE namespace = :ns), "
            "       (SELECT count(*) FROM inventory_ledger WHERE namespace = :ns "
            "        AND kind IN ('decrement', 'refund')), "
            "       (SELECT count(*) FROM inventory_items i WHERE namespace = :ns AND "
            "        last_seq <> (SELECT count(*) FROM inventory_ledger l "
            "        WHERE l.namespace = i.namespace AND l.sku = i.sku))"),
            {"ns": namespace}).one()
    return int(consumed), int(rows), int(bad)


def _kinds(cfg: Config, namespace: str) -> tuple[collections.Counter[str], int]:
    """A namespace's ledger rows by kind, and the units its items hold (reservations open)."""
    with _checking_engine(cfg.database_url).connect() as conn:
        rows = conn.execute(text(
            "SELECT kind, count(*) FROM inventory_ledger WHERE namespace = :ns GROUP BY kind"),
            {"ns": namespace}).all()
        held = conn.execute(text(
            "SELECT coalesce(sum(held), 0) FROM inventory_items WHERE namespace = :ns"),
            {"ns": namespace}).scalar_one()
    return collections.Counter({str(kind): int(n) for kind, n in rows}), int(held)


def shopping(rng: random.Random, skus: list[str], sold_out: set[str]) -> Iterator[str]:
    """The items a buyer tries, at random, until every one is known to be sold out."""
    while len(sold_out) < len(skus):
        sku = skus[0] if len(skus) == 1 else rng.choice(skus)
        if sku not in sold_out:
            yield sku


# A sync movement not in the ledger within SYNC_WAIT_SECONDS answers "unavailable, outcome
# unknown"; the buyer asks again with the same key, as README tells clients to, this many times.
SYNC_TRIES = 3
# How a buyer buys a unit: one decrement, or a reservation of it then its confirmation.
Sale = Literal["decrement", "reserve"]


def _asked(app: Application, command: commands.Command, unknown: list[str]) -> Any:
    """``command`` through the bus, asked again with its key while it answers "unavailable"
    (each such answer noted in ``unknown``)."""
    for _ in range(SYNC_TRIES):
        try:
            return app.bus.handle(command)
        except errors.Unavailable as exc:
            unknown.append(exc.message)
    raise RuntimeError(f"{command} answered unavailable {SYNC_TRIES} times: {unknown[-1]}")


def _namespace(*parts: str) -> str:
    return "-".join(parts).replace(" ", "-").replace(",", "").replace("+", "-")


def ours(services: Services, durability: str, scenario: str, items: int, stock: int,
         buyers: int, refunds: float = 0.0, label: str = "", limit: int | None = None,
         sale: Sale = "decrement") -> Result:
    """This project in-process through the bus, a ledger worker process writing the ledger in
    both modes (async: behind; sync: each movement is answered once the worker committed it).
    ``limit``: each item has that limit per buyer, and every sale names a buyer of its own (the
    check and the buyer's count cost what they cost; no sale is refused by them). ``sale``:
    "reserve" sells each unit in two calls, a reservation of it and its confirmation (the ledger
    then holds a hold and a confirm row a unit)."""
    cfg = config(services, durability)
    app = bootstrap(cfg)
    ns = _namespace(scenario, f"{durability}{label}")
    skus = [f"i{n}" for n in range(items)]
    app.bus.handle(commands.InitMany(ns, tuple((s, stock) for s in skus)))
    for sku in skus if limit is not None else ():
        app.bus.handle(commands.SetLimit(ns, sku, limit))
    worker = ledger_worker(cfg)
    sold_out: set[str] = set()  # what buyers learn is sold out, they all know (a storefront)
    unknown: list[str] = []  # movements answered "unavailable" (then asked again)
    net = [0] * buyers  # units each buyer was answered sold, less those refunded

    def handle(command: commands.Decrement | commands.Refund) -> Outcome:
        outcome: Outcome = _asked(app, command, unknown)
        return outcome

    def sell(sku: str, key: str, who: str | None) -> bool:
        """One unit of ``sku`` sold, as ``sale`` says; False: none left."""
        if sale == "decrement":
            return handle(commands.Decrement(ns, sku, 1, key, who)).ok
        try:
            held: Reservation = _asked(app, commands.Reserve(ns, ((sku, 1),), key, buyer=who),
                                       unknown)
        except errors.InsufficientStock:
            return False
        done: Reservation = _asked(app, commands.ConfirmReservation(ns, held.id), unknown)
        if done.state != "confirmed":
            raise RuntimeError(f"reservation {held.id} ended {done.state}, not confirmed")
        return True

    def buyer(i: int) -> tuple[int, list[float]]:
        rng = random.Random(i)
        mine: list[str] = []
        latencies: list[float] = []
        n = 0
        for sku in shopping(rng, skus, sold_out):
            n += 1
            t0 = time.perf_counter()
            if mine and rng.random() < refunds:
                back = mine.pop()
                if handle(commands.Refund(ns, back, 1, f"r{i}-{n}")).ok:
                    net[i] -= 1
                else:
                    mine.append(back)
            else:
                if sell(sku, f"b{i}-{n}", None if limit is None else f"u{i}-{n}"):
                    mine.append(sku)
                    net[i] += 1
                else:
                    sold_out.add(sku)
            latencies.append(time.perf_counter() - t0)
        return n, latencies

    ops, latencies, seconds = run_threads(buyers, buyer)
    in_ledger_then = _written(cfg, ns)[0]  # as the buyers left
    p50, p99 = percentiles(latencies)
    result = Result(scenario, f"allocation in-process ({durability}){label}", ops, seconds,
                    p50, p99)
    if durability == "sync" and in_ledger_then != sum(net):
        # Every movement has been answered by then, and each only once committed.
        result.checks.append(f"sync: the ledger held {in_ledger_then} units sold when the "
                             f"buyers left, {sum(net)} acknowledged")
    if unknown:
        result.checks.append(f"{len(unknown)} movements answered unavailable (asked again "
                             f"with their key): {unknown[0]}")
    for sku in skus:  # untimed: sell what refunds put back after the buyers left
        n = 0
        while sell(sku, f"sweep-{sku}-{n}", None if limit is None else f"sweep-{n}"):
            n += 1
            net[0] += 1
    live = app.counter.read_many(ns, skus)
    if any(o is None or o.consumed != o.total for o in live):
        result.checks.append("not every unit sold")
    if sum(net) != items * stock:
        result.checks.append(f"{sum(net)} units acknowledged sold of {items * stock}")
    drained = wait_for(lambda: _written(cfg, ns)[0] == items * stock, 120)
    worker.terminate()
    worker.wait(timeout=30)
    consumed, rows, gaps = _written(cfg, ns)
    if not drained or consumed != items * stock:
        result.checks.append(f"ledger holds {consumed} of {items * stock} sold")
    if gaps:
        result.checks.append(f"{gaps} items' seq has gaps")
    result.note = f"{rows} ledger rows; {worker_note(cfg)}"
    if sale == "reserve":
        kinds, held = _kinds(cfg, ns)
        # Each unit sold was held then confirmed; refunds gave some back afterwards.
        if not kinds["hold"] == kinds["confirm"] == items * stock + kinds["refund"] or held:
            result.checks.append(f"ledger: {dict(kinds)}, {held} units still held, for "
                                 f"{items * stock} sold")
        result.note = (f"{kinds['hold']} hold and {kinds['confirm']} confirm ledger rows; "
                       f"{worker_note(cfg)}")
    engine_of(app).dispose()
    return result


CART_LINES = 3  # distinct items in a cart, a unit of each


# A cart refused while its items had the units (another cart held them a moment): a lost sale.
FALSE_REFUSALS_AT_MOST = 0.005


def carts(services: Services, scenario: str, items: int, stock: int, buyers: int,
          label: str = "") -> Result:
    """Buyers reserve carts of CART_LINES distinct items picked at random (a unit of each) out
    of ``items`` items of ``stock`` units, and confirm them, until fewer than CART_LINES items
    have stock; a ledger worker process as in ``ours``. ops: carts sold. A refusal is counted
    false where its item still had the unit available when read right after: no cart here is
    released, so such a unit was only ever held for a cart that was undone (or the check raced).
    On a cluster, a cart the service cannot take across slots fails the row, named so."""
    cfg = config(services, "async")
    app = bootstrap(cfg)
    clustered = services.redis_url.startswith("redis+cluster")
    ns = _namespace(scenario, f"async{label}")
    skus = [f"c{n}" for n in range(items)]
    app.bus.handle(commands.InitMany(ns, tuple((s, stock) for s in skus)))
    worker = ledger_worker(cfg)
    sold_out: set[str] = set()
    unknown: list[str] = []
    refusals: list[bool] = []  # each refusal: was it false
    unsupported: list[str] = []  # why the service would not take a cart (on a cluster)
    bought = [collections.Counter[str]() for _ in range(buyers)]

    def refused(sku: str) -> None:
        live = app.counter.read(ns, sku)
        refusals.append(live is not None and live.available >= 1)
        if live is None or live.available + live.held == 0:
            sold_out.add(sku)  # nothing held either, which could come back: gone for good

    def buyer(i: int) -> tuple[int, list[float]]:
        rng = random.Random(i)
        latencies: list[float] = []
        n = 0
        while not unsupported:
            left = [sku for sku in skus if sku not in sold_out]
            if len(left) < CART_LINES:
                break
            n += 1
            lines = tuple((sku, 1) for sku in rng.sample(left, CART_LINES))
            t0 = time.perf_counter()
            try:
                held: Reservation = _asked(app, commands.Reserve(ns, lines, f"cart{i}-{n}"),
                                           unknown)
                done: Reservation = _asked(app, commands.ConfirmReservation(ns, held.id),
                                           unknown)
            except errors.InsufficientStock as exc:
                refused(str(exc.details["sku"]))
            except (errors.DomainError, redis.RedisError, redis.exceptions.RedisClusterException,
                    RuntimeError) as exc:
                if not clustered:
                    raise
                unsupported.append(f"{type(exc).__name__}: {exc}")
                break
            else:
                if done.state != "confirmed":
                    raise RuntimeError(f"cart {held.id} ended {done.state}, not confirmed")
                bought[i].update(sku for sku, _ in lines)
            latencies.append(time.perf_counter() - t0)
        return sum(bought[i].values()) // CART_LINES, latencies

    try:
        sold, latencies, seconds = run_threads(buyers, buyer)
        result = Result(scenario, f"allocation in-process (async){label}", sold,
                        seconds, *percentiles(latencies))
        if unsupported:
            result.checks.append(f"carts across cluster slots: not supported yet: "
                                 f"{unsupported[0]}")
            return result
        _check_carts(result, app, cfg, ns, skus, stock, sum(bought, collections.Counter()))
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        engine_of(app).dispose()
    false = sum(refusals)
    tried = sold + len(refusals)
    result.note = (f"false refusals: {false} of {len(refusals)} refusals, "
                   f"{false / tried if tried else 0:.2%} of {tried} carts tried; "
                   f"{worker_note(cfg)}")
    if tried and false / tried > FALSE_REFUSALS_AT_MOST:
        result.checks.append(f"{false / tried:.2%} of carts refused falsely (at most "
                             f"{FALSE_REFUSALS_AT_MOST:.1%})")
    if unknown:
        result.checks.append(f"{len(unknown)} steps answered unavailable (asked again with "
                             f"their key): {unknown[0]}")
    return result


def _check_carts(result: Result, app: Application, cfg: Config, ns: str, skus: list[str],
                 stock: int, bought: collections.Counter[str]) -> None:
    """Every unit answered sold is sold, none held, the sale ran until fewer than CART_LINES
    items had stock, and the ledger holds each line's hold and its end."""
    live = app.counter.read_many(ns, skus)
    wrong = [sku for sku, o in zip(skus, live, strict=True)
             if o is None or o.consumed != bought[sku] or o.held or o.total != stock]
    if wrong:
        result.checks.append(f"{len(wrong)} items' figures differ from the carts sold "
                             f"(first {wrong[0]})")
    if sum(1 for o in live if o is not None and o.available) >= CART_LINES:
        result.checks.append("buyers stopped while carts could still be sold")
    units = sum(bought.values())
    # Sold units can all be written while an undone cart's releases, later in their items'
    # seq, are still on their way: wait for both.
    if not wait_for(lambda: _written(cfg, ns)[0] == units and not _kinds(cfg, ns)[1], 120):
        result.checks.append(f"ledger holds {_written(cfg, ns)[0]} of {units} units sold")
    kinds, held = _kinds(cfg, ns)
    if kinds["confirm"] != units or kinds["hold"] != units + kinds["release"] + kinds["expire"]:
        result.checks.append(f"ledger: {dict(kinds)} for {units} units sold")
    if held or _written(cfg, ns)[2]:
        result.checks.append(f"ledger: {held} units held, {_written(cfg, ns)[2]} items' seq "
                             f"has gaps")


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
                    data.get("p50_ms"), data.get("p99_ms"), sales=scenario != "refresh_all")
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
HTTP_SCENARIO = "hot item over HTTP"
HTTP_NAMES = {"ceiling-empty": "ceiling: empty WSGI app",
              "ceiling-evalsha": "ceiling: WSGI app, one EVALSHA",
              "allocation": "allocation over HTTP (async)",
              "allocation-noauth": "allocation over HTTP (async), AUTH=off",
              "allocation-wsgi": "allocation over HTTP (async), WSGI interface",
              "allocation-storm": "allocation over HTTP (async), refresh storm",
              "allocation-sync": "allocation over HTTP (sync)",
              "allocation-flask": "allocation over HTTP, no fast lane",
              "allocation-apart": "allocation over HTTP, ledger after",
              "seed": "seed inventory-manager over HTTP"}
HTTP_THREADS = 16  # request threads per worker process, for every HTTP contender


def seed_granian_argv(python: str, port: int, workers: int) -> list[str]:
    """The seed's server: granian's WSGI interface (the seed's virtualenv has no RSGI bridge),
    as many workers, as many request threads."""
    return [python, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port",
            str(port), "--workers", str(workers), "--blocking-threads", str(HTTP_THREADS),
            "--workers-kill-timeout", "10", "--respawn-failed-workers", "--no-access-log",
            "--working-dir", str(HERE), "seed_app:app"]


def _ran_otherwise(server: subprocess.Popen[bytes], argv: list[str]) -> str | None:
    """Where the granian command `allocation serve` ran (it execs in place) differs from
    ``argv``, the one captured for the apps served beside it."""
    ran = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    return None if ran == argv else f"`allocation serve` ran {ran}, the bench captured {argv}"


def sell_token(cfg: Config, namespace: str) -> str:
    """A bearer token that may sell in ``namespace`` (the servers require one, AUTH=required)."""
    engine = create_engine(cfg.database_url)
    try:
        return TokenStore(engine).create(namespace, "sell", "bench")[1]
    finally:
        engine.dispose()


def http(services: Services, who: str, seconds: int, buyers: int) -> Result:
    """Over HTTP, driven by wrk from another process for a fixed time on one item whose stock
    does not run out, every request with a bearer token; checked on the server's side
    afterwards. Served as `allocation serve --workers <cores> --threads 16 --pin-workers` serves
    the API: its granian command and environment, captured (bench/serving.py), with AUTH on.
    ``who``:

    - ceiling-empty, ceiling-evalsha: bench/ceiling_apps.py, the most this server and this
      Redis allow (an app that answers a constant; one that runs one EVALSHA per request);
    - allocation: `allocation serve`, DURABILITY=async, a ledger worker process at idle priority;
    - allocation-sync: the same with DURABILITY=sync, its ledger worker at normal priority
      (each answer waits for the worker's commit);
    - allocation-flask: the same app as allocation with every route left to Flask;
    - allocation-apart: as allocation, with the ledger worker started once the load stops: what
      the API does when the worker and its database work run on other cores, as in production
      (here they share two cores with everything else);
    - seed: the seed library behind Flask (bench/seed_app.py), on granian's WSGI interface with
      as many workers (pinned) and request threads."""
    name = HTTP_NAMES[who]
    ceiling = who.startswith("ceiling")

    def tagged(result: Result) -> Result:
        result.group, result.ceiling = "http", ceiling
        result.reference = who == "ceiling-evalsha"
        return result

    if not shutil.which("wrk"):
        return tagged(Result(HTTP_SCENARIO, name, 0, 0.0,
                             checks=["wrk is not installed (apt-get install wrk)"]))
    port = free_port()
    workers = os.cpu_count() or 2
    stock = 10_000_000
    namespace = who.replace("-", "_")
    cfg = config(services, "sync" if who == "allocation-sync" else "async")
    worker = metrics_dir = None
    served_otherwise: str | None = None
    # The servers that do not check it get a token as long: every contender the same requests.
    token = "alloc_" + "x" * 43
    path = f"/v1/{namespace}/items/hot/decrements"
    sold_now: Callable[[], int]
    argv, served_env = serve_command({**env(cfg), "AUTH": "required",
                                      "PYTHONPATH": str(HERE.parent)}, port, workers,
                                     HTTP_THREADS)
    if ceiling:
        key = f"{services.prefix}:ceiling:http"
        client = redis.Redis.from_url(services.redis_url)
        client.set(key, stock)
        server = _serve(serving(argv, f"bench.ceiling_apps:{who.removeprefix('ceiling-')}_app"),
                        {**served_env, "CEILING_REDIS_URL": services.redis_url,
                         "CEILING_KEY": key}, port, workers)

        def sold_now() -> int:
            return stock - int(client.get(key) or 0)
    elif who.startswith("allocation"):
        app = bootstrap(cfg)
        app.bus.handle(commands.InitInventory(namespace, "hot", stock))
        engine_of(app).dispose()
        token = sell_token(cfg, namespace)
        worker = None if who == "allocation-apart" else ledger_worker(cfg)
        auth = "off" if who == "allocation-noauth" else "required"
        if who == "allocation-flask":
            server = _serve(serving(argv, "bench.flask_only:create_app"), served_env, port,
                            workers)
        else:
            metrics_dir = tempfile.mkdtemp(prefix="bench-metrics-")
            wsgi = ["--behind-buffering-proxy"] if who == "allocation-wsgi" else []
            server = _serve([sys.executable, "-m", "allocation.entrypoints.cli", "serve",
                             "--port", str(port), "--workers", str(workers), "--threads",
                             str(HTTP_THREADS), "--pin-workers", *wsgi],
                            {**env(cfg), "AUTH": auth,
                             "PROMETHEUS_MULTIPROC_DIR": metrics_dir}, port, workers)
            if not wsgi:
                served_otherwise = _ran_otherwise(server, argv)
        counter = app.counter

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
        server = _serve(seed_granian_argv(str(python), port, workers),
                        {**os.environ, "SEED_ARGS": json.dumps(args),
                         "PYTHONWARNINGS": "ignore"}, port, workers)
        pin_workers(server, workers)
        path = "/buy/hot"

        def sold_now() -> int:
            return _seed_http_figures(services, prefix, stock)[0]
    try:
        # Unmeasured: the servers' threads and their Redis and database connections are made
        # on first use, and the first contender of a run measured ~0.8x without it.
        warm_up = _wrk(port, path, buyers, WARM_UP_SECONDS, token)
        storm = (RefreshStorm(port, namespace, cfg) if who == "allocation-storm" else None)
        try:
            load = _wrk(port, path, buyers, seconds, token)
        finally:
            refreshes = storm.stop() if storm is not None else {}
        in_ledger_then = _written(cfg, namespace)[1] if who == "allocation-sync" else 0
        # wrk hangs up on the requests it has in flight; let the server finish them before it
        # is stopped (a stop abandons requests whose client is gone).
        _until_steady(sold_now)
    finally:
        server.terminate()
        server.wait(timeout=30)
        for directory in (metrics_dir, served_env.get("PROMETHEUS_MULTIPROC_DIR")):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
    answered = load["counts"]["ok"] + load["counts"]["sold_out"] + load["counts"]["other"]
    result = tagged(Result(HTTP_SCENARIO, name, answered, load["seconds"], load["p50_ms"],
                           load["p99_ms"]))
    if served_otherwise:
        result.checks.append(served_otherwise)
    if who == "allocation-storm":
        # 503 ("being rebuilt; retry") is an expected answer under a refresh storm.
        # wrk's script names only the first few other statuses: all 503 means all were 503s.
        only_busy = set(load["statuses"].split()) <= {"503"}
        busy = load["counts"]["other"] if only_busy else 0
        load["counts"]["other"] -= busy
        answered -= busy
        result.ops = answered
        storm_note = (f"{sum(refreshes.values())} refreshes by 2 admin clients "
                      f"{dict(refreshes)}; {busy} sales answered 503")
    for run in (warm_up, load):
        if any(run["counts"][k] for k in ("other", "sold_out", "socket_errors")):
            result.checks.append(f"unexpected answers: {run['counts']} (statuses: "
                                 f"{run['statuses'] or 'none'}; server log: {SERVER_LOG})")
    answered_ok = warm_up["counts"]["ok"] + load["counts"]["ok"]  # each its own sale
    if who == "ceiling-empty":
        result.note = "answers a constant"
        return result
    if who == "allocation-sync" and in_ledger_then < answered_ok:
        # each 200 was sent once the worker had committed its movement
        result.checks.append(f"sync: the ledger held {in_ledger_then} rows as the load "
                             f"stopped, {answered_ok} sales answered 200")
    sold = sold_now()
    if who.startswith("allocation"):
        worker = worker or ledger_worker(cfg)
        if not wait_for(lambda: _written(cfg, namespace)[1] == sold, 120):
            result.checks.append(f"ledger rows {_written(cfg, namespace)[1]} != {sold} sold")
        worker.terminate()
        worker.wait(timeout=30)
    elif not ceiling:
        sold, rows = _seed_http_figures(services, prefix, stock)
        if rows != sold:
            result.checks.append(f"seed ledger rows {rows} != {sold} sold")
    if sold < answered_ok or sold > stock:
        result.checks.append(f"{sold} sold on the server, {answered_ok} answered ok")
    result.note = f"{sold} sold"
    if who.startswith("allocation"):
        result.note += f"; {worker_note(cfg)}" + (
            ", started after the load" if who == "allocation-apart" else "")
    if who == "allocation-storm":
        result.note += f"; {storm_note}"
    return result


class RefreshStorm:
    """Two admin clients looping POST .../refresh on the hot item (issue 17's denial of
    service), for as long as the load runs."""

    def __init__(self, port: int, namespace: str, cfg: Config) -> None:
        engine = create_engine(cfg.database_url)
        try:
            self.token = TokenStore(engine).create(namespace, "admin", "bench storm")[1]
        finally:
            engine.dispose()
        self.url = f"http://127.0.0.1:{port}/v1/{namespace}/items/hot/refresh"
        self.stopping = threading.Event()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(2)]
        for thread in self.threads:
            thread.start()

    def _loop(self) -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {self.token}"}
        while not self.stopping.is_set():
            try:
                status = session.post(self.url, headers=headers, timeout=30).status_code
            except requests.RequestException:
                status = 0
            self.statuses[status] += 1

    def stop(self) -> dict[int, int]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)
        return dict(self.statuses)


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


def _wrk(port: int, path: str, connections: int, seconds: int, token: str,
         items: int | None = None) -> dict[str, Any]:
    """wrk from another process: 2 threads, ``connections`` buyers, for ``seconds``, each
    request with ``token`` as its bearer token (over ``items`` items: "{i}" in the path)."""
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                          "-s", str(HERE / "wrk_sale.lua"), f"http://127.0.0.1:{port}", "--",
                          path, uuid.uuid4().hex[:8], token,
                          *([str(items)] if items else [])], capture_output=True, text=True,
                         timeout=300)
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRK "))
    data = json.loads(line[4:])
    return {"counts": {"ok": data["ok"], "sold_out": data["sold_out"],
                       "other": data["other"], "socket_errors": data["errors"]},
            "statuses": data["statuses"].strip(), "seconds": data["seconds"],
            "p50_ms": round(data["p50_ms"], 3),
            "p99_ms": round(data["p99_ms"], 3)}


def refresh_all(services: Services, items: int) -> Result:
    """Rebuild a namespace Redis lost from the database (async mode: fenced, batched): the
    recovery after a failover. Every second item has a limit per buyer, a buyer who bought one
    and holds two more (an open hold), and they must come back with it."""
    cfg = config(services, "async")
    app = bootstrap(cfg)
    engine = engine_of(app)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO inventory_items (namespace, sku, total, consumed, held, last_seq, "
            "version, limit_per_buyer) "
            "SELECT 'refresh', 's' || lpad(g::text, 7, '0'), 10, (g % 2 = 0)::int, "
            "2 * (g % 2 = 0)::int, 3 * (g % 2 = 0)::int, 1, CASE WHEN g % 2 = 0 THEN 5 END "
            "FROM generate_series(1, :n) g"), {"n": items})
        conn.execute(text(
            "INSERT INTO inventory_ledger (namespace, sku, seq, kind, qty, total_after, "
            "available_after, idempotency_key, created_at, buyer, reservation_id, held_after, "
            "expires_at) "
            "SELECT 'refresh', 's' || lpad(g::text, 7, '0'), m.seq, m.kind, m.qty, 10, m.avail, "
            "CASE WHEN m.seq = 2 THEN 'k' || g END, now(), "
            "CASE WHEN m.seq > 1 THEN 'b' || (g % 50) END, "
            "CASE WHEN m.seq = 3 THEN 'r' || g END, m.held, "
            "CASE WHEN m.seq = 3 THEN now() + interval '1 hour' END "
            "FROM generate_series(2, :n, 2) g, (VALUES (1, 'init', 10, 10, 0), "
            "(2, 'decrement', 1, 9, 0), (3, 'hold', 2, 7, 2)) AS m(seq, kind, qty, avail, held)"),
            {"n": items})
    began = time.perf_counter()
    progress = app.bus.handle(commands.RefreshAll("refresh", batch_size=2000))
    seconds = time.perf_counter() - began
    result = Result("refresh_all", "allocation", progress.refreshed, seconds, sales=False)
    last = items - items % 2
    held = app.counter.read_many("refresh", ["s0000001", f"s{last:07}"])
    if progress.refreshed != items or any(h is None or h.total != 10 for h in held):
        result.checks.append("not every item rebuilt")
    if held[1] is None or (held[1].consumed, held[1].held, held[1].limit) != (1, 2, 5):
        result.checks.append("holds or limits not restored")
    # The buyer's allowance: one bought, two held, of a limit of 5.
    refused = app.counter.apply("refresh", f"s{last:07}", "decrement", 3, None,
                                buyer=f"b{last % 50}")
    if (refused.status, refused.remaining) != ("limit_exceeded", 2):
        result.checks.append("buyers' allowances not restored")
    engine.dispose()
    return result


def ledger_drain(services: Services, entries: int) -> Result:
    """Time the worker writing a backlog of recorded movements to PostgreSQL."""
    cfg = config(services, "async")
    app = bootstrap(cfg)
    items = 100
    app.bus.handle(commands.InitMany("drain", tuple((f"d{n}", entries) for n in range(items))))
    counter = app.counter  # record the backlog quickly: many clients' worth of sales
    run_threads(8, lambda i: (sum(counter.apply("drain", f"d{(i * 7919 + n) % items}",
                                                     "decrement", 1, f"k{i}-{n}",
                                                     record=True).ok
                                  for n in range(entries // 8)), []))
    backlog = app.outbox.backlog()[0]
    written, seconds = _timed_drain(app)
    result = Result("ledger drain", "allocation ledger worker", written, seconds, sales=False)
    if written != backlog or backlog != entries // 8 * 8:
        result.checks.append(f"wrote {written} of a {backlog} backlog")
    consumed, _, gaps = _written(cfg, "drain")
    if consumed != backlog or gaps:
        result.checks.append("ledger and items disagree")
    engine_of(app).dispose()
    return result


# A round of the shop ledger_drain_holds records: a decrement, then two carts of two items
# held, one confirmed and the other released; each line of each step one entry.
ROUND_ENTRIES = 1 + 2 * (2 + 2)


def ledger_drain_holds(services: Services, entries: int) -> Result:
    """``ledger_drain`` with a backlog as a shop with reservations leaves it: decrements, holds,
    confirms and releases (ROUND_ENTRIES a round), recorded with no worker running."""
    cfg = config(services, "async")
    app = bootstrap(cfg)
    ns, items = "drain-holds", 100
    app.bus.handle(commands.InitMany(ns, tuple((f"d{n}", entries) for n in range(items))))
    counter = app.counter
    rounds = entries // 8 // ROUND_ENTRIES

    def shop(i: int) -> tuple[int, list[float]]:
        done = 0
        for n in range(rounds):
            sku = [f"d{(i * 7919 + n * 5 + k) % items}" for k in range(5)]
            done += counter.apply(ns, sku[0], "decrement", 1, f"k{i}-{n}", record=True).ok
            ends: tuple[tuple[Step, tuple[Line, ...]], ...] = (
                ("confirm", ((sku[1], 1), (sku[2], 1))), ("release", ((sku[3], 1), (sku[4], 1))))
            for end, lines in ends:
                rid = counter.reservation_id(ns, f"{end}{i}-{n}")
                done += counter.reservation_step("hold", ns, rid, lines, ttl_ms=600_000,
                                                 fingerprint=rid).ok
                done += counter.reservation_step(end, ns, rid, lines).ok
        return done, []

    steps = run_threads(8, shop)[0]
    backlog = app.outbox.backlog()[0]
    written, seconds = _timed_drain(app)
    result = Result("ledger drain, holds", "allocation ledger worker", written, seconds,
                    sales=False)
    expected = 8 * rounds * ROUND_ENTRIES
    if steps != 8 * rounds * 5 or written != backlog or backlog != expected:
        result.checks.append(f"wrote {written} of a {backlog} backlog; {expected} recorded")
    consumed, _, gaps = _written(cfg, ns)
    kinds, held = _kinds(cfg, ns)
    movements = {"decrement": 8 * rounds, "hold": 32 * rounds, "confirm": 16 * rounds,
                 "release": 16 * rounds}
    if consumed != 24 * rounds or held or gaps or any(
            kinds[kind] != n for kind, n in movements.items()):
        result.checks.append(f"ledger and items disagree: {dict(kinds)}, {consumed} consumed, "
                             f"{held} held, {gaps} items' seq with gaps")
    result.note = ", ".join(f"{n} {kind}" for kind, n in movements.items()) + " entries"
    engine_of(app).dispose()
    return result


def _timed_drain(app: Application) -> tuple[int, float]:
    """The outbox's backlog written by workers as `allocation ledger-worker` runs them (its
    default --threads), timed in this process: (entries written, seconds)."""
    workers = split(app, DEFAULT_THREADS, batch_size=2000)
    threads = [threading.Thread(target=_drain, args=(w,)) for w in workers]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(w.written for w in workers), time.perf_counter() - began


def _drain(worker: LedgerWorker) -> None:
    while worker.run_once():
        pass
    worker.close()


def redis_benchmark_ceiling(services: Services, requests_: int, clients: int = 50) -> Result:
    """The in-process ceiling: redis-benchmark running ``CHECK_AND_DECREMENT`` (one EVALSHA,
    unpipelined) from ``clients`` connections on one key, against the run's Redis. Checked:
    every request decremented once."""
    name = f"ceiling: redis-benchmark EVALSHA, {clients} clients"
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return Result("hot item", name, 0, 0.0, ceiling=True, reference=True,
                      checks=["redis-benchmark is not installed (apt-get install redis-tools)"])
    client = redis.Redis.from_url(services.redis_url)
    key = f"{services.prefix}:ceiling:evalsha"
    stock = 2 * requests_  # never runs out
    client.set(key, stock)
    loaded = client.script_load(CHECK_AND_DECREMENT)  # type: ignore[no-untyped-call]
    if loaded != CHECK_AND_DECREMENT_SHA:
        raise RuntimeError("SCRIPT LOAD answered another SHA1")
    out = subprocess.run([exe, "-u", services.redis_url, "-c", str(clients), "-n",
                          str(requests_), "--csv", "EVALSHA", CHECK_AND_DECREMENT_SHA, "1", key,
                          "1"], capture_output=True, text=True, timeout=900)
    rows = list(csv.DictReader(line for line in out.stdout.splitlines() if line.startswith('"')))
    if out.returncode != 0 or len(rows) != 1:
        return Result("hot item", name, 0, 0.0, ceiling=True, reference=True,
                      checks=[f"redis-benchmark failed ({out.returncode}): "
                              f"{(out.stderr or out.stdout).strip()[-300:]}"])
    rps = float(rows[0]["rps"])
    result = Result("hot item", name, requests_, requests_ / rps if rps else 0.0,
                    float(rows[0]["p50_latency_ms"]), float(rows[0]["p99_latency_ms"]),
                    ceiling=True, reference=True)
    decremented = stock - int(client.get(key) or 0)
    if decremented != requests_:
        result.checks.append(f"{decremented} of {requests_} EVALSHAs decremented "
                             f"({out.stdout.strip()[-200:]})")
    result.note = f"{requests_} requests, unpipelined"
    return result


def migrate_schema(services: Services) -> None:
    migrate.upgrade(services.database_url)


def scenarios_for(mode: str) -> dict[str, Any]:
    full = mode == "full"
    return {"hot_stock": 30_000 if full else 10_000, "buyers": 64,
            "many_items": 1_000, "many_stock": 10 if full else 3,
            "refund_stock": 10_000 if full else 3_000,
            "refresh_items": 100_000 if full else 20_000,
            "seed_refresh_items": 10_000 if full else 2_000,
            "drain_entries": 100_000 if full else 20_000,
            "cart_items": 20, "cart_stock": 1_500 if full else 300, "stream_clients": 1_000,
            "many_stream_clients": 5_000, "streamed_items": 2_000,
            "partition_seconds": 10,
            "redis_benchmark_requests": 1_000_000 if full else 200_000}
