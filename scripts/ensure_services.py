"""Make sure the PostgreSQL and Redis the tests use answer; start local ones that are installed
but stopped. Exits non-zero, naming what is missing, rather than letting tests skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from urllib.parse import urlparse

import psycopg2
import redis

DB_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LOCAL = {"127.0.0.1", "localhost", "::1", None}


def postgres_up() -> bool:
    try:
        psycopg2.connect(DB_URL.replace("postgresql+psycopg2://", "postgresql://"),
                         connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def start_postgres() -> None:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if shutil.which("pg_ctlcluster") and versions:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main",
                        "start"], check=False)


def start_redis() -> None:
    port = str(urlparse(REDIS_URL).port or 6379)
    if shutil.which("redis-server"):
        logdir = "/var/log/redis" if os.access("/var/log/redis", os.W_OK) else "/tmp"
        workdir = "/var/lib/redis" if os.access("/var/lib/redis", os.W_OK) else "/tmp"
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
                        "--port", port, "--save", "", "--appendonly", "no", "--dir", workdir,
                        "--logfile", os.path.join(logdir, "allocation-tests.log")], check=False)


def wait(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def ensure(name: str, url: str, check: Callable[[], bool], start: Callable[[], None],
           how: str) -> str | None:
    if check():
        return None
    if urlparse(url).hostname in LOCAL:
        print(f"{name} is not answering at {url}; starting the local one", file=sys.stderr)
        start()
        if wait(check, 20):
            return None
    return f"{name} is not reachable at {url}. {how}"


def main() -> int:
    problems = [p for p in (
        ensure("PostgreSQL", DB_URL, postgres_up, start_postgres,
               "Install PostgreSQL (apt-get install postgresql) or point TEST_DATABASE_URL at "
               "one the tests may create databases in."),
        ensure("Redis", REDIS_URL, redis_up, start_redis,
               "Install Redis (apt-get install redis-server) or point TEST_REDIS_URL at one."),
    ) if p]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print("services: PostgreSQL and Redis answer")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
