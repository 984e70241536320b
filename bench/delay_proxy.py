"""A TCP proxy that delays every chunk by a fixed time in each direction: a store "across
the network" on one machine (this VM's kernel has no ``netem``).

Run: ``python bench/delay_proxy.py LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS``, or
:func:`started` from a benchmark (a child process, so the proxy's CPU is not counted as
the client's). Each chunk read from one side is written to the other ``DELAY_MS`` after it
was read, in order (a reader thread and a writer thread per direction; ``time.sleep`` is
precise to tens of microseconds here, where an event loop's timers round up to 1 ms), so a
request/reply round trip takes about ``2 * DELAY_MS`` more than without the proxy and a
pipelined batch pays that once. Benchmarks print the round trip they measured through it.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def _pipe(source: socket.socket, target: socket.socket, delay: float) -> None:
    pending: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def send() -> None:
        while True:
            due, data = pending.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                target.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    threading.Thread(target=send, daemon=True).start()
    try:
        while data := source.recv(65536):
            pending.put((time.monotonic() + delay, data))
    except OSError:
        pass
    pending.put((0.0, b""))


def serve(port: int, host: str, target_port: int, delay: float) -> None:
    """Accept on 127.0.0.1:``port`` forever, each connection proxied to ``host:target_port``."""
    listener = socket.create_server(("127.0.0.1", port))
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection((host, target_port))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pipe, args=(client, upstream, delay), daemon=True).start()
        threading.Thread(target=_pipe, args=(upstream, client, delay), daemon=True).start()


@contextlib.contextmanager
def started(port: int, host: str, target_port: int, delay_ms: float) -> Iterator[None]:
    """Run the proxy in a child process while the block runs."""
    script = str(Path(__file__))
    proc = subprocess.Popen(
        [sys.executable, script, str(port), host, str(target_port), str(delay_ms)]
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the delay proxy did not start") from None
                time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    listen, target_host, target, delay_ms = sys.argv[1:5]
    serve(int(listen), target_host, int(target), float(delay_ms) / 1000)
