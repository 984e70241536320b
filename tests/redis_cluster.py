"""A Redis Cluster on loopback for the tests: 3 masters + 3 replicas on ports 7000-7005.

Used by the pytest fixtures (``tests/stores/test_redis_cluster.py``, the reliability
conftest) and by ``.ci/run``::

    python tests/redis_cluster.py start   # start (if not running) and wait until healthy
    python tests/redis_cluster.py status  # exit 0 when every node answers and cluster_state:ok
    python tests/redis_cluster.py stop    # shut the nodes down (data is not saved)

Each node runs ``redis-server --cluster-enabled yes --save '' --appendonly no --daemonize
yes`` with its files in ``$IDEMPOTENCE_TEST_REDIS_CLUSTER_DIR`` (default
``<tmp>/idempotence-redis-cluster``); ``redis-cli --cluster create`` joins them. Starting is
idempotent: a running cluster is left alone (waited for while a failover or a resync
settles), a half-started one (not every node up, or not joined) is stopped and rebuilt.
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
    every master has a connected replica."""
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
    return len(masters) == 3 and all(
        "connected_slaves:1" in _cli(p, "info", "replication").stdout for p in masters
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


def start(timeout: float = 60) -> str:
    """Start the cluster unless it is already healthy; wait until it is. Returns its URL.
    Raises ``RuntimeError`` (with the reason) when it cannot be brought up, e.g. no
    ``redis-server`` on the PATH or a port taken by something else."""
    if healthy():
        return URL
    deadline = time.monotonic() + timeout
    if all(_listening(port) for port in PORTS) and all(
        _info(port).get("cluster_known_nodes") == str(len(PORTS)) for port in PORTS
    ):
        # Formed, but a failover or a replica's resync is under way: wait, never rebuild a
        # running cluster (that would wipe the data of tests using it).
        while not healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the cluster on ports {PORTS[0]}-{PORTS[-1]} runs but is not healthy; "
                    f"see the logs in {DIRECTORY}, or stop it (tests/redis_cluster.py stop)"
                )
            time.sleep(0.2)
        return URL
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (apt-get install redis-server)")
    stop()
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    for port in PORTS:
        if _listening(port):
            raise RuntimeError(f"port {port} is taken by a process that is not this cluster")
        options = {
            "cluster-enabled": "yes",
            "port": str(port),
            "bind": HOST,
            "cluster-config-file": f"nodes-{port}.conf",
            "cluster-node-timeout": "2000",
            "save": "",
            "appendonly": "no",
            "daemonize": "yes",
            "dir": str(DIRECTORY),
            "logfile": str(DIRECTORY / f"{port}.log"),
        }
        args = [part for name, value in options.items() for part in (f"--{name}", value)]
        subprocess.run(["redis-server", *args], check=True, timeout=10)
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
    while not healthy():
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster did not reach cluster_state:ok with 3 replicas")
        time.sleep(0.2)
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
