"""Real processes for tests: the API server (`allocation serve`), the ledger worker and the
consumer, and a redis-server of a test's own, against real services."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from allocation.config import Config

__all__ = ["PrivateRedis", "Process", "allocation_command", "free_port", "ledger_worker",
           "serve", "service_env", "wait_until"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``check`` until it holds, failing with ``what`` at the deadline."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def service_env(config: Config) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(DATABASE_URL=config.database_url, REDIS_URL=config.redis_url or "",
               REDIS_KEY_PREFIX=config.redis_key_prefix, REDIS_PARTITIONS=str(config.partitions),
               COMMANDS_CHANNEL=config.commands_channel, EVENTS_CHANNEL=config.events_channel,
               DURABILITY=config.durability, COMMANDS_STREAM=config.commands_stream,
               LEDGER_CLAIM_IDLE_MS=str(config.ledger_claim_idle_ms),
               SYNC_WAIT_SECONDS=str(config.sync_wait_seconds))
    env.pop("AUTH", None)  # as deployed: required, since the services are set
    env.setdefault("SALE_SECRET", "e2e-sale-secret")  # required with AUTH=required
    return env


@dataclass
class Process:
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    open_files: int | None = None  # soft and hard RLIMIT_NOFILE, as `ulimit -n` would set
    _tail: bytearray = field(default_factory=bytearray)
    _drainer: threading.Thread | None = None

    def start(self) -> None:
        limit = self.open_files
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=None if limit is None else (
                lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))))
        # Read as it comes: a process that logs more than a pipe holds (64 KiB) would
        # otherwise block in its next write, wherever that is.
        self._tail = bytearray()
        self._drainer = threading.Thread(target=self._drain, args=(self.proc,), daemon=True)
        self._drainer.start()

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        stream: Any = proc.stderr  # a BufferedReader: read1 returns what has come
        for chunk in iter(lambda: stream.read1(65536), b""):
            self._tail += chunk
            del self._tail[:-3000]

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The process stopped (SIGSTOP) while the block runs, as a long pause would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill() if kill else self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self) -> str:
        if self.proc is None or self.alive():
            return ""
        if self._drainer is not None:
            self._drainer.join(timeout=5)
        return self._tail.decode(errors="replace")


def allocation_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "allocation.entrypoints.cli", *args]


def ledger_worker(config: Config, extra_env: dict[str, str] | None = None) -> Process:
    """A started `allocation ledger-worker` process."""
    process = Process(allocation_command("ledger-worker"),
                      {**service_env(config), **(extra_env or {})})
    process.start()
    return process


def serve(config: Config, extra_env: dict[str, str] | None = None, workers: int = 2,
          open_files: int | None = None, wsgi: bool = False) -> Iterator[str]:
    """Start `allocation serve` (two workers unless told; granian's WSGI interface with
    ``wsgi``) on a free port; yield its base URL; stop it."""
    port = free_port()
    interface = ["--behind-buffering-proxy"] if wsgi else []
    server = Process(allocation_command("serve", "--port", str(port), "--workers", str(workers),
                                        *interface),
                     {**service_env(config), **(extra_env or {})}, open_files=open_files)
    server.start()
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not server.alive():
            raise AssertionError(f"the server exited: {server.stderr_tail()}")
        try:
            # Every worker up, whether or not the dependencies are (some tests take one away).
            return "workers" not in requests.get(f"{base}/readyz", timeout=5).json()
        except requests.RequestException:  # refused, or accepted but still booting
            return False

    try:
        wait_until(up, 60, "every API worker to start (/readyz)")
        yield base
    finally:  # also when it never came up: no server outlives its test
        server.stop()


class PrivateRedis:
    """A redis-server of this test's own, on a free port, so it can be stopped and restarted."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is not installed; the reconnect test starts its own")
        self.proc = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no",
                                      "--dir", str(self.workdir)], stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, 15, "the private redis-server to start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def client(self) -> redis.Redis[bytes]:
        return redis.Redis.from_url(self.url)
