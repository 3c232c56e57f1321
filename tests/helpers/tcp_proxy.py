"""A TCP proxy between a client process and a server, for cutting the connection at a chosen
moment: when the client sends a given message (a COPY, a COMMIT), the proxy drops every
connection (before or after passing that message on) and refuses new ones until restored.
It also takes the server away at once: ``refuse`` (connections dropped and refused, as a server
that is down), or ``partition`` (nothing forwarded either way and new connections accepted but
never answered, as packets dropped: nothing fails, everything waits), until ``restore``."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._trigger: bytes | None = None
        self._forward_trigger = False
        self._down = False
        self._closing = False
        self.cuts = 0
        self.refused = 0  # connections refused while down
        self.triggered = threading.Event()
        self._flowing = threading.Event()  # cleared while partitioned
        self._flowing.set()

    def cut_on(self, trigger: bytes, *, after_forwarding: bool = False) -> None:
        """Cut everything the next time a client sends ``trigger``; stay down until
        ``restore``. ``after_forwarding``: pass that message on first (the server acts on it,
        the client never hears the answer)."""
        with self._lock:
            self._trigger, self._forward_trigger = trigger, after_forwarding
            self.triggered.clear()

    def restore(self) -> None:
        with self._lock:
            self._down = False
        self._flowing.set()

    def refuse(self) -> None:
        """Drop every connection and refuse new ones, until ``restore``."""
        with self._lock:
            self._down = True
        self._cut()

    def partition(self) -> None:
        """Forward nothing, on open connections or new ones, until ``restore`` (which passes on
        what waited, as a healed network would)."""
        self._flowing.clear()
        with self._lock:
            self._down = False

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        self._cut()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down
            if down:
                self.refused += 1
                client.close()
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()  # partitioned: the client waits, unanswered
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._pairs.append((client, upstream))
        threading.Thread(target=self._pump, args=(client, upstream, True),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client, False),
                         daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if from_client and self._fires(data):
                    with self._lock:
                        forward = self._forward_trigger
                    if forward:
                        sink.sendall(data)
                    self._cut()
                    return
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                _close(s)

    def _fires(self, data: bytes) -> bool:
        with self._lock:
            if self._trigger is None or self._trigger not in data:
                return False
            self._trigger = None
            self._down = True
            self.cuts += 1
        self.triggered.set()
        return True

    def _cut(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            _close(client)
            _close(upstream)


def _close(s: socket.socket) -> None:
    with suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


@contextmanager
def proxy_to(port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
