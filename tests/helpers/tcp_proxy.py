"""A TCP proxy between a client process and a server, for cutting the connection at a chosen
moment: when the client sends a given message (a COPY, a COMMIT), the proxy drops every
connection (before or after passing that message on) and refuses new ones until restored.
Or for a partition: ``partition`` stops forwarding (connections stay open and hang, new ones
are accepted and hang too) until ``heal``. Or for a server that is down: ``refuse`` drops every
connection and refuses new ones until ``restore``."""

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
        self._flowing = threading.Event()
        self._flowing.set()
        self._held: list[socket.socket] = []  # accepted while partitioned

    def partition(self) -> None:
        """Stop forwarding anything, either way, without closing a connection."""
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    def refuse(self) -> None:
        """Drop every connection and refuse new ones, until ``restore``."""
        with self._lock:
            self._down = True
        self._cut()

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

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def close(self) -> None:
        self._closing = True
        self._flowing.set()
        self._listener.close()
        self._cut()
        with self._lock:
            held, self._held = self._held, []
        for client in held:
            _close(client)

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
            if not self._flowing.is_set():
                with self._lock:
                    self._held.append(client)  # never answered: its connect hangs
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
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
                while not self._flowing.wait(0.5):
                    if self._closing:
                        return
                if from_client and self._fires(data):
                    with self._lock:
                        forward = self._forward_trigger
                    if forward:
                        sink.sendall(data)
                    self._cut()
                    return
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
