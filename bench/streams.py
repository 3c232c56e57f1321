"""The stock stream under a sale: the same wrk sale over HTTP without and with many stream
clients connected to the one server, the server's memory per client, and how soon every client
hears that the item sold out. The clients hold read tokens of their own, at most
``STREAMS_PER_TOKEN`` (1,000) to a token, as many shops' pages would; the server has its
open-file limit raised (`allocation serve` does), so its stream cap is above them all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import create_engine

from allocation.adapters.token_store import TokenStore
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from bench.common import Result, Services
from bench.contenders import (
    CHILDREN,
    HTTP_THREADS,
    WARM_UP_SECONDS,
    _serve,
    _wrk,
    config,
    engine_of,
    env,
    free_port,
    ledger_worker,
)

SCENARIO = "stream clients"


def stream_sale(services: Services, clients: int, seconds: int, least: float | None = None,
                items: int = 1) -> list[Result]:
    """``least``: the share of the sale without clients that it must keep with them. Over
    ``items`` items, the clients and the sales spread over all of them (the hub reads each
    sold item up to once a second), and no sell-out is timed."""
    cfg = config(services, "async")
    app = bootstrap(cfg)
    namespace, sku = f"streams{clients}x{items}", "watched" if items == 1 else "s{i}"
    for n in range(items):
        app.bus.handle(commands.InitInventory(namespace, sku.replace("{i}", str(n)),
                                              10_000_000))
    engine = create_engine(cfg.database_url)
    try:
        store = TokenStore(engine)
        token = store.create(namespace, "admin", "bench")[1]
        readers = [store.create(namespace, "read", f"bench streams {n}")[1]
                   for n in range(-(-clients // Config().streams_per_token))]
    finally:
        engine.dispose()
    port, workers = free_port(), os.cpu_count() or 2
    worker = ledger_worker(cfg)
    server = _serve([sys.executable, "-m", "allocation.entrypoints.cli", "serve", "--port",
                     str(port), "--workers", str(workers), "--threads", str(HTTP_THREADS),
                     "--pin-workers"], {**env(cfg), "AUTH": "required"}, port, workers)
    base, item = f"http://127.0.0.1:{port}", f"/v1/{namespace}/items/{sku}"
    try:
        spread = items if items > 1 else None
        _wrk(port, f"{item}/decrements", 64, WARM_UP_SECONDS, token, spread)
        alone = _wrk(port, f"{item}/decrements", 64, seconds, token, spread)
        before = _tree_rss(server.pid)
        watchers = subprocess.Popen(
            [sys.executable, "-m", "bench.stream_clients", str(port), f"{item}/stream",
             ",".join(readers), str(clients), str(items)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True, cwd=Path(__file__).parent.parent)
        CHILDREN.append(watchers)  # type: ignore[arg-type]  # stopped like the others
        assert watchers.stdin is not None and watchers.stdout is not None
        connected = int(watchers.stdout.readline().split()[1])  # "READY n"
        per_client = (_tree_rss(server.pid) - before) / max(connected, 1)
        watched = _wrk(port, f"{item}/decrements", 64, seconds, token, spread)
        sold_at = _sell_out(base, item, token) if items == 1 else None
        watchers.stdin.write("stop\n")
        watchers.stdin.flush()
        done = json.loads(watchers.stdout.readline().removeprefix("DONE "))
        watchers.wait(timeout=30)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        server.terminate()
        server.wait(timeout=30)
        engine_of(app).dispose()
    heard = sorted(t - sold_at for t in done["sold_out_at"] if t is not None and sold_at)
    rate_alone = alone["counts"]["ok"] / alone["seconds"]
    rate_watched = watched["counts"]["ok"] / watched["seconds"]
    first = Result(SCENARIO, "allocation over HTTP (async), no stream clients",
                   alone["counts"]["ok"], alone["seconds"], alone["p50_ms"],
                   alone["p99_ms"])
    over = f" over {items} items" if items > 1 else ""
    second = Result(SCENARIO, f"allocation over HTTP (async), {connected} stream clients{over}",
                    watched["counts"]["ok"], watched["seconds"], watched["p50_ms"],
                    watched["p99_ms"])
    last = heard[-1] * 1000 if heard else float("nan")
    ratio = rate_watched / rate_alone if rate_alone else 0.0
    second.note = (f"{ratio:.2f}x the sale without them; "
                   f"{per_client / 1024:.1f} KiB of server memory a client")
    if sold_at is not None:
        second.note += (f"; the sold-out event reached {len(heard)} of {connected}, the last "
                        f"{last:.0f} ms after the sale")
    if connected < clients:
        second.checks.append(f"only {connected} of {clients} streams connected")
    if sold_at is not None and (len(heard) < connected or (heard and heard[-1] > 1.0)):
        second.checks.append(f"sold-out: {len(heard)} of {connected} clients within "
                             f"{last:.0f} ms (wanted all within 1 s)")
    if least is not None and ratio < least:
        second.checks.append(f"{ratio:.2f}x the sale without them (wanted {least}x)")
    return [first, second]


def _sell_out(base: str, item: str, token: str) -> float:
    """Once the sales wrk left in flight have all landed, bring the item down to one unit and
    sell it; the moment of the sale."""
    auth = {"Authorization": f"Bearer {token}"}

    def figures() -> dict[str, Any]:
        found: dict[str, Any] = requests.get(f"{base}{item}", headers=auth, timeout=30).json()
        return found

    # Settled: no movement for a while (a late sale that sold the last unit first would tell
    # the clients "sold out" before the moment measured here).
    def moved() -> tuple[int, int, int]:
        now = figures()
        return now["total"], now["consumed"], now["held"]

    last, still_since, deadline = moved(), time.monotonic(), time.monotonic() + 30
    while time.monotonic() - still_since < 0.5:
        if time.monotonic() > deadline:
            raise RuntimeError("the item kept moving after the load stopped")
        time.sleep(0.05)  # the bench polls its own server; nothing to synchronise with
        seen = moved()
        if seen != last:
            last, still_since = seen, time.monotonic()
    down = requests.post(f"{base}{item}/adjustments",
                         json={"delta": 1 - figures()["available"]}, timeout=30,
                         headers={**auth, "Idempotency-Key": "bench-down"})
    if not down.ok:
        raise RuntimeError(f"bringing the item down: {down.status_code} {down.text}")
    moment = time.time()
    requests.post(f"{base}{item}/decrements", json={"qty": 1},
                  headers={**auth, "Idempotency-Key": "bench-last"}, timeout=30
                  ).raise_for_status()
    return moment


def _tree_rss(pid: int) -> int:
    """Resident memory (bytes) of a process and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {pid}, True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    total = 0
    for member in tree:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total
