"""`allocation serve` with two workers answers /readyz 200 only once both have built the app
(a connection accepted earlier would stay on the first worker for as long as it is kept alive)."""

from __future__ import annotations

from pathlib import Path

import requests

from allocation.config import Config
from tests.helpers.processes import Process, allocation_command, free_port, service_env, wait_until


def test_ready_once_every_worker_has_started(service_config: Config, tmp_path: Path) -> None:
    port = free_port()
    # The server makes its directory for the workers' markers under TMPDIR: here, to look in.
    server = Process(allocation_command("serve", "--port", str(port), "--workers", "2",
                                        "--threads", "2"),
                     {**service_env(service_config), "TMPDIR": str(tmp_path)})
    server.start()
    answers: list[tuple[int, dict[str, str]]] = []

    def ready() -> bool:
        if not server.alive():
            raise AssertionError(f"the server exited: {server.stderr_tail()}")
        try:
            r = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
        except requests.RequestException:
            return False
        answers.append((r.status_code, r.json()))
        return r.ok

    try:
        wait_until(ready, 60, "/readyz to answer 200")
        assert server.proc is not None
        children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
        workers = {f"worker-{pid}" for pid in children.read_text().split()}
        (markers,) = tmp_path.glob("allocation-workers-*")
        assert {p.name for p in markers.iterdir()} == workers and len(workers) == 2
        assert answers[-1][1] == {"database": "ok", "redis": "ok"}
        for status, parts in answers[:-1]:  # any earlier answer was about the workers
            assert (status, parts.get("workers")) in (
                (503, "0 of 2 workers started"), (503, "1 of 2 workers started")), answers
    finally:
        server.stop()
