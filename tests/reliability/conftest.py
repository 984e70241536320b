"""Backends of the reliability suite.

Shared services (never stopped here): Redis 127.0.0.1:6379 (db 15, a fresh key prefix per
test), PostgreSQL ``IDEMPOTENCE_TEST_POSTGRES_URL`` and MariaDB ``IDEMPOTENCE_TEST_MYSQL_URL``
(a fresh table per test, dropped after)
and the session's moto server (a fresh DynamoDB table per test). The fault tests start
their own throwaway servers instead (:class:`RedisServer`, :class:`PostgresServer`, a moto
server of their own), so stopping them disturbs nobody.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests import moto_server
from tests.conftest import (
    MYSQL_URL,
    POSTGRES_URL,
    REDIS_URL,
    backend_unavailable,
    mysql_admin_or_unavailable,
    postgres_admin_or_unavailable,
    redis_client_or_unavailable,
    redis_cluster_url_or_unavailable,
)

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture

REGION = "us-east-1"
NETWORKED = ("redis", "postgres", "mysql", "dynamodb")
#: The Redis Cluster of tests/redis_cluster.py (3 masters + 3 replicas on loopback), without
#: and with ``wait_replicas=1`` (EVALSHA + WAIT pipelined on the key's master).
CLUSTER = ("redis-cluster", "redis-cluster-wait")
MULTIPROCESS = ("sqlite", *NETWORKED, *CLUSTER)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def dynamodb_url(table: str, endpoint: str) -> str:
    return f"dynamodb://{table}?region={REGION}&endpoint_url={quote(endpoint, safe='')}"


# -- shared backends: one URL per store kind ------------------------------------------------
def _redis_ready() -> None:
    redis_client_or_unavailable(REDIS_URL).close()


@contextlib.contextmanager
def _postgres_table() -> Iterator[str]:
    conn = postgres_admin_or_unavailable(POSTGRES_URL)
    table = f"rel_{uuid.uuid4().hex[:12]}"
    try:
        yield table
    finally:
        conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        conn.close()


@contextlib.contextmanager
def _mysql_table() -> Iterator[str]:
    conn = mysql_admin_or_unavailable(MYSQL_URL)
    table = f"rel_{uuid.uuid4().hex[:12]}"
    try:
        yield table
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        conn.close()


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL of the kind ``request.param`` on the shared services, empty for this
    test. Spawned processes can build the store from it (``store_from_url``)."""
    kind: str = request.param
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    elif kind == "redis":
        _redis_ready()
        yield f"{REDIS_URL}?prefix=rel-{uuid.uuid4().hex[:12]}:"
    elif kind in CLUSTER:
        wait = "&wait_replicas=1" if kind == "redis-cluster-wait" else ""
        yield f"{redis_cluster_url_or_unavailable()}?prefix=rel-{uuid.uuid4().hex[:12]}:{wait}"
    elif kind == "postgres":
        with _postgres_table() as table:
            sep = "&" if "?" in POSTGRES_URL else "?"
            yield f"{POSTGRES_URL}{sep}table={table}"
    elif kind == "mysql":
        with _mysql_table() as table:
            sep = "&" if "?" in MYSQL_URL else "?"
            yield f"{MYSQL_URL}{sep}table={table}"
    elif kind == "dynamodb":
        from idempotence.stores import DynamoDBStore

        endpoint = request.getfixturevalue("dynamodb_endpoint")
        table = f"rel-{uuid.uuid4().hex[:12]}"
        DynamoDBStore(table, region=REGION, endpoint_url=endpoint).create_table()
        yield dynamodb_url(table, endpoint)
    else:  # pragma: no cover
        raise ValueError(kind)


# -- throwaway servers for the fault tests ------------------------------------------------------
class RedisServer:
    """A private ``redis-server`` with an append-only file fsynced on every write, so a
    SIGKILL and restart keep every acknowledged record (nothing the test checks is lost)."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            backend_unavailable("redis-server is not installed")
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None


class PostgresServer:
    """A throwaway PostgreSQL cluster (``initdb`` in a temp dir, trust auth) on a free
    port. As root, the cluster belongs to the ``postgres`` user (initdb refuses root)."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        initdb = shutil.which("initdb") or (str(found[-1]) if found else None)
        if initdb is None:
            backend_unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bindir = Path(initdb).parent
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                backend_unavailable("running as root without runuser: cannot run initdb")
            self.as_user = [runuser, "-u", "postgres", "--"]
        self.tmp = Path(tempfile.mkdtemp(prefix="idem-pg-"))
        self.data = self.tmp / "data"
        if os.geteuid() == 0:
            shutil.chown(self.tmp, "postgres", "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                  "postgres", "--no-sync", "-E", "UTF8")  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self.as_user, *argv], capture_output=True, timeout=60, cwd=self.tmp, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.decode(errors='replace')}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.tmp} -c fsync=off "
            "-c shared_buffers=16MB -c max_connections=40"
        )
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.tmp / "log"), "-w", "-t", "30", "start")  # fmt: skip

    def kill(self) -> None:
        """Immediate shutdown: every backend dies at once, like a crash."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                  "-w", "stop")  # fmt: skip

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    pytest.importorskip("redis")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    pytest.importorskip("psycopg")
    try:
        server = PostgresServer()
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        backend_unavailable(f"could not start a throwaway PostgreSQL: {exc}")
    try:
        yield server
    finally:
        server.destroy()


class MotoServer:
    """A moto server of our own behind a stable address: ``tests.moto_server`` binds a
    free port each time, so clients reach it through a :class:`FaultProxy` that is
    retargeted when the server restarts (moto keeps its tables in this process, so they
    survive the restart, as DynamoDB's would)."""

    def __init__(self) -> None:
        from tests.reliability.proxy import FaultProxy

        self._stop: Any = None
        self.upstream = self._start()
        host, port = self.upstream.rsplit(":", 1)
        self.front = FaultProxy(host.removeprefix("http://"), int(port))

    @property
    def endpoint(self) -> str:
        return f"http://{self.front.address}"

    def _start(self) -> str:
        url, self._stop = moto_server.start_moto_server()
        return url

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None
        self.front.drop_all()

    def start(self) -> None:
        url = self._start()
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.front.retarget(host, int(port))

    def close(self) -> None:
        self.stop()
        self.front.close()


@pytest.fixture
def moto(dynamodb_endpoint: str) -> Iterator[MotoServer]:
    """Our own moto server (the session fixture only provides the fake credentials)."""
    try:
        server = MotoServer()
    except (ImportError, OSError) as exc:
        backend_unavailable(f"moto server could not start: {exc}")
    try:
        yield server
    finally:
        server.close()
