"""Many stock-stream clients in one process (asyncio, a socket each), for `make bench`.

`python -m bench.stream_clients PORT PATH TOKENS N`: opens N streams of PATH, the client
number i with the (i mod k)th of TOKENS (k of them, separated by commas) and, given ITEMS
after N, "{i}" in PATH replaced by i mod ITEMS; prints
`READY <connected>` once every one has its first event, then, for each client, the moment
(time.time()) it received an event with `"available":0`. Prints `DONE {json}` once all have
one, or when it is told to stop (a line on stdin) and 10 s have passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time


async def client(port: int, path: str, token: str, ready: asyncio.Event,
                 connected: list[int], sold_out: list[float | None], at: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    first = True
    buffer = b""
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buffer += chunk
            while b"\n\n" in buffer:
                block, _, buffer = buffer.partition(b"\n\n")
                if b"data: " not in block:
                    continue
                if first:
                    first = False
                    connected[0] += 1
                    if connected[0] == len(sold_out):
                        ready.set()
                if b'"available":0,' in block and sold_out[at] is None:
                    sold_out[at] = time.time()
    finally:
        writer.close()


async def main(port: int, path: str, tokens: list[str], n: int, items: int) -> None:
    ready = asyncio.Event()
    connected = [0]
    sold_out: list[float | None] = [None] * n
    tasks = []
    for at in range(n):
        tasks.append(asyncio.create_task(client(
            port, path.replace("{i}", str(at % items)), tokens[at % len(tokens)], ready,
            connected, sold_out, at)))
        if at % 50 == 49:
            await asyncio.sleep(0)  # let the first ones connect while the rest are opened
    with contextlib.suppress(TimeoutError):  # READY says how many did connect
        await asyncio.wait_for(ready.wait(), 60)
    print(f"READY {connected[0]}", flush=True)
    loop = asyncio.get_running_loop()
    told = loop.run_in_executor(None, sys.stdin.readline)
    deadline: float | None = None
    while not all(t is not None for t in sold_out):
        if told.done() and deadline is None:
            deadline = time.monotonic() + 10
        if deadline is not None and time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)  # a poll of this process's own list, not a synchronisation
    print("DONE " + json.dumps({"connected": connected[0], "sold_out_at": sold_out}),
          flush=True)
    for task in tasks:
        task.cancel()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port_, path_, token_, n_ = sys.argv[1:5]
    items_ = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    asyncio.run(main(int(port_), path_, token_.split(","), int(n_), items_))
