"""A Redis Cluster on loopback for the tests: 3 masters + 3 replicas on ports 7000-7005.

Used by the pytest fixtures (``tests/stores/test_redis_cluster.py``, the reliability
conftest) and by ``.ci/run``::

    python tests/redis_cluster.py start   # start (if not running) and wait until healthy
    python tests/redis_cluster.py status  # exit 0 when every node answers and cluster_state:ok
    python tests/redis_cluster.py stop    # shut the nodes down (data is not saved)

Each node runs ``redis-server --cluster-enabled yes --save '' --appendonly no --daemonize
yes`` with its files in ``$IDEMPOTENCE_TEST_REDIS_CLUSTER_DIR`` (default
``<tmp>/idempotence-redis-cluster``); ``redis-cli --cluster create`` joins them. Starting is
idempotent and never stops a node (see :func:`start`): ``stop`` is the only way to rebuild.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
BASE_PORT = int(os.environ.get("IDEMPOTENCE_TEST_REDIS_CLUSTER_PORT", "7000"))
PORTS = tuple(range(BASE_PORT, BASE_PORT + 6))
DIRECTORY = Path(
    os.environ.get(
        "IDEMPOTENCE_TEST_REDIS_CLUSTER_DIR",
        str(Path(tempfile.gettempdir()) / "idempotence-redis-cluster"),
    )
)
#: The store URL of this cluster (three startup nodes; the client discovers the rest).
URL = "redis+cluster://" + ",".join(f"{HOST}:{port}" for port in PORTS[:3])


def _cli(port: int, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["redis-cli", "-h", HOST, "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _info(port: int) -> dict[str, str]:
    out = _cli(port, "cluster", "info", timeout=3).stdout
    pairs = (line.strip().split(":", 1) for line in out.splitlines() if ":" in line)
    return dict(pairs)


def healthy() -> bool:
    """Every node answers, the cluster is ``ok`` with all 16384 slots and 6 known nodes, and
    every master has a replica that is online (connected and done syncing)."""
    if not all(_listening(port) for port in PORTS):
        return False
    for port in PORTS:
        info = _info(port)
        if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
            return False
        if info.get("cluster_known_nodes") != str(len(PORTS)):
            return False
        roles = [line.split()[2] for line in _cli(port, "cluster", "nodes").stdout.splitlines()]
        if sum("slave" in role for role in roles) != 3:  # every node sees 3 replicas
            return False
    masters = [p for p in PORTS if "role:master" in _cli(p, "info", "replication").stdout]
    return len(masters) == 3 and all(  # a replica in the middle of a full sync is not online
        "connected_slaves:1" in (out := _cli(p, "info", "replication").stdout)
        and "state=online" in out
        for p in masters
    )


def stop() -> None:
    """Shut every node down (no save) and remove the cluster's files."""
    for port in PORTS:
        if _listening(port):
            _cli(port, "shutdown", "nosave", timeout=5)
    for _ in range(50):
        if not any(_listening(port) for port in PORTS):
            break
        time.sleep(0.1)
    shutil.rmtree(DIRECTORY, ignore_errors=True)


def run_node(port: int) -> None:
    """Start the node of ``port`` (daemonized). Its ``nodes-PORT.conf`` in
    :data:`DIRECTORY` keeps its identity, so a node restarted after a crash rejoins the
    cluster (as a replica when its slots were failed over)."""
    options = {
        "cluster-enabled": "yes",
        "port": str(port),
        "bind": HOST,
        "cluster-config-file": f"nodes-{port}.conf",
        "cluster-node-timeout": "2000",
        "save": "",
        "appendonly": "no",
        # Nodes share the directory: a replica's full sync writes an RDB file, which a node
        # restarted after a crash would load, so each node has its own.
        "dbfilename": f"dump-{port}.rdb",
        "daemonize": "yes",
        "dir": str(DIRECTORY),
        "logfile": str(DIRECTORY / f"{port}.log"),
    }
    args = [part for name, value in options.items() for part in (f"--{name}", value)]
    subprocess.run(["redis-server", *args], check=True, timeout=10)


def _wait_healthy(until: float) -> bool:
    while not healthy():
        if time.monotonic() > until:
            return False
        time.sleep(0.2)
    return True


def start(timeout: float = 60) -> str:
    """Start the cluster unless it is already healthy; wait until it is. Returns its URL.
    Raises ``RuntimeError`` (with the reason) when it cannot be brought up, e.g. no
    ``redis-server`` on the PATH or a port taken by something else.

    Never stops a node: the cluster is shared by every test session on the machine, and a
    test may be failing a master over on purpose. A cluster created here before (its
    ``nodes-PORT.conf`` files exist) is waited for while a failover or a resync settles
    (the cluster's node timeout is 2 s), then nodes that are still down are restarted from
    their configuration (they rejoin; a master with no persistence comes back empty, so it
    is restarted only after its replica had the time to take over)."""
    if healthy():
        return URL
    deadline = time.monotonic() + timeout
    if all((DIRECTORY / f"nodes-{port}.conf").exists() for port in PORTS):
        if _wait_healthy(min(deadline, time.monotonic() + 15)):
            return URL
        for port in PORTS:
            if not _listening(port):
                run_node(port)
        if _wait_healthy(deadline):
            return URL
        raise RuntimeError(
            f"the cluster on ports {PORTS[0]}-{PORTS[-1]} is not healthy; see the logs in "
            f"{DIRECTORY}, or rebuild it: tests/redis_cluster.py stop, then start"
        )
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (apt-get install redis-server)")
    for port in PORTS:
        if _listening(port):
            raise RuntimeError(
                f"port {port} is taken, but no cluster was created in {DIRECTORY}: stop "
                "what listens there (tests/redis_cluster.py stop, if it is a node of ours)"
            )
    shutil.rmtree(DIRECTORY, ignore_errors=True)  # files of a cluster never completed
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    for port in PORTS:
        run_node(port)
    while not all(_listening(port) for port in PORTS):
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster's nodes did not start listening")
        time.sleep(0.1)
    created = subprocess.run(
        [
            *("redis-cli", "--cluster", "create"),
            *(f"{HOST}:{port}" for port in PORTS),
            *("--cluster-replicas", "1", "--cluster-yes"),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if created.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
    if not _wait_healthy(deadline):
        raise RuntimeError("the cluster did not reach cluster_state:ok with 3 replicas")
    return URL


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "start"
    if command == "start":
        print(start())
        return 0
    if command == "stop":
        stop()
        return 0
    if command == "status":
        ok = healthy()
        print("healthy" if ok else "not running or not healthy")
        return 0 if ok else 1
    print(f"usage: {argv[0]} start|stop|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
