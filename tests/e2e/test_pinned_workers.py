"""`allocation serve --pin-workers`: each worker process, every thread of it, on one CPU of its
own (the same one for all where there is only one), and the server still sells."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import requests

from allocation.config import Config
from tests.helpers.processes import Process, allocation_command, free_port, service_env, wait_until


def masks_of(pid: int) -> set[tuple[int, ...]]:
    return {tuple(sorted(os.sched_getaffinity(int(task.name))))
            for task in Path(f"/proc/{pid}/task").iterdir()}


def test_each_worker_runs_on_a_cpu_of_its_own(service_config: Config) -> None:
    port = free_port()
    server = Process(allocation_command("serve", "--port", str(port), "--workers", "2",
                                        "--threads", "4", "--pin-workers"),
                     service_env(service_config))
    server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        assert server.proc is not None
        children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")

        def workers() -> list[int]:
            return [int(pid) for pid in children.read_text().split()]

        def up() -> bool:
            try:
                return requests.get(f"{base}/healthz", timeout=2).ok and len(workers()) == 2
            except requests.RequestException:
                return False

        wait_until(up, 60, "the server and its two workers")
        sku = f"pin-{uuid.uuid4().hex[:8]}"
        assert requests.put(f"{base}/v1/pins/items/{sku}", json={"total": 40},
                            timeout=5).status_code == 201
        # Enough sales that both workers serve some (connections are new each time).
        for n in range(40):
            sold = requests.post(f"{base}/v1/pins/items/{sku}/decrements", json={"qty": 1},
                                 headers={"Idempotency-Key": f"k{n}"}, timeout=5)
            assert sold.status_code == 200, sold.text
        assert requests.get(f"{base}/v1/pins/items/{sku}", timeout=5).json()["available"] == 0

        # A worker is a child before its factory has run (and pinned it); /healthz answers
        # once the first one serves.
        def all_pinned() -> bool:
            return all(len(masks) == 1 and len(next(iter(masks))) == 1
                       for masks in (masks_of(pid) for pid in workers()))

        wait_until(all_pinned, 30, "each worker to hold its threads to one CPU")
        cpus = sorted(os.sched_getaffinity(0))
        per_worker = [masks_of(pid) for pid in workers()]
        for masks in per_worker:  # every thread of a worker on the same single CPU
            assert len(masks) == 1 and len(next(iter(masks))) == 1, per_worker
        held = sorted(next(iter(masks))[0] for masks in per_worker)
        assert held == (cpus[:2] if len(cpus) > 1 else cpus * 2), (held, cpus)
    finally:
        server.stop()
