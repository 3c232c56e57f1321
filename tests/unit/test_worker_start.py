"""/readyz of a server with several workers: ready once every worker has built its app."""

from __future__ import annotations

from pathlib import Path

import pytest

from allocation.entrypoints import worker_start
from tests.helpers.apps import FakeApp, body


def env_for(directory: Path, workers: int) -> dict[str, str]:
    return {worker_start.DIR_ENV: str(directory), worker_start.COUNT_ENV: str(workers)}


def test_pending_until_every_worker_has_started_then_ready_for_good(tmp_path: Path) -> None:
    env = env_for(tmp_path, 2)
    startup = worker_start.Startup(env)
    assert startup.pending() == "0 of 2 workers started"
    worker_start.announce(env)
    assert startup.pending() == "1 of 2 workers started"
    (tmp_path / "worker-99999999").touch()  # the other worker, from its own process
    assert startup.pending() is None
    for marker in tmp_path.iterdir():  # a worker that dies and is replaced: still ready
        marker.unlink()
    assert startup.pending() is None


def test_a_marker_names_the_announcing_process(tmp_path: Path) -> None:
    import os

    worker_start.announce(env_for(tmp_path, 2))
    assert [p.name for p in tmp_path.iterdir()] == [f"worker-{os.getpid()}"]


def test_one_process_or_no_server_settings_is_ready_at_once(tmp_path: Path) -> None:
    assert worker_start.Startup({}).pending() is None
    assert worker_start.Startup({worker_start.DIR_ENV: str(tmp_path)}).pending() is None
    worker_start.announce({})  # nothing to say, nowhere to say it
    assert list(tmp_path.iterdir()) == []


def test_readyz_names_the_workers_still_loading(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env_for(tmp_path, 2).items():
        monkeypatch.setenv(name, value)
    fake = FakeApp()
    worker_start.announce()
    loading = fake.client.get("/readyz")
    assert (loading.status_code, loading.headers["Retry-After"]) == (503, "1")
    assert body(loading) == {"database": "ok", "redis": "ok",
                             "workers": "1 of 2 workers started"}
    (tmp_path / "worker-99999999").touch()
    ready = fake.client.get("/readyz")
    assert (ready.status_code, body(ready)) == (200, {"database": "ok", "redis": "ok"})
