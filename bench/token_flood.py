"""Made-up tokens beside a sale: the same wrk sale over HTTP on one server without and with a
flood of requests each carrying a new random bearer token (16 connections at about the rate
issue 24 measured, 1,377 a second; half of the tokens of the minted format, so that each is a
token to look up). The flood's row says how its requests were answered; the sale's with the
flood says its rate as a share of the sale's without (the target is 0.8x or more). The rate
is fixed rather than as fast as the server answers: a closed loop of cheap refusals would
take a share of the CPU set by how fast they are answered, not by what they cost."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from allocation.bootstrap import bootstrap
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
    sell_token,
)

SCENARIO = "random-token flood"
HERE = Path(__file__).parent
FLOOD_CONNECTIONS = 16
FLOOD_RATE = 1400  # requests a second, all connections together


def token_flood_sale(services: Services, seconds: int) -> list[Result]:
    cfg = config(services, "async")
    app = bootstrap(cfg)
    namespace, sku = "flooded", "hot"
    app.bus.handle(commands.InitInventory(namespace, sku, 10_000_000))
    token = sell_token(cfg, namespace)
    port, workers = free_port(), os.cpu_count() or 2
    worker = ledger_worker(cfg)
    server = _serve([sys.executable, "-m", "allocation.entrypoints.cli", "serve", "--port",
                     str(port), "--workers", str(workers), "--threads", str(HTTP_THREADS),
                     "--pin-workers"], {**env(cfg), "AUTH": "required"}, port, workers)
    item = f"/v1/{namespace}/items/{sku}"
    try:
        _wrk(port, f"{item}/decrements", 64, WARM_UP_SECONDS, token)
        alone = _wrk(port, f"{item}/decrements", 64, seconds, token)
        flood = subprocess.Popen(
            ["wrk", "-t1", f"-c{FLOOD_CONNECTIONS}", f"-d{seconds + 1}s", "--timeout", "10s",
             "-s", str(HERE / "wrk_tokens.lua"), f"http://127.0.0.1:{port}", "--", item,
             str(random.randrange(1 << 30)), str(1000 * FLOOD_CONNECTIONS // FLOOD_RATE)],
            stdout=subprocess.PIPE, text=True)
        CHILDREN.append(flood)  # type: ignore[arg-type]  # stopped like the others
        flooded = _wrk(port, f"{item}/decrements", 64, seconds, token)
        out, _ = flood.communicate(timeout=seconds + 60)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        server.terminate()
        server.wait(timeout=30)
        engine_of(app).dispose()
    line = next(x for x in out.splitlines() if x.startswith("FLOOD "))
    guessed = json.loads(line.removeprefix("FLOOD "))
    answers = {int(k): v for k, v in guessed["answers"].items()}
    rate_alone = alone["counts"]["ok"] / alone["seconds"]
    rate_flooded = flooded["counts"]["ok"] / flooded["seconds"]
    first = Result(SCENARIO, "allocation over HTTP (async), no flood", alone["counts"]["ok"],
                   alone["seconds"], alone["p50_ms"], alone["p99_ms"])
    second = Result(SCENARIO, f"allocation over HTTP (async), {FLOOD_CONNECTIONS}-connection "
                              "flood beside", flooded["counts"]["ok"], flooded["seconds"],
                    flooded["p50_ms"], flooded["p99_ms"])
    ratio = rate_flooded / rate_alone if rate_alone else 0.0
    second.note = (f"{ratio:.2f}x the sale without it; the flood: "
                   f"{sum(answers.values()) / guessed['seconds']:.0f} requests/s, answered "
                   f"{dict(sorted(answers.items()))}, p99 {guessed['p99_ms']:.1f} ms")
    for run in (alone, flooded):
        if any(run["counts"][k] for k in ("other", "sold_out", "socket_errors")):
            second.checks.append(f"sale: unexpected answers {run['counts']}")
    if set(answers) - {401, 503}:
        second.checks.append(f"the flood was answered {answers}: wanted 401 or 503 only")
    if ratio < 0.8:
        second.checks.append(f"the sale ran at {ratio:.2f}x with the flood (target 0.8x)")
    return [first, second]
