"""`refresh_all` of two source trees side by side: each round runs each tree's bench contender
(bench/contenders.py ``refresh_all``, its own scratch database and key prefix) in a process of
its own, alternating, so that both meet the same load from whatever else shares the machine.

    .venv/bin/python scripts/refresh_pair.py /work/main . --items 20000 --rounds 3

``PAIR_CPU=1`` also reports the CPU seconds each refresh took of this process, of the
PostgreSQL backends of its scratch database and of Redis (``INFO cpu``: a Redis of the run's own,
``TEST_REDIS_URL``, or others' work counts too): on a shared machine a steadier measure than the
rate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ONE = """
import json, os, sys, time
import redis
from bench.common import scratch_services
from bench import contenders
admin = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
redis_url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
cpu = {}

def database_cpu(name):
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if name.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")

def redis_cpu():
    found = redis.Redis.from_url(redis_url).info("cpu")
    return found["used_cpu_user"] + found["used_cpu_sys"]

class Clock:  # the contender's two perf_counter calls frame the refresh: read the CPU there
    def __getattr__(self, name):
        return getattr(time, name)

    def perf_counter(self):
        now = (time.process_time(), database_cpu(database), redis_cpu())
        for key, value in zip(("python", "postgresql", "redis"), now):
            cpu[key] = value - cpu.get(key, 0)
        return time.perf_counter()

with scratch_services(admin, redis_url) as services:
    contenders.migrate_schema(services)
    database = services.database_url.rsplit("/", 1)[1]
    if os.environ.get("PAIR_CPU"):
        contenders.time = Clock()
    if os.environ.get("PAIR_PROFILE"):
        import cProfile, pstats
        profile = cProfile.Profile()
        result = profile.runcall(contenders.refresh_all, services, int(sys.argv[1]))
        pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    else:
        result = contenders.refresh_all(services, int(sys.argv[1]))
    contenders.stop_children()
print("PAIR " + json.dumps({"rate": result.ops / result.seconds, "checks": result.checks,
                           **{key: round(value, 3) for key, value in cpu.items()}}))
"""


def run(tree: Path, items: int) -> dict[str, object]:
    tree = tree.resolve()
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}:{tree}"}
    out = subprocess.run([sys.executable, "-c", ONE, str(items)], cwd=tree, env=env,
                         capture_output=True, text=True, timeout=900)
    if os.environ.get("PAIR_PROFILE"):
        sys.stderr.write(out.stderr)
    line = next((x for x in out.stdout.splitlines() if x.startswith("PAIR ")), None)
    if line is None:
        raise RuntimeError(f"{tree}: {out.stderr[-2000:]}")
    found: dict[str, object] = json.loads(line[5:])
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trees", nargs=2, type=Path)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[Path, list[float]] = {tree: [] for tree in args.trees}
    for n in range(args.rounds):
        for tree in args.trees:
            found = run(tree, args.items)
            rates[tree].append(float(found["rate"]))  # type: ignore[arg-type]
            spent = " ".join(f"{key} {found[key]}s" for key in ("python", "postgresql", "redis")
                             if key in found)
            print(f"round {n + 1} {tree}: {found['rate']:.0f} items/s {found['checks']} {spent}",
                  flush=True)
    first, second = args.trees
    ratios = [b / a for a, b in zip(rates[first], rates[second], strict=True)]
    print(f"{second} / {first}: " + ", ".join(f"{r:.2f}x" for r in ratios)
          + f"; means {sum(rates[second]) / sum(rates[first]):.2f}x")


if __name__ == "__main__":
    main()
