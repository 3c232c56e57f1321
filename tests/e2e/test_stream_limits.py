"""Stock streams cannot starve a sale (API.md, "Stock stream"), against `allocation serve` with
one worker: one token's 1,100 streams past STREAMS_PER_TOKEN=1000, with the open-file limit
raised and under `ulimit -n 1024` (serve raises the soft limit to the hard one, and each worker
inherits it). Refused streams are 429 `too_many_streams`; the streams let in all hear the
sell-out; sales, /readyz and new connections keep answering meanwhile.

The clients are asyncio streams in this process, a socket each, not a thread each."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy.engine import Engine

from allocation.adapters.token_store import TokenStore
from allocation.config import Config
from allocation.entrypoints import stock_stream
from tests.helpers.processes import Process, allocation_command, free_port, serve, wait_until

STREAMS = 1100
PER_TOKEN = 1000


@dataclass
class Opened:
    status: int
    head: str
    body: bytes  # a refusal's body, or the stream's first event
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def open_stream(port: int, path: str, token: str) -> Opened:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    status = int(head.split(" ", 2)[1])
    if status == 200:
        body = await reader.readuntil(b"\n\n")
    else:
        length = next(int(line.split(":", 1)[1]) for line in head.split("\r\n")
                      if line.startswith("content-length:"))
        body = await reader.readexactly(length)
    return Opened(status, head, body, reader, writer)


async def heard_sold_out(stream: Opened) -> None:
    while b'"available":0' not in await stream.reader.readuntil(b"\n\n"):
        pass


@pytest.fixture
def no_client_limit() -> None:
    """This process holds a socket per stream client: its own limit raised to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * STREAMS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 4 * STREAMS, "raise ulimit -n"


@pytest.fixture(params=[None, 1024], ids=["limit-raised", "ulimit-1024"])
def server(request: pytest.FixtureRequest, service_config: Config, ledger_workers: Process,
           no_client_limit: None) -> Iterator[tuple[str, int | None]]:
    open_files: int | None = request.param
    started = serve(service_config, {"STREAMS_PER_TOKEN": str(PER_TOKEN)}, workers=1,
                    open_files=open_files)
    yield next(started), open_files
    next(started, None)


def test_one_tokens_streams_past_its_cap_are_refused_and_the_sale_goes_on(
        server: tuple[str, int | None], engine: Engine, namespace: str) -> None:
    api, open_files = server
    port = int(api.rsplit(":", 1)[1])
    assert requests.put(f"{api}/v1/{namespace}/items/tee", json={"total": 3},
                        timeout=10).status_code == 201
    _, reader = TokenStore(engine).create(namespace, "read", "e2e streams")
    # With the limit raised the token's cap binds; at 1024 the process's, which keeps
    # descriptors back for sales.
    admitted = min(PER_TOKEN, stock_stream.process_cap(
        open_files or resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    async def run() -> None:
        gate = asyncio.Semaphore(100)  # connecting at most this many at once

        async def one() -> Opened:
            async with gate:
                return await asyncio.wait_for(
                    open_stream(port, f"/v1/{namespace}/items/tee/stream", reader), 30)

        opened = await asyncio.gather(*(one() for _ in range(STREAMS)))
        try:
            streaming = [o for o in opened if o.status == 200]
            refused = [o for o in opened if o.status != 200]
            assert len(streaming) == admitted and len(refused) == STREAMS - admitted
            for refusal in refused:
                assert refusal.status == 429 and "retry-after:" in refusal.head
                assert json.loads(refusal.body)["error"] == "too_many_streams"
            assert all(b"event: stock" in s.body for s in streaming)
            # With every stream it may hold open: sales, readiness and new connections answer
            # (each within its request's 5 s deadline).
            loop = asyncio.get_running_loop()

            def sell(key: str) -> requests.Response:  # a new connection each
                return requests.post(f"{api}/v1/{namespace}/items/tee/decrements",
                                     json={"qty": 1}, headers={"Idempotency-Key": key},
                                     timeout=5)

            for n in range(3):
                sold = await loop.run_in_executor(None, sell, f"k{n}")
                assert sold.status_code == 200, sold.text
            ready = await loop.run_in_executor(
                None, lambda: requests.get(f"{api}/readyz", timeout=5))
            assert ready.status_code == 200, ready.text
            # Every stream let in hears the sell-out.
            await asyncio.wait_for(asyncio.gather(*(heard_sold_out(s) for s in streaming)), 15)
        finally:
            for o in opened:
                o.writer.close()

    asyncio.run(run())


def test_serve_raises_its_open_file_limit_to_the_hard_limit_for_every_worker(
        tmp_path: Path) -> None:
    """granian's native module raises the soft limit too when it loads; serve does it first,
    whatever granian does, and says what it got (the stream cap is sized by it)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")}
    server = subprocess.Popen(  # embedded: nothing but the process and its limits matter
        allocation_command("serve", "--port", str(port), "--workers", "1"), env=env,
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096)))
    try:
        def up() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).ok
            except requests.RequestException:
                return False

        wait_until(up, 60, "the embedded server to start")
        workers = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        assert workers
        for pid in [str(server.pid), *workers]:
            limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
            assert next(line for line in limits if line.startswith("Max open files")
                        ).split()[3:5] == ["4096", "4096"]
    finally:
        server.terminate()
        _, err = server.communicate(timeout=15)
    assert b"open files: limit 4096" in err
