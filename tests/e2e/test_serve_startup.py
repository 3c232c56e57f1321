"""`allocation serve` starting where it must not serve: a port another server listens on, an
empty directory (embedded), a database never migrated."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from allocation.config import Config
from tests import conftest
from tests.helpers.processes import (
    Process,
    allocation_command,
    free_port,
    serve,
    service_env,
    wait_until,
)


def test_a_second_server_refuses_a_port_the_first_serves_on(service_config: Config,
                                                            namespace: str) -> None:
    with contextlib.contextmanager(serve)(service_config) as base:
        port = base.rsplit(":", 1)[1]
        second = subprocess.run(allocation_command("serve", "--port", port, "--workers", "2"),
                                env={**service_env(service_config), "AUTH": "off"},
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert "another process listens there" in second.stderr
        assert "Traceback" not in second.stderr
        # The first, its two workers sharing the port, serves on.
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
        made = requests.put(f"{base}/v1/{namespace}/items/a", json={"total": 3}, timeout=5)
        assert made.status_code == 201, made.text


def test_embedded_serve_in_an_empty_directory_migrates_and_serves(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "AUTH", "PROMETHEUS_MULTIPROC_DIR")}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(allocation_command("serve", "--port", str(port)), env=env,
                              cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    no_token = {"Authorization": None}  # the embedded mode runs with AUTH=off

    def ready() -> bool:
        assert server.poll() is None, "the embedded server exited"
        try:
            return requests.get(f"{base}/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(ready, 60, "the embedded server to be ready")
        made = requests.put(f"{base}/v1/shop/items/a", json={"total": 5}, headers=no_token,
                            timeout=5)
        assert made.status_code == 201, made.text
        got = requests.get(f"{base}/v1/shop/items/a", headers=no_token, timeout=5)
        assert (got.status_code, got.json()["available"]) == (200, 5)
        assert (tmp_path / "allocation.db").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextlib.contextmanager
def unmigrated_database() -> Iterator[str]:
    admin_url = make_url(conftest.test_database_admin_url())
    name = f"allocation_unmigrated_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_server_on_an_unmigrated_database_is_not_ready_and_says_to_migrate(
        service_config: Config) -> None:
    with unmigrated_database() as url:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = Process(allocation_command("serve", "--port", str(port), "--workers", "1"),
                         {**service_env(dataclasses.replace(service_config, database_url=url)),
                          "AUTH": "off"})
        server.start()
        answers: list[requests.Response] = []

        def answered() -> bool:
            assert server.alive(), server.stderr_tail()
            try:
                answers.append(requests.get(f"{base}/readyz", timeout=5))
            except requests.RequestException:
                return False
            return True

        try:
            wait_until(answered, 60, "the server to answer /readyz")
            ready = answers[-1]
            assert ready.status_code == 503
            assert ready.json()["database"] == "unmigrated"
        finally:
            server.stop()
        assert "run `allocation migrate`" in server.stderr_tail()
