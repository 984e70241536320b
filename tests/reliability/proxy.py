"""A loopback TCP proxy that injects network faults between a store client and its server.

``FaultProxy(upstream_host, upstream_port)`` listens on a free port of 127.0.0.1 and
forwards every connection to the upstream. Its ``mode`` decides what happens to traffic,
for new *and* already open connections:

``"pass"``
    Forward bytes both ways.
``"refuse"``
    Close every open connection and close each new one as soon as it is accepted (what a
    client sees when a server or a firewall drops it: a reset or an immediate EOF).
``"delay"``
    Hold every chunk for ``delay`` seconds before forwarding it (a stalled network or an
    overloaded server; longer than the client's timeout).
``"cut_request"``
    Forward only the first ``cut_after`` bytes of the next chunk a client sends, then close
    the connection: the request reaches the server truncated (the server never runs it).
``"cut_response"``
    Forward the request, then only ``cut_after`` bytes of the server's answer, then close:
    the server ran the request but the client never hears the outcome.

Threads only (one accept thread, two pump threads per connection); :meth:`close` stops
everything and joins.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import Literal

__all__ = ["FaultProxy", "Mode"]

Mode = Literal["pass", "refuse", "delay", "cut_request", "cut_response"]


class _Pair:
    """One proxied connection: the client's socket and ours to the upstream."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = False
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "pass"
        self.delay = 3.0
        self.cut_after = 10
        self.connections = 0  # accepted so far (to see that clients reconnect)
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._spawn(self._accept_loop, "proxy-accept")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, mode: Mode, *, delay: float | None = None, cut_after: int | None = None) -> None:
        """Switch mode. ``"refuse"`` also closes every open connection."""
        if delay is not None:
            self.delay = delay
        if cut_after is not None:
            self.cut_after = cut_after
        self.mode = mode
        if mode == "refuse":
            self.drop_all()

    def retarget(self, host: str, port: int) -> None:
        """Send new connections to another upstream (e.g. a restarted server)."""
        self.upstream = (host, port)

    def drop_all(self) -> None:
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close()

    def close(self) -> None:
        self._stopping.set()
        self.drop_all()
        for t in self._threads:
            t.join(timeout=10)
        self._listener.close()

    # -- internals ---------------------------------------------------------------------
    def _spawn(self, target: object, name: str, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            if self.mode == "refuse":
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                _reset(client)  # upstream down: the client sees its connection dropped
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.add(pair)
            self._spawn(self._pump, "proxy-up", pair, client, upstream, True)
            self._spawn(self._pump, "proxy-down", pair, upstream, client, False)

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket, request: bool) -> None:
        try:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                mode = self.mode
                if mode == "refuse":
                    return
                if mode == "delay":
                    time.sleep(self.delay)
                    if pair.closed:
                        return
                cut = (mode == "cut_request" and request) or (
                    mode == "cut_response" and not request
                )
                if cut:
                    with contextlib.suppress(OSError):
                        dst.sendall(data[: self.cut_after])
                    return
                try:
                    dst.sendall(data)
                except OSError:
                    return
        finally:
            pair.close()
            with self._lock:
                self._pairs.discard(pair)


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a dropped connection looks to the client."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
