"""`refresh_all` of two source trees side by side: each round runs each tree's bench contender
(bench/contenders.py ``refresh_all``, its own scratch database and key prefix) in a process of
its own, alternating, so that both meet the same load from whatever else shares the machine.

    .venv/bin/python scripts/refresh_pair.py /work/main . --items 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ONE = """
import json, os, sys
from bench.common import scratch_services
from bench import contenders
admin = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
redis_url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
with scratch_services(admin, redis_url) as services:
    contenders.migrate_schema(services)
    if os.environ.get("PAIR_PROFILE"):
        import cProfile, pstats
        profile = cProfile.Profile()
        result = profile.runcall(contenders.refresh_all, services, int(sys.argv[1]))
        pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    else:
        result = contenders.refresh_all(services, int(sys.argv[1]))
    contenders.stop_children()
print("PAIR " + json.dumps({"rate": result.ops / result.seconds, "checks": result.checks}))
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
            print(f"round {n + 1} {tree}: {found['rate']:.0f} items/s {found['checks']}",
                  flush=True)
    first, second = args.trees
    ratios = [b / a for a, b in zip(rates[first], rates[second], strict=True)]
    print(f"{second} / {first}: " + ", ".join(f"{r:.2f}x" for r in ratios)
          + f"; means {sum(rates[second]) / sum(rates[first]):.2f}x")


if __name__ == "__main__":
    main()
