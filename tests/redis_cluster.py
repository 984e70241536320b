"""A Redis Cluster on loopback for the tests: 3 masters + 3 replicas on ports 7000-7005.

Used by the pytest fixtures (``tests/stores/test_redis_cluster.py``, the reliability
conftest) and by ``.ci/run``::

    python tests/redis_cluster.py start   # start or heal it (rebuilt if it cannot be healed)
    python tests/redis_cluster.py status  # exit 0 when healthy (else print every node's view)
    python tests/redis_cluster.py stop    # shut the nodes down (data is not saved)

Each node runs ``redis-server --cluster-enabled yes --save '' --appendonly no --daemonize
yes`` with its files in ``$IDEMPOTENCE_TEST_REDIS_CLUSTER_DIR`` (default
``<tmp>/idempotence-redis-cluster``); ``redis-cli --cluster create`` joins them. The nodes
are queried over a plain socket (no ``redis`` package needed: ``.ci/run`` runs this file
with the system Python before the virtualenv exists).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
BASE_PORT = int(os.environ.get("IDEMPOTENCE_TEST_REDIS_CLUSTER_PORT", "7000"))
PORTS = tuple(range(BASE_PORT, BASE_PORT + 6))
DIRECTORY = Path(
    os.environ.get(
        "IDEMPOTENCE_TEST_REDIS_CLUSTER_DIR",
        str(Path(tempfile.gettempdir()) / "idempotence-redis-cluster"),
    )
)
#: Serializes healing and rebuilding between processes (outside DIRECTORY: stop removes it).
LOCK = DIRECTORY.with_name(DIRECTORY.name + ".lock")
#: The store URL of this cluster (three startup nodes; the client discovers the rest).
URL = "redis+cluster://" + ",".join(f"{HOST}:{port}" for port in PORTS[:3])
#: How long a cluster some of whose nodes run is left to settle (a failover, a resync) before
#: the nodes that are down are restarted, then how long the restarted nodes get to rejoin.
SETTLE = 15.0
REJOIN = 20.0


# -- talking to a node (RESP2 over a socket) --------------------------------------------------
class ReplyError(Exception):
    """An error reply (``-ERR ...``) from a node."""


def _read(stream: Any) -> Any:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("the node closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return ReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("the node closed the connection")
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read(stream) for _ in range(size)]
    raise ConnectionError(f"unexpected reply from the node: {line[:40]!r}")


def query(port: int, *commands: tuple[str, ...], timeout: float = 2.0) -> list[Any]:
    """Send ``commands`` to node ``port`` in one pipeline; their replies, in order (an error
    reply is a :class:`ReplyError` in the list). Raises ``OSError`` when the node does not
    answer within ``timeout`` (down, or stopped by SIGSTOP)."""
    payload = b"".join(
        b"*%d\r\n" % len(command)
        + b"".join(b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in command)
        for command in commands
    )
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        with sock.makefile("rb") as stream:
            return [_read(stream) for _ in commands]


def _fields(text: str) -> dict[str, str]:
    return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)


@dataclass(frozen=True)
class Peer:
    """One line of a node's ``CLUSTER NODES``: how that node sees a node of the cluster."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # None for a master
    connected: bool
    slots: tuple[str, ...]  # ranges, and "[slot->-id]" / "[slot-<-id]" while migrating

    @property
    def role(self) -> str:
        return "master" if "master" in self.flags else "slave"


@dataclass(frozen=True)
class View:
    """What node ``port`` reports: ``CLUSTER INFO``, ``INFO replication`` (its own role) and
    its ``CLUSTER NODES`` (``peers`` by port, itself included)."""

    port: int
    info: dict[str, str]
    replication: dict[str, str]
    peers: dict[int, Peer]
    nodes_text: str

    @property
    def role(self) -> str:
        """The node's own word: ``master`` or ``slave``."""
        return self.replication.get("role", "?")

    @property
    def myself(self) -> Peer:
        return next(peer for peer in self.peers.values() if "myself" in peer.flags)


def _peer(line: str) -> Peer:
    node_id, address, flags, master, _ping, _pong, _epoch, link, *slots = line.split()
    return Peer(
        id=node_id,
        port=int(address.split("@", 1)[0].rsplit(":", 1)[1]),
        flags=frozenset(flags.split(",")),
        master_id=None if master == "-" else master,
        connected=link == "connected",
        slots=tuple(slots),
    )


def view(port: int, timeout: float = 2.0) -> View | None:
    """Node ``port``'s view, or None when it does not answer."""
    try:
        info, replication, nodes = query(
            port,
            ("CLUSTER", "INFO"),
            ("INFO", "replication"),
            ("CLUSTER", "NODES"),
            timeout=timeout,
        )
    except (OSError, ValueError):
        return None
    if any(isinstance(reply, ReplyError) for reply in (info, replication, nodes)):
        return None  # e.g. LOADING, or not a cluster node
    peers = [_peer(line) for line in nodes.splitlines() if line.strip()]
    return View(port, _fields(info), _fields(replication), {p.port: p for p in peers}, nodes)


def views() -> dict[int, View | None]:
    """Every node's view (None for a node that does not answer)."""
    return {port: view(port) for port in PORTS}


def _shape(v: View) -> frozenset[tuple[int, str, int | None, tuple[str, ...]]]:
    """The topology node ``v`` believes in: (port, role, its master's port, slots)."""
    ports = {peer.id: peer.port for peer in v.peers.values()}
    return frozenset(
        (p.port, p.role, ports.get(p.master_id or ""), p.slots) for p in v.peers.values()
    )


def problems(seen: dict[int, View | None] | None = None) -> list[str]:
    """Why the cluster is not healthy (empty when it is): every node answers, reports
    ``cluster_state:ok`` with all 16384 slots and 6 known nodes, flags no node failing or
    in handshake, migrates no slot, and all agree on one topology of 3 masters with one
    replica each, which the nodes confirm themselves (a master has its replica online, a
    replica's link to its master is up and not syncing)."""
    seen = views() if seen is None else seen
    found: list[str] = []
    for port, v in seen.items():
        if v is None:
            found.append(f"{port} does not answer")
            continue
        state = (
            v.info.get(n) for n in ("cluster_state", "cluster_slots_ok", "cluster_known_nodes")
        )
        if tuple(state) != ("ok", "16384", str(len(PORTS))):
            found.append(
                f"{port} reports cluster_state:{v.info.get('cluster_state')} "
                f"slots_ok:{v.info.get('cluster_slots_ok')} "
                f"known_nodes:{v.info.get('cluster_known_nodes')}"
            )
        for peer in v.peers.values():
            bad = peer.flags & {"fail", "fail?", "handshake", "noaddr"}
            if bad or not peer.connected:
                found.append(f"{port} sees {peer.port} as {','.join(sorted(peer.flags))}")
            if any(s.startswith("[") for s in peer.slots):
                found.append(f"{port} sees a slot migrating on {peer.port}")
    answered = {port: v for port, v in seen.items() if v is not None}
    if found or not answered:
        return found
    shapes = {_shape(v) for v in answered.values()}
    if len(shapes) > 1:
        return [f"the nodes disagree on the topology ({len(shapes)} versions)"]
    shape = shapes.pop()
    masters = {port for port, role, _m, _s in shape if role == "master"}
    replicas = {port: master for port, role, master, _s in shape if role == "slave"}
    if len(masters) != 3 or sorted(map(str, replicas.values())) != sorted(map(str, masters)):
        found.append(f"masters {sorted(masters)}, replicas {replicas}: not 3 pairs")
    for port in masters:
        r = answered[port].replication if port in answered else {}
        if r.get("role") != "master" or r.get("connected_slaves") != "1":
            found.append(f"{port} says role:{r.get('role')} replicas:{r.get('connected_slaves')}")
        elif "state=online" not in r.get("slave0", ""):  # a full sync is not over
            found.append(f"{port}'s replica is not online ({r.get('slave0')})")
    for port, master in replicas.items():
        r = answered[port].replication if port in answered else {}
        if (r.get("role"), r.get("master_port"), r.get("master_link_status")) != (
            "slave",
            str(master),
            "up",
        ) or r.get("master_sync_in_progress", "0") != "0":
            found.append(
                f"{port} says role:{r.get('role')} master_port:{r.get('master_port')} "
                f"link:{r.get('master_link_status')} (replica of {master} for the cluster)"
            )
    return found


def healthy() -> bool:
    """Whether the cluster has no :func:`problems` (one socket and one round trip per node)."""
    return not problems()


def describe(seen: dict[int, View | None] | None = None) -> str:
    """Every node's own account (role, cluster state, ``CLUSTER NODES``) and the problems
    found: for failure messages, so that a CI log shows why the cluster was not usable."""
    seen = views() if seen is None else seen
    parts = []
    for port, v in seen.items():
        if v is None:
            parts.append(f"-- {port}: does not answer")
            continue
        parts.append(
            f"-- {port}: role:{v.role} cluster_state:{v.info.get('cluster_state')} "
            f"slots_ok:{v.info.get('cluster_slots_ok')} "
            f"known_nodes:{v.info.get('cluster_known_nodes')} "
            f"epoch:{v.info.get('cluster_current_epoch')}\n{v.nodes_text.rstrip()}"
        )
    found = problems(seen)
    parts.append("problems: " + ("; ".join(found) if found else "none"))
    return "\n".join(parts)


# -- running the nodes ---------------------------------------------------------------------
def listening(port: int) -> bool:
    """Whether something accepts connections on ``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _our_pid(port: int) -> int | None:
    """The pid in node ``port``'s pidfile, if that process is still our redis-server."""
    try:
        pid = int((DIRECTORY / f"{port}.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"redis-server" in cmdline and f":{port}".encode() in cmdline else None


def stop() -> None:
    """Shut every node down (no save) and remove the cluster's files. A node that does not
    shut down (e.g. stopped by SIGSTOP) is killed through its pidfile."""
    for port in PORTS:
        with contextlib.suppress(OSError, ValueError):
            query(port, ("SHUTDOWN", "NOSAVE"), timeout=2)
    for attempt in range(60):
        alive = [port for port in PORTS if listening(port)]
        if not alive:
            break
        if attempt == 30:  # 3 s
            for port in alive:
                if (pid := _our_pid(port)) is not None:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGCONT)
                        os.kill(pid, signal.SIGKILL)
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
        # A full sync (a new or rejoining replica) starts at once instead of after 5 s.
        "repl-diskless-sync-delay": "0",
        "daemonize": "yes",
        "pidfile": str(DIRECTORY / f"{port}.pid"),
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


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _heal(deadline: float) -> bool:
    """Wait for a cluster created before (some of whose nodes run) to settle, restart its
    nodes that stay down, resume those left stopped, and wait for it again. Nodes are
    restarted or resumed only after :data:`SETTLE`: a master with no persistence comes back
    empty, so its replica must have had the time to take over (the cluster's node timeout
    is 2 s), and a test may stop a replica for a moment on purpose."""
    if _wait_healthy(min(deadline, time.monotonic() + SETTLE)):
        return True
    down = [port for port in PORTS if not listening(port)]
    for port in down:
        run_node(port)
    stopped = {p: pid for p in PORTS if p not in down and (pid := _our_pid(p)) is not None}
    stopped = {p: pid for p, pid in stopped.items() if view(p) is None}
    for pid in stopped.values():  # left stopped (SIGSTOP) by a test that did not end
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
    return bool(down or stopped) and _wait_healthy(min(deadline, time.monotonic() + REJOIN))


def _create(deadline: float) -> None:
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (apt-get install redis-server)")
    for port in PORTS:
        if listening(port):
            raise RuntimeError(
                f"port {port} is taken, but no cluster was created in {DIRECTORY}: stop "
                "what listens there (tests/redis_cluster.py stop, if it is a node of ours)"
            )
    shutil.rmtree(DIRECTORY, ignore_errors=True)  # files of a cluster never completed
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    for port in PORTS:
        run_node(port)
    while not all(listening(port) for port in PORTS):
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
        timeout=max(deadline - time.monotonic(), 10),
        check=False,
    )
    if created.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
    if not _wait_healthy(deadline):
        raise RuntimeError(
            f"the new cluster on ports {PORTS[0]}-{PORTS[-1]} did not become healthy; logs in "
            f"{DIRECTORY}\n{describe()}"
        )


def start(timeout: float = 60) -> str:
    """Make sure the cluster is healthy (:func:`problems`); returns its URL. Immediate when it
    is. Raises ``RuntimeError`` (with the reason) only when a freshly built cluster does not
    come up, e.g. no ``redis-server`` on the PATH or a port taken by something else.

    The cluster is shared by every test session on the machine, and a test may be failing a
    master over on purpose, so a cluster created before (its ``nodes-PORT.conf`` files exist)
    some of whose nodes run is first healed: waited for while a failover or a resync settles,
    then its nodes that stay down are restarted (they rejoin). Only when it is still not
    healthy, or none of its nodes runs (a session that ended killed them: their configs are
    stale), is it rebuilt from scratch (stop, then create: its data is lost). Healing and
    rebuilding hold a file lock, so concurrent sessions do not rebuild it twice."""
    if healthy():
        return URL
    with _locked():
        deadline = time.monotonic() + timeout
        if healthy():
            return URL
        created = all((DIRECTORY / f"nodes-{port}.conf").exists() for port in PORTS)
        if created:
            running = any(listening(port) for port in PORTS)
            if running and _heal(deadline):
                return URL
            why = "could not be healed" if running else "has no node running (stale configs)"
            print(
                f"tests/redis_cluster.py: rebuilding the cluster on ports {PORTS[0]}-"
                f"{PORTS[-1]}, which {why}:\n{describe()}",
                file=sys.stderr,
            )
            stop()
        _create(time.monotonic() + timeout)
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
        seen = views()
        if not problems(seen):
            print("healthy")
            return 0
        print(f"not running or not healthy\n{describe(seen)}")
        return 1
    print(f"usage: {argv[0]} start|stop|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
