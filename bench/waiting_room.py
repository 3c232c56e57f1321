"""The waiting room (API.md, "Waiting room"; issue 27's targets), over HTTP from outside:

- polls of waiting tickets (no token) against the empty WSGI app's requests a second, and joins
  against the one-EVALSHA app's, both driven by wrk as the ceilings are, in the same run;
- a herd: ``buyers`` for ``units`` of one hot item, sold without a waiting room (every buyer
  tries the item once) and behind one (buyers join, poll, and buy once admitted): the hot
  item's script calls per unit sold, the time from the last unit to every ticket reading
  ``sold_out``, and the admitted buyers' sale p99.

Served as the other HTTP contenders are: `allocation serve --workers <cores> --threads 16
--pin-workers`, AUTH=required, a SALE_SECRET, a ledger worker at idle priority.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import create_engine

from allocation.adapters.token_store import TokenStore
from bench import contenders as c
from bench.common import Result, Services, percentiles, wait_for

POLLS, JOINS, HERD = "waiting room: polls", "waiting room: joins", "waiting room: herd"
TIMEOUT = 30  # seconds, for every request the bench makes itself

# One request per call: a poll of one of the waiting tickets listed in a file (no token), or a
# join of a new buyer. Prints the summary line contenders._wrk reads ("WRK {...}").
WRK_SCRIPT = """
local threads, counter = {}, 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end
function init(args)
  n, ok, other, statuses = 0, 0, 0, ""
  kind, path, run, authorization = args[1], args[2], args[3], "Bearer " .. args[4]
  tickets = {}
  if kind == "poll" then
    for line in io.lines(args[5]) do table.insert(tickets, line) end
  end
end
function request()
  n = n + 1
  if kind == "poll" then
    return wrk.format("GET", path .. tickets[(n * 7 + id * 13) % #tickets + 1])
  end
  return wrk.format("POST", path, {["Content-Type"] = "application/json",
                                  ["Authorization"] = authorization},
                    '{"buyer": "w' .. run .. "-" .. id .. "-" .. n .. '"}')
end
function response(status, headers, body)
  if status == 200 or status == 201 then ok = ok + 1
  else
    other = other + 1
    if other <= 5 then statuses = statuses .. status .. " " end
  end
end
function done(summary, latency, requests)
  local o, x, st = 0, 0, ""
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); x = x + t:get("other"); st = st .. t:get("statuses")
  end
  io.write(string.format('WRK {"ok": %d, "sold_out": 0, "other": %d, "requests": %d, ' ..
    '"seconds": %f, "p50_ms": %f, "p99_ms": %f, "errors": %d, "statuses": "%s"}\\n',
    o, x, summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout, st))
end
"""


def sizes_for(mode: str) -> dict[str, int]:
    """The herd's size (BENCH_SIZE_WAITROOM_BUYERS / _UNITS): as many buyers as this machine
    allows a bench of threads to drive, for the issue's 1,000 units."""
    full = mode == "full"
    return {"waitroom_buyers": 20_000 if full else 5_000, "waitroom_units": 1_000,
            "waitroom_tickets": 1_000}


class Server:
    """`allocation serve` with a SALE_SECRET and a ledger worker, on the run's services."""

    def __init__(self, services: Services) -> None:
        self.cfg = c.config(services, "async")
        self.namespace = "wr" + uuid.uuid4().hex[:8]
        self.port, workers = c.free_port(), os.cpu_count() or 2
        self.base = f"http://127.0.0.1:{self.port}/v1/{self.namespace}"
        engine = create_engine(self.cfg.database_url)
        try:
            store = TokenStore(engine)
            self.admin = store.create(self.namespace, "admin", "bench waiting room")[1]
            self.seller = store.create(self.namespace, "sell", "bench waiting room")[1]
        finally:
            engine.dispose()
        self.worker = c.ledger_worker(self.cfg)
        self.process = c._serve(
            [sys.executable, "-m", "allocation.entrypoints.cli", "serve", "--port",
             str(self.port), "--workers", str(workers), "--threads", str(c.HTTP_THREADS),
             "--pin-workers"],
            {**c.env(self.cfg), "AUTH": "required", "SALE_SECRET": uuid.uuid4().hex},
            self.port, workers)

    def stop(self) -> None:
        for process in (self.process, self.worker):
            process.terminate()
            process.wait(timeout=30)

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             session: requests.Session | None = None, **headers: str) -> requests.Response:
        send = requests.request if session is None else session.request
        auth = {"Authorization": f"Bearer {token or self.admin}"}
        return send(method, f"{self.base}{path}", json=body, timeout=TIMEOUT,
                    headers={**auth, **headers})

    def ready(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        r = self.call(method, path, body)
        if r.status_code not in (200, 201):
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
        return dict(r.json())


@contextmanager
def served(services: Services) -> Iterator[Server]:
    server = Server(services)
    try:
        yield server
    finally:
        server.stop()


def _wrk(port: int, args: list[str], seconds: int, connections: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    try:
        out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout",
                              "10s", "-s", script.name, f"http://127.0.0.1:{port}", "--", *args],
                             capture_output=True, text=True, timeout=300)
    finally:
        Path(script.name).unlink()
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {out.stdout} {out.stderr}")
    data: dict[str, Any] = json.loads(line[4:])
    return data


def polls_and_joins(services: Services, seconds: int, connections: int, tickets: int,
                    ceilings: dict[str, Result]) -> list[Result]:
    """Polls of ``tickets`` waiting tickets, then joins of new buyers, each for ``seconds``;
    each row's share of its ceiling (rows measured earlier in the same run)."""
    with served(services) as server:
        server.ready("PUT", "/items/hot", {"total": 1})  # one pass, then everyone waits
        server.ready("PUT", "/sales/door", {"skus": ["hot"], "max_admitted": 1})
        session = requests.Session()
        waiting = [server.call("POST", "/sales/door/queue", {"buyer": f"p{n}"}, server.seller,
                               session).json()["ticket"] for n in range(tickets)]
        listing = Path(tempfile.mkdtemp(prefix="bench-tickets-")) / "tickets"
        listing.write_text("\n".join(waiting[1:]) + "\n")
        poll_path = f"/v1/{server.namespace}/sales/door/queue/"
        run = uuid.uuid4().hex[:8]
        _wrk(server.port, ["poll", poll_path, run, "-", str(listing)], c.WARM_UP_SECONDS,
             connections)
        polls = _wrk(server.port, ["poll", poll_path, run, "-", str(listing)], seconds,
                     connections)
        still = server.call("GET", f"/sales/door/queue/{waiting[-1]}").json()["state"]
        joins = _wrk(server.port, ["join", f"/v1/{server.namespace}/sales/door/queue", run,
                                   server.seller], seconds, connections)
        figures = server.ready("GET", "/sales/door")
    rows = []
    for scenario, load, ceiling_name, target in (
            (POLLS, polls, "ceiling-empty", 0.5), (JOINS, joins, "ceiling-evalsha", 0.5)):
        row = Result(scenario, f"allocation over HTTP (async), {scenario.split(': ')[1]}",
                     load["ok"] + load["other"], load["seconds"], round(load["p50_ms"], 3),
                     round(load["p99_ms"], 3), group="http", sales=False)
        if load["other"] or load["errors"]:
            row.checks.append(f"{load['other']} other answers ({load['statuses'] or 'none'}), "
                              f"{load['errors']} socket errors")
        ceiling = ceilings.get(c.HTTP_NAMES[ceiling_name])
        if ceiling is None or not ceiling.throughput:
            row.note = f"no {ceiling_name} row in this run to compare with"
        else:
            share = row.throughput / ceiling.throughput
            row.note = f"{share:.2f}x the {ceiling.contender} (target {target}x)"
            if share < target:
                row.checks.append(f"{share:.2f}x {ceiling_name} (wanted {target}x)")
        rows.append(row)
    rows[0].note += f"; {tickets - 1} waiting tickets, the last still {still!r}"
    rows[1].note += f"; {figures['waiting']} waiting at the end"
    return rows


class Herd:
    """``buyers`` buyers in ``threads`` threads, each thread serving its share in turns."""

    def __init__(self, server: Server, sku: str, buyers: int, threads: int) -> None:
        self.server, self.sku = server, sku
        self.shares = [list(range(i, buyers, threads)) for i in range(threads)]
        self.lock = threading.Lock()
        self.tries = self.sold = self.admitted = 0
        self.sold_times: list[float] = []  # when each sale was answered
        self.sale_latencies: list[float] = []
        self.sold_out_seen: dict[int, float] = {}  # buyer -> first poll reading sold_out
        self.last_waiting_sent = 0.0  # when the latest poll that read "waiting" was sent

    def run(self, gated: bool) -> None:
        threads = [threading.Thread(target=self._share, args=(share, gated)) for share in
                   self.shares]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _buy(self, session: requests.Session, buyer: int, sale_pass: str | None) -> bool:
        headers = {"Idempotency-Key": f"{self.sku}-{buyer}"}
        if sale_pass is not None:
            headers["Sale-Pass"] = sale_pass
        began = time.perf_counter()
        r = self.server.call("POST", f"/items/{self.sku}/decrements",
                             {"qty": 1, "buyer": f"b{buyer}"}, self.server.seller, session,
                             **headers)
        done = time.perf_counter()
        if r.status_code not in (200, 409):
            raise RuntimeError(f"a sale answered {r.status_code} {r.text}")
        with self.lock:
            self.tries += 1
            if r.status_code == 200:
                self.sold += 1
                self.sold_times.append(done)
                if sale_pass is not None:
                    self.sale_latencies.append(done - began)
        return r.status_code == 200

    def _share(self, share: list[int], gated: bool) -> None:
        session = requests.Session()
        if not gated:
            for buyer in share:
                self._buy(session, buyer, None)
            return
        tickets = {b: self.server.call("POST", "/sales/herd/queue", {"buyer": f"b{b}"},
                                       self.server.seller, session).json()["ticket"]
                   for b in share}
        deadline = time.monotonic() + 600
        while tickets and time.monotonic() < deadline:
            for buyer, ticket in list(tickets.items()):
                sent = time.perf_counter()
                shown = session.get(f"{self.server.base}/sales/herd/queue/{ticket}",
                                    timeout=TIMEOUT).json()
                if shown["state"] == "waiting":
                    with self.lock:
                        self.last_waiting_sent = max(self.last_waiting_sent, sent)
                if shown["state"] == "admitted":
                    with self.lock:
                        self.admitted += 1
                    self._buy(session, buyer, shown["pass"])
                    del tickets[buyer]
                elif shown["state"] == "sold_out":
                    with self.lock:
                        self.sold_out_seen[buyer] = time.perf_counter()
                    del tickets[buyer]
        if tickets:
            raise RuntimeError(f"{len(tickets)} tickets neither served nor sold out in 600 s")


def herd(services: Services, buyers: int, units: int, threads: int = 64) -> list[Result]:
    """The same units sold to the same number of buyers, without and with the waiting room."""
    rows = []
    with served(services) as server:
        for gated, sku in ((False, "open"), (True, "gated")):
            server.ready("PUT", f"/items/{sku}", {"total": units})
            if gated:
                server.ready("PUT", "/sales/herd", {"skus": [sku]})
            crowd = Herd(server, sku, buyers, threads)
            began = time.perf_counter()
            crowd.run(gated)
            seconds = time.perf_counter() - began
            figures = server.ready("GET", f"/items/{sku}")
            label = "behind the waiting room" if gated else "no waiting room"
            p50, p99 = percentiles(crowd.sale_latencies)
            row = Result(HERD, f"allocation over HTTP (async), {label}", crowd.sold, seconds,
                         p50, p99, group="http", sales=False)
            row.note = (f"{buyers} buyers for {units} units: "
                        f"{crowd.tries / max(crowd.sold, 1):.2f} hot-item script calls a unit "
                        "sold (decrements let through to the item's script)")
            if figures["consumed"] != units or crowd.sold != units:
                row.checks.append(f"{crowd.sold} sales answered 200, consumed "
                                  f"{figures['consumed']}, of {units} units")
            if gated:
                last = max(crowd.sold_times, default=0.0)
                late = [t - last for t in crowd.sold_out_seen.values()]
                waited = buyers - crowd.admitted
                # The service's lag, as the e2e test takes it: the latest poll that still read
                # "waiting" was sent this long after the last unit sold (the clients' rounds
                # through their tickets are the rest of the second figure).
                lag = max(0.0, crowd.last_waiting_sent - last)
                row.note += (f"; {crowd.admitted} buyers admitted, their sale p99 "
                             f"{p99 or 0:.1f} ms; no poll sent more than {lag * 1000:.0f} ms "
                             f"after the last unit read 'waiting'; every one of {len(late)} "
                             f"tickets read sold_out {max(late, default=0.0) * 1000:.0f} ms "
                             "after it, in the clients' polling rounds")
                if len(late) != waited:
                    row.checks.append(f"{len(late)} tickets read sold_out, {waited} not served")
                if not wait_for(lambda: server.ready("GET", "/sales/herd")["state"]
                                == "sold_out", 10):
                    row.checks.append("the sale never read sold_out")
            rows.append(row)
    return rows


def ceilings_of(results: list[Result]) -> dict[str, Result]:
    return {r.contender: r for r in results if r.ceiling and r.group == "http" and r.ok}

