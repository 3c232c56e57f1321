"""`make bench`: every contender on the same machine, in one run; one table,
bench/results.json and bench/results.png. Quick by default, BENCH=full for the issue's sizes;
BENCH_ONLY=hot,http,many,refunds,refresh,drain,cluster runs a subset."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import contenders as c
from bench.common import Result, scratch_services
from tests.redis_cluster import LocalCluster
from tests.tmpdir import tmpdir_at

HERE = Path(__file__).parent


def main() -> int:
    mode = os.environ.get("BENCH", "quick")
    size = c.scenarios_for(mode)
    only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
    admin = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    results: list[Result] = []

    def record(result: Result) -> None:
        results.append(result)
        state = "ok" if result.ok else "FAILED: " + "; ".join(result.checks)
        print(f"  {result.scenario:<22} {result.contender:<38} {result.throughput:>10.0f}/s "
              f"{state}", flush=True)

    def wanted(name: str) -> bool:
        return not only or name in only

    c.SERVER_LOG.write_bytes(b"")  # this run's server logs only
    with own_tmpdir(), scratch_services(admin, redis_url) as services, closing_children():
        c.migrate_schema(services)
        hot, buyers = size["hot_stock"], size["buyers"]
        if wanted("hot"):
            for durability in ("async", "sync"):
                record(c.ours(services, durability, "hot item", 1, hot, buyers))
            record(c.seed(services, "hot item", 1, hot, buyers))
            record(c.plain_postgres(services, "hot item", 1, hot, buyers))
        if wanted("http"):
            seconds = 30 if mode == "full" else 10
            record(c.http(services, "allocation", seconds, buyers))
            record(c.http(services, "allocation-flask", seconds, buyers))
            record(c.http(services, "allocation-apart", seconds, buyers))
            record(c.http(services, "seed", seconds, buyers))
        if wanted("many"):
            items, stock = size["many_items"], size["many_stock"]
            record(c.ours(services, "async", "1,000 items", items, stock, buyers))
            record(c.seed(services, "1,000 items", items, stock, buyers))
            record(c.plain_postgres(services, "1,000 items", items, stock, buyers))
        if wanted("refunds"):
            stock = size["refund_stock"]
            record(c.ours(services, "async", "hot item, 10% refunds", 1, stock, buyers, 0.1))
            record(c.seed(services, "hot item, 10% refunds", 1, stock, buyers, 0.1))
            record(c.plain_postgres(services, "hot item, 10% refunds", 1, stock, buyers, 0.1))
        if wanted("refresh"):
            record(c.refresh_all(services, size["refresh_items"]))
            seeded = c.seed(services, "refresh_all", size["seed_refresh_items"], 0, 1)
            seeded.note = f"measured on {size['seed_refresh_items']} items (it is slower per " \
                          "item as items grow: the ratio flatters it)"
            record(seeded)
        if wanted("drain"):
            record(c.ledger_drain(services, size["drain_entries"]))
        if wanted("cluster"):
            # The same sales on a three-master Redis Cluster on this machine.
            cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="bench-cluster-")))
            cluster.start()
            try:
                clustered = c.on_cluster(services, cluster.url)
                for scenario, items, stock in (("cluster: hot item", 1, hot),
                                               ("cluster: 1,000 items", size["many_items"],
                                                size["many_stock"])):
                    record(c.ours(services, "async", scenario, items, stock, buyers,
                                  label=" single Redis"))
                    record(c.ours(clustered, "async", scenario, items, stock, buyers,
                                  label=" 3-master cluster"))
            finally:
                cluster.stop()

    report(results, mode)
    # A contender of ours that fails its checks fails the run; the others are reported.
    return 0 if all(r.ok for r in results if r.contender.startswith("allocation")) else 1


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
    # The reference in each scenario: this project's first (async) contender.
    ours_by_scenario: dict[str, Result] = {}
    for r in results:
        if r.contender.startswith("allocation") and r.ok:
            ours_by_scenario.setdefault(r.scenario, r)
    rows = []
    for r in results:
        mine = ours_by_scenario.get(r.scenario)
        ratio = (mine.throughput / r.throughput if mine and r.throughput and mine is not r
                 else None)
        rows.append({**r.row(), "ours_vs_this": None if ratio is None else round(ratio, 2)})
    header = (f"{'scenario':<22} {'contender':<38} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'ours x':>7}  result")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['scenario']:<22} {row['contender']:<38} {row['throughput']:>10.0f} "
            f"{_ms(row['p50_ms']):>8} {_ms(row['p99_ms']):>8} "
            f"{'' if row['ours_vs_this'] is None else row['ours_vs_this']:>7}  "
            f"{'ok' if row['ok'] else 'FAILED: ' + '; '.join(row['checks'])}"
            f"{'  (' + row['note'] + ')' if row['note'] else ''}")
    table = "\n".join(lines)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\n{when}, {machine}, BENCH={mode}\n{table}")
    (HERE / "results.json").write_text(json.dumps(
        {"when": when, "machine": machine, "mode": mode, "results": rows}, indent=2))
    chart(rows, HERE / "results.png")


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


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
    colours = ["tab:green" if r["ok"] else "tab:red" for r in rows]
    left.barh(labels, [float(r["throughput"]) for r in rows], color=colours)  # type: ignore[arg-type]
    left.set_xscale("log")
    left.set_xlabel("operations/s (log; red = failed its checks)")
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
