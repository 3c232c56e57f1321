"""`make bench`: every contender on the same machine, in one run; one table (printed, and in
Markdown in bench/results.md), bench/results.json and bench/results.png. Quick by default,
BENCH=full for the issue's sizes; BENCH_ONLY=hot,http,limits,many,refunds,refresh,drain,cluster,
reservations,streams,flood,partition,waitroom runs a subset;
BENCH_HTTP=ceiling-empty,ceiling-evalsha,allocation,... some of the HTTP contenders
(contenders.HTTP_NAMES); BENCH_HTTP_SECONDS the length of each HTTP load (10, 30 with full);
BENCH_SIZE_<NAME>=N one of contenders.scenarios_for's or waiting_room.sizes_for's sizes
(BENCH_SIZE_HOT_STOCK=300: a smoke run's).

Each group of rows has its ceiling, measured in the same run: the in-process rows are a share
of redis-benchmark's one-EVALSHA check-and-decrement (50 clients, unpipelined), the HTTP rows a
share of a bare WSGI app running that EVALSHA once per request under the same granian settings
and the same wrk load ("of ceiling")."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import contenders as c
from bench import outage, streams, token_flood, waiting_room
from bench.common import Result, Services, scratch_services
from tests.helpers.redis_cluster import LocalCluster
from tests.helpers.tmpdir import tmpdir_at

HERE = Path(__file__).parent
CRASHED = "(raised)"
# The groups whose rows are sales in process, a share of redis-benchmark's ceiling.
IN_PROCESS_SALES = ("hot", "limits", "many", "refunds", "cluster", "reservations")


def main() -> int:
    mode = os.environ.get("BENCH", "quick")
    size = sized({**c.scenarios_for(mode), **waiting_room.sizes_for(mode)})
    only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
    admin = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    results: list[Result] = []

    def record(run: Callable[..., Result | list[Result]], *args: Any, **kwargs: Any) -> None:
        """Run a contender and record its result (or results); one that raises is recorded as
        failed (and fails the run), and the processes it left are stopped, so that the others
        still run."""
        try:
            produced = run(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported, and the run fails
            traceback.print_exc()
            c.stop_children()
            described = ", ".join([*(repr(a) for a in args if not isinstance(a, Services)),
                                   *(f"{k}={v!r}" for k, v in kwargs.items())])
            produced = Result(CRASHED, f"{run.__name__}({described})", 0, 0.0,
                              checks=[f"raised {type(exc).__name__}: {exc}"])
        for result in produced if isinstance(produced, list) else [produced]:
            results.append(result)
            state = "ok" if result.ok else "FAILED: " + "; ".join(result.checks)
            print(f"  {result.scenario:<22} {result.contender:<46} "
                  f"{result.throughput:>10.0f}/s {state}", flush=True)

    def wanted(name: str) -> bool:
        return not only or name in only

    c.SERVER_LOG.write_bytes(b"")  # this run's server logs only
    with own_tmpdir(), scratch_services(admin, redis_url) as services, closing_children():
        c.migrate_schema(services)
        hot, buyers = size["hot_stock"], size["buyers"]
        if any(wanted(group) for group in IN_PROCESS_SALES):
            record(c.redis_benchmark_ceiling, services, size["redis_benchmark_requests"])
        if wanted("hot"):
            # Both with a ledger worker process: a sync movement is answered once it commits.
            for durability in ("async", "sync"):
                record(c.ours, services, durability, "hot item", 1, hot, buyers)
            record(c.seed, services, "hot item", 1, hot, buyers)
            record(c.plain_postgres, services, "hot item", 1, hot, buyers)
        if wanted("http"):
            seconds = int(os.environ.get("BENCH_HTTP_SECONDS") or (30 if mode == "full" else 10))
            chosen = list(filter(None, os.environ.get("BENCH_HTTP", "").split(",")))
            unknown = [who for who in chosen if who not in c.HTTP_NAMES]
            if unknown:
                raise SystemExit(f"BENCH_HTTP: no contender {unknown}; {list(c.HTTP_NAMES)}")
            for who in c.HTTP_NAMES:  # the ceilings first
                if not chosen or who in chosen:
                    record(c.http, services, who, seconds, buyers)
        if wanted("waitroom"):
            # Issue 27: polls against the empty app, joins against the one-EVALSHA app (both
            # measured here unless the http group just did), then the herd with and without.
            seconds = int(os.environ.get("BENCH_HTTP_SECONDS") or (30 if mode == "full"
                                                                   else 10))
            for who in ("ceiling-empty", "ceiling-evalsha"):
                if c.HTTP_NAMES[who] not in waiting_room.ceilings_of(results):
                    record(c.http, services, who, seconds, buyers)
            record(waiting_room.polls_and_joins, services, seconds, buyers,
                   size["waitroom_tickets"], waiting_room.ceilings_of(results))
            record(waiting_room.herd, services, size["waitroom_buyers"],
                   size["waitroom_units"])
        if wanted("limits"):
            # The limit per buyer's price: the same sale with and without one.
            for label, limit in ((" no limit", None), (" limit 1 per buyer", 1)):
                record(c.ours, services, "async", "hot item, buyers named", 1, hot, buyers,
                       label=label, limit=limit)
        if wanted("streams"):
            # One server, the same sale without and with many stock-stream clients.
            seconds = int(os.environ.get("BENCH_HTTP_SECONDS") or (30 if mode == "full"
                                                                   else 10))
            record(streams.stream_sale, services, size["stream_clients"], seconds)
            # Issue 24: 5,000 clients (over 5 tokens) keep 0.7x of the sale.
            record(streams.stream_sale, services, size["many_stream_clients"], seconds,
                   least=0.7)
            # Issue 24: 4,000 streams over 2,000 items that are being sold.
            record(streams.stream_sale, services, 2 * size["streamed_items"], seconds,
                   items=size["streamed_items"])
        if wanted("flood"):
            # One server, the same sale without and with a flood of made-up tokens beside it.
            record(token_flood.token_flood_sale, services,
                   int(os.environ.get("BENCH_HTTP_SECONDS") or (30 if mode == "full" else 10)))
        if wanted("partition"):
            # A 10 s database partition in the middle of an async sale (ADR 0025).
            record(outage.partition_sale, services, size["partition_seconds"], buyers)
        if wanted("many"):
            items, stock = size["many_items"], size["many_stock"]
            record(c.ours, services, "async", "1,000 items", items, stock, buyers)
            record(c.seed, services, "1,000 items", items, stock, buyers)
            record(c.plain_postgres, services, "1,000 items", items, stock, buyers)
        if wanted("refunds"):
            stock = size["refund_stock"]
            record(c.ours, services, "async", "hot item, 10% refunds", 1, stock, buyers, 0.1)
            record(c.seed, services, "hot item, 10% refunds", 1, stock, buyers, 0.1)
            record(c.plain_postgres, services, "hot item, 10% refunds", 1, stock, buyers, 0.1)
        if wanted("refresh"):
            record(c.refresh_all, services, size["refresh_items"])
            record(seed_refresh, services, size["seed_refresh_items"])
        if wanted("drain"):
            record(c.ledger_drain, services, size["drain_entries"])
        if wanted("cluster"):
            # The same sales on a three-master Redis Cluster on this machine.
            with three_masters() as cluster_url:
                clustered = c.on_cluster(services, cluster_url)
                for scenario, items, stock in (("cluster: hot item", 1, hot),
                                               ("cluster: 1,000 items", size["many_items"],
                                                size["many_stock"])):
                    record(c.ours, services, "async", scenario, items, stock, buyers,
                           label=" single Redis")
                    record(c.ours, clustered, "async", scenario, items, stock, buyers,
                           label=" 3-master cluster")
        if wanted("reservations"):
            # A sale in two calls (reserve, then confirm) beside the same sale in one.
            for label, sale in ((" decrements", "decrement"), (" reserve+confirm", "reserve")):
                record(c.ours, services, "async", "hot item, reservations", 1, hot, buyers,
                       label=label, sale=sale)
            per_sale(*results[-2:])
            items, stock = size["cart_items"], size["cart_stock"]
            scenario = f"carts of 3 of {items} items"
            record(c.carts, services, scenario, items, stock, buyers, label=" single Redis")
            with three_masters() as cluster_url:  # a cart's items in several slots
                record(c.carts, c.on_cluster(services, cluster_url), scenario, items, stock,
                       buyers, label=" 3-master cluster")
            record(c.ledger_drain_holds, services, size["drain_entries"])

    report(results, mode)
    # A contender of ours or a ceiling that fails its checks, or any contender that raised,
    # fails the run; the others are reported.
    return 0 if all(r.ok for r in results if r.contender.startswith("allocation")
                    or r.ceiling or r.scenario == CRASHED) else 1


def sized(sizes: dict[str, Any]) -> dict[str, Any]:
    """``sizes`` with those BENCH_SIZE_<NAME> sets (e.g. a smoke run's small ones)."""
    chosen = {name.removeprefix("BENCH_SIZE_").lower(): value
              for name, value in os.environ.items() if name.startswith("BENCH_SIZE_")}
    unknown = sorted(set(chosen) - set(sizes))
    if unknown:
        raise SystemExit(f"BENCH_SIZE_: no size {unknown}; {sorted(sizes)}")
    return {**sizes, **{name: int(value) for name, value in chosen.items()}}


def per_sale(plain: Result, reserved: Result) -> None:
    """The issue's measure of a two-call sale: its sales a second over plain decrements'."""
    if plain.ok and reserved.ok and plain.throughput:
        reserved.note = (f"{reserved.throughput / plain.throughput:.2f}x the decrements' sales "
                         f"a second; {reserved.note}")


@contextlib.contextmanager
def three_masters() -> Iterator[str]:
    """A three-master Redis Cluster on this machine, for as long as the block runs: its URL."""
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="bench-cluster-")))
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


def seed_refresh(services: Services, items: int) -> Result:
    seeded = c.seed(services, "refresh_all", items, 0, 1)
    seeded.note = (f"measured on {items} items (it is slower per item as items grow: the "
                   "ratio flatters it)")
    return seeded


@contextlib.contextmanager
def own_tmpdir() -> Iterator[None]:
    """The run's temporary files (worker logs, the servers' per-start directories) in one
    directory, removed after."""
    scratch = Path(tempfile.mkdtemp(prefix="allocation-bench-run-"))
    try:
        with tmpdir_at(scratch):
            yield
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def closing_children() -> Iterator[None]:
    try:
        yield
    finally:
        c.stop_children()


def report(results: list[Result], mode: str) -> None:
    rows = table_rows(results)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\n{when}, {machine}, BENCH={mode}\n{text_table(rows)}")
    (HERE / "results.json").write_text(json.dumps(
        {"when": when, "machine": machine, "mode": mode, "results": rows}, indent=2))
    (HERE / "results.md").write_text(markdown_table(rows, f"{when}, {machine}, BENCH={mode}"))
    chart(rows, HERE / "results.png")


def table_rows(results: list[Result]) -> list[dict[str, Any]]:
    """Each result's row, with two ratios: "ours x", this project's first correct contender in
    the scenario (the async one) over this row; "of ceiling", this row over its group's
    ceiling (redis-benchmark's EVALSHA in process, the one-EVALSHA WSGI app over HTTP), for the
    rows whose operations are sales."""
    ours_by_scenario: dict[str, Result] = {}
    ceilings: dict[str, Result] = {}
    for r in results:
        if r.contender.startswith("allocation") and r.ok:
            ours_by_scenario.setdefault(r.scenario, r)
        if r.reference and r.ok and r.throughput:
            ceilings.setdefault(r.group, r)
    rows = []
    for r in results:
        mine = ours_by_scenario.get(r.scenario)
        ratio = (mine.throughput / r.throughput
                 if mine and r.throughput and mine is not r and not r.ceiling else None)
        ceiling = ceilings.get(r.group)
        share = (r.throughput / ceiling.throughput
                 if ceiling and r.sales and r.throughput else None)
        rows.append({**r.row(), "ours_vs_this": None if ratio is None else round(ratio, 2),
                     "of_ceiling": None if share is None else round(share, 2)})
    return rows


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _result(row: dict[str, Any]) -> str:
    return "ok" if row["ok"] else "FAILED: " + "; ".join(row["checks"])


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def text_table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'scenario':<22} {'contender':<46} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'ours x':>7} {'of ceil':>7}  result")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['scenario']:<22} {row['contender']:<46} {row['throughput']:>10.0f} "
            f"{_ms(row['p50_ms']):>8} {_ms(row['p99_ms']):>8} "
            f"{_ratio(row['ours_vs_this']):>7} {_ratio(row['of_ceiling']):>7}  {_result(row)}"
            f"{'  (' + row['note'] + ')' if row['note'] else ''}")
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]], heading: str) -> str:
    """The table for docs/benchmarks.md."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [f"{heading}", "",
             "| scenario | contender | ops/s | p50 ms | p99 ms | ours x | of ceiling | result "
             "| note |",
             "|---|---|--:|--:|--:|--:|--:|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(v) for v in (
            row["scenario"], row["contender"], f"{row['throughput']:.0f}", _ms(row["p50_ms"]),
            _ms(row["p99_ms"]), _ratio(row["ours_vs_this"]), _ratio(row["of_ceiling"]),
            _result(row), row["note"])) + " |")
    lines += ["", "ours x: this project's first contender in the scenario (the async one) "
              "over this row. of ceiling: this row over its group's ceiling, measured in the "
              "same run: in process, redis-benchmark's one-EVALSHA check-and-decrement (50 "
              "clients, unpipelined); over HTTP, a bare WSGI app running that EVALSHA once "
              "per request under the same granian settings and wrk load. Rows whose "
              "operations are not sales (refresh_all, ledger drain) have none.", ""]
    return "\n".join(lines)


def chart(rows: list[dict[str, object]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no chart)", file=sys.stderr)
        return
    labels = [f"{r['scenario']}\n{r['contender']}" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 0.45 * len(rows) + 2))
    colours = ["tab:red" if not r["ok"] else "tab:gray" if r["ceiling"] else "tab:green"
               for r in rows]
    left.barh(labels, [float(r["throughput"]) for r in rows], color=colours)  # type: ignore[arg-type]
    left.set_xscale("log")
    left.set_xlabel("operations/s (log; red = failed its checks, grey = a ceiling)")
    left.invert_yaxis()
    p99 = [float(r["p99_ms"] or 0) for r in rows]  # type: ignore[arg-type]
    right.barh(labels, p99, color=colours)
    if any(p99):
        right.set_xscale("log")
    right.set_xlabel("p99 latency, ms (log)")
    right.invert_yaxis()
    right.set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
