"""RedisStore's direct sync path (``_Direct``: one connection per call, commands packed
by the store, ``send_packed_command`` + ``read_response``) against a real Redis
(127.0.0.1:6379, db 15): it keeps the generic path's guarantees (timeouts, no stale reply,
nothing resent, reconnects, threads, fork, TLS, injected clients, instrumentation)."""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.connection

from idempotence import Idempotency, StoreError
from idempotence._record import Status
from idempotence.stores import _redis
from idempotence.stores._redis import RedisStore
from idempotence.testing import LEASE, TTL
from tests.conftest import REDIS_URL, redis_client_or_unavailable

PREFIX = f"idempotence-direct-test:{uuid.uuid4().hex}:"
HOST, PORT, DB = "127.0.0.1", 6379, REDIS_URL.rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def admin() -> Iterator[Any]:
    client = redis_client_or_unavailable(REDIS_URL)
    yield client
    for key in client.scan_iter(match=PREFIX + "*", count=1000):
        client.delete(key)
    client.close()


def _key() -> str:
    return f"k#{uuid.uuid4().hex}"


def _upstream() -> tuple[str, int]:
    parts = redis.connection.parse_url(REDIS_URL)
    return str(parts.get("host", HOST)), int(parts.get("port", PORT))


class Proxy:
    """A loopback TCP proxy to the test Redis, optionally TLS on the client side, that
    can hold back the next reply (``delay_next``) and counts the connections it accepted
    and those the client closed."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.delay_next = 0.0
        self.accepted = 0
        self.closed_by_client = 0
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.tls is not None:
                try:
                    client = self.tls.wrap_socket(client, server_side=True)
                except (OSError, ssl.SSLError):
                    client.close()
                    continue
            upstream = socket.create_connection(_upstream())
            with self.lock:
                self.accepted += 1
                self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and self.delay_next:
                    delay, self.delay_next = self.delay_next, 0.0
                    time.sleep(delay)
                target.sendall(data)
        except OSError:
            pass
        else:
            if not replies:
                with self.lock:
                    self.closed_by_client += 1
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def url(self, scheme: str = "redis", query: str = "") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{DB}{query}"

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accept() in progress: refused from now
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def proxy(admin: Any) -> Iterator[Proxy]:
    p = Proxy()
    yield p
    p.close()


def _warm(store: RedisStore) -> None:
    """Two calls: the first builds the client, the second runs on the direct path."""
    store.get(_key())
    store.get(_key())
    assert store._direct is not None


def _count(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def _kill(admin: Any, name: str) -> int:
    """Kill the connections named ``name``; return once the server has closed them."""
    ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
    for client_id in ids:
        admin.client_kill_filter(_id=client_id)
    deadline = time.monotonic() + 2
    while any(c.get("name") == name for c in admin.client_list()):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return len(ids)


# -- the path itself ---------------------------------------------------------------------
def test_a_call_takes_one_kept_connection_and_no_execute_command(
    admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisStore(REDIS_URL, prefix=PREFIX)
    try:
        _warm(store)
        assert store._direct is not None
        pool = store._direct.pool
        checkouts = _count(monkeypatch, pool, "get_connection")
        commands = _count(monkeypatch, redis.Redis, "_execute_command")
        key = _key()
        claim = store.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert claim.acquired
        assert store.complete(key, claim.record.fence, b"result", ttl=TTL)
        replay = store.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert (replay.acquired, replay.record.result) == (False, b"result")
        assert (checkouts, commands) == ([], [])  # the spare connection, reused
        assert len(store._direct.spare) == 1
    finally:
        store.close()
    assert store._direct is None  # rebuilt with the next client


def test_the_python_packer_and_hiredis_write_what_redis_py_writes() -> None:
    import hiredis

    connection = redis.connection.Connection()
    for command in [
        ("EVALSHA", "ab" * 20, 1, PREFIX + "k#é ü 中", "", "0.5", "3600.0"),
        ("EVALSHA", "cd" * 20, 1, "k", "12", b"\x00\xff\r\n result \r\n", "1e+300"),
        ("EVAL", "return 1", 0),
    ]:
        expected = b"".join(connection.pack_command(*command))
        assert _redis._resp(command) == expected
        assert hiredis.pack_command(command) == expected


def test_an_error_reply_keeps_the_connection(admin: Any) -> None:
    store = RedisStore(REDIS_URL, prefix=PREFIX)
    try:
        _warm(store)
        assert store._direct is not None
        (connection,) = store._direct.spare
        with pytest.raises(redis.exceptions.ResponseError, match="deliberate"):
            store.run_script("return redis.error_reply('deliberate')", PREFIX + _key(), [])
        assert store._direct.spare == [connection]  # read in full: reused
        assert store.get(_key()) is None
        assert store._direct.spare == [connection]
    finally:
        store.close()


# -- lost connections, timeouts ----------------------------------------------------------
def test_a_connection_killed_between_claim_and_complete_runs_the_function_once(
    admin: Any,
) -> None:
    """The server drops the store's idle connection while the function runs: the
    completion finds it closed before sending, reconnects and completes; a retry replays."""
    name = f"idem-direct-{uuid.uuid4().hex[:12]}"
    store = RedisStore(REDIS_URL, prefix=PREFIX, client_name=name)
    runs: list[int] = []

    @Idempotency(store)(key="order_id")
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        runs.append(1)
        assert _kill(admin, name) == 1  # the claim's connection, now idle in the store
        return {"order_id": order["order_id"], "charged": True}

    try:
        _warm(store)
        order = {"order_id": f"o-{uuid.uuid4().hex}", "amount": 1250}
        expected = {"order_id": order["order_id"], "charged": True}
        assert charge(order) == expected
        assert charge(order) == expected
        assert runs == [1]
    finally:
        store.close()


def test_a_reply_lost_mid_command_fails_closed_and_nothing_is_resent(
    admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisStore(REDIS_URL, prefix=PREFIX)
    try:
        _warm(store)
        assert store._direct is not None
        (connection,) = store._direct.spare
        sent: list[tuple[Any, ...]] = []
        pack = _redis._pack

        def logged(command: tuple[Any, ...]) -> bytes:
            sent.append(command)
            return pack(command)

        monkeypatch.setattr(_redis, "_pack", logged)
        read = redis.connection.AbstractConnection.read_response
        lost = [True]

        def read_once_lost(self: Any, *args: Any, **kwargs: Any) -> Any:
            if lost:  # the reply is in the socket, unread
                lost.clear()
                raise redis.exceptions.ConnectionError("reply lost (test)")
            return read(self, *args, **kwargs)

        monkeypatch.setattr(redis.connection.AbstractConnection, "read_response", read_once_lost)
        key = _key()
        with pytest.raises(StoreError, match="reply lost"):
            store.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert [c[0] for c in sent] == ["EVALSHA"]  # not resent
        assert store._direct.spare == []  # dropped with its unread reply
        assert not connection.is_connected
        record = store.get(key)  # a fresh connection: its own reply, not the claim's
        assert record is not None
        assert record.status is Status.IN_PROGRESS
        assert not store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired  # the claim ran once
    finally:
        store.close()


def test_a_timed_out_reply_is_never_read_as_the_next_calls(proxy: Proxy) -> None:
    """The reply to a claim comes after socket_timeout: the claim fails and its
    connection is closed; the next call, made before that reply arrives, gets its own
    reply on a new connection (on the old one it would read the claim's)."""
    store = RedisStore(proxy.url(), prefix=PREFIX, socket_timeout=0.2)
    try:
        _warm(store)
        key = _key()
        proxy.delay_next = 0.5
        started = time.monotonic()
        with pytest.raises(StoreError, match="Timeout"):
            store.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert time.monotonic() - started < 0.5  # socket_timeout applied
        record = store.get(key)  # sent at once: the late claim reply is still on its way
        assert record is not None
        assert record.key == key
        assert record.status is Status.IN_PROGRESS
        assert proxy.accepted == 2
        deadline = time.monotonic() + 2
        while proxy.closed_by_client < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.closed_by_client == 1  # the timed-out connection, closed by the store
    finally:
        store.close()


def test_a_server_gone_while_idle_gives_the_connect_error(proxy: Proxy) -> None:
    store = RedisStore(proxy.url(), prefix=PREFIX, socket_connect_timeout=1)
    try:
        _warm(store)
        proxy.close()  # the kept connection closed, nothing listening any more
        with pytest.raises(StoreError, match="cannot connect to Redis: connection refused"):
            store.claim(_key(), "fp", lease=LEASE, ttl=TTL)
    finally:
        store.close()


# -- threads, fork -----------------------------------------------------------------------
def test_threads_sharing_the_store_never_share_a_connection(admin: Any) -> None:
    store = RedisStore(REDIS_URL, prefix=PREFIX)
    _warm(store)
    threads, per_thread = 8, 10
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            for _ in range(per_thread):
                key = _key()
                claim = store.claim(key, "fp", lease=LEASE, ttl=TTL)
                assert claim.acquired
                assert claim.record.key == key
                result = key.encode()
                assert store.complete(key, claim.record.fence, result, ttl=TTL)
                record = store.get(key)
                assert record is not None
                assert record.result == result
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert failures == []
        assert store._direct is not None
        spare = store._direct.spare
        assert 1 <= len(spare) <= threads
        assert len({id(c) for c in spare}) == len(spare)
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_uses_the_parents_connection(admin: Any) -> None:
    store = RedisStore(REDIS_URL, prefix=PREFIX)
    try:
        _warm(store)
        key = _key()
        fence = store.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert store._direct is not None
        (parents,) = store._direct.spare
        pid = os.fork()
        if pid == 0:  # the child: exit code 0 only if all holds
            code = 1
            try:
                record = store.get(key)
                mine = store._direct.spare
                if (
                    record is not None
                    and record.fence == fence
                    and mine
                    and all(c is not parents and c.pid == os.getpid() for c in mine)
                ):
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store._direct.spare == [parents]
        assert store.complete(key, fence, b"r", ttl=TTL)  # the parent's still works
    finally:
        store.close()


# -- injected clients, instrumentation, TLS ----------------------------------------------
def test_an_injected_client_takes_and_returns_a_pooled_connection_per_call(
    admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    store = RedisStore(client=client, prefix=PREFIX)
    try:
        assert store._direct is not None
        assert not store._direct.keep
        commands = _count(monkeypatch, redis.Redis, "_execute_command")
        key = _key()
        fence = store.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert store.complete(key, fence, b"r", ttl=TTL)
        assert commands == []
        pool = client.connection_pool
        assert len(pool._in_use_connections) == 0  # given back after each call
        assert len(pool._available_connections) == 1
        store.close()
        assert client.ping()  # left open
    finally:
        client.close()


def test_clients_with_retries_or_patched_commands_take_the_generic_path(
    admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    retrying = redis.Redis(host=_upstream()[0], port=_upstream()[1], db=int(DB))
    assert RedisStore(client=retrying, prefix=PREFIX)._direct is None  # its retry policy
    retrying.close()

    counted = redis.Redis.from_url(REDIS_URL)
    mine = _count(monkeypatch, counted, "execute_command")  # on the instance
    store = RedisStore(client=counted, prefix=PREFIX)
    key = _key()
    assert store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
    assert mine == [1]
    counted.close()

    wrapped = _count(monkeypatch, redis.Redis, "execute_command")  # on the class
    own = RedisStore(REDIS_URL, prefix=PREFIX)
    try:
        own.get(key)
        own.get(key)
        assert own._direct is not None
        assert wrapped == [1, 1]
    finally:
        own.close()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_tls(admin: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rediss:// through a TLS-terminating proxy: the direct path on redis-py's
    SSLConnection (a kept connection whose TLS buffer is checked before reuse)."""
    cert, key_file = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key_file)
    proxy = Proxy(tls=context)
    store = RedisStore(
        proxy.url("rediss", f"?ssl_ca_certs={cert}&ssl_check_hostname=false"), prefix=PREFIX
    )
    try:
        _warm(store)
        assert store._direct is not None
        (connection,) = store._direct.spare
        assert isinstance(connection, redis.connection.SSLConnection)
        commands = _count(monkeypatch, redis.Redis, "_execute_command")
        key = _key()
        fence = store.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert store.complete(key, fence, b"over tls", ttl=TTL)
        record = store.get(key)
        assert record is not None
        assert record.result == b"over tls"
        assert commands == []
        assert store._direct.spare == [connection]
        assert proxy.accepted == 1
    finally:
        store.close()
        proxy.close()


@pytest.mark.parametrize("retry", ["default", "none"])
def test_an_injected_client_that_resends_a_claim_never_runs_the_function_twice(
    proxy: Proxy, retry: str
) -> None:
    """docs/stores.md: the claim's reply comes after socket_timeout. A ``redis.Redis(...)``
    built with its default retry policy resends the script, which finds the claim it made
    and answers "in progress" (the function does not run; the record stays claimed until
    its lease ends); with ``retry=None`` the call fails closed with ``StoreError``. The
    function never runs in either case, and a later duplicate does not run it either."""
    from idempotence import AlreadyInProgressError

    options: dict[str, Any] = {} if retry == "default" else {"retry": None}
    client = redis.Redis(
        host="127.0.0.1", port=proxy.port, db=int(DB), socket_timeout=0.2, **options
    )
    idem = Idempotency(RedisStore(client=client, prefix=PREFIX), lease=30)
    runs: list[str] = []

    @idem(key="order_id")
    def charge(order: dict[str, Any]) -> str:
        runs.append(order["order_id"])
        return "charged"

    order = {"order_id": _key()}
    try:
        client.ping()
        proxy.delay_next = 0.5
        expected = AlreadyInProgressError if retry == "default" else StoreError
        with pytest.raises(expected):
            charge(order)
        with pytest.raises(AlreadyInProgressError):  # the first claim holds the key
            charge(order)
        assert runs == []
    finally:
        client.close()
