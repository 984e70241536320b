"""RedisStore on a real Redis Cluster: 3 masters + 3 replicas on 127.0.0.1:7000-7005,
started by ``tests/redis_cluster.py`` (skipped when it cannot start, failed in CI)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio.connection
import redis.cluster
import redis.connection

from idempotence import Idempotency, StoreError
from idempotence.stores import RedisStore, store_from_url
from idempotence.testing import LEASE, TTL, ManualClock, StoreContract, StoreDriver
from tests import redis_cluster
from tests.aws_lambda.events import FakeContext, load, redeliver, sqs_message
from tests.conftest import REDIS_URL, redis_client_or_unavailable, redis_cluster_url_or_unavailable

PREFIX = f"idempotence-test:{uuid.uuid4().hex}:"


@pytest.fixture(scope="session")
def cluster_url() -> str:
    return redis_cluster_url_or_unavailable()


@pytest.fixture(scope="session")
def admin(cluster_url: str) -> Iterator[Any]:
    """A plain cluster client; deletes this session's keys at the end."""
    client = redis.cluster.RedisCluster(
        host=redis_cluster.HOST, port=redis_cluster.PORTS[0], socket_timeout=5
    )
    yield client
    for key in client.scan_iter(match=PREFIX + "*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _key() -> str:
    return f"k#{uuid.uuid4().hex}"


def _node(port: int) -> redis.Redis:
    return redis.Redis(host=redis_cluster.HOST, port=port, socket_timeout=5)


class TestRedisClusterStore(StoreContract):
    @pytest.fixture
    def store(self, clock: ManualClock, cluster_url: str) -> Iterator[RedisStore]:
        store = RedisStore(cluster_url, prefix=PREFIX, clock=clock)
        yield store
        store.close()

    @pytest.fixture
    def store_url(self, cluster_url: str) -> str:
        return f"{cluster_url}?prefix={PREFIX}"


class TestRedisClusterStoreWaitingForAReplica(StoreContract):
    """The contract again with ``wait_replicas=1``: every write goes through the pipelined
    EVALSHA + WAIT path on the key's master."""

    @pytest.fixture
    def store(self, clock: ManualClock, cluster_url: str) -> Iterator[RedisStore]:
        store = RedisStore(cluster_url, prefix=PREFIX, clock=clock, wait_replicas=1)
        yield store
        store.close()

    @pytest.fixture
    def store_url(self, cluster_url: str) -> str:
        return f"{cluster_url}?prefix={PREFIX}&wait_replicas=1"


# -- slots, round trips, clock ---------------------------------------------------------------
def test_records_live_on_the_master_owning_their_slot(cluster_url: str, admin: Any) -> None:
    store = RedisStore(cluster_url, prefix=PREFIX)
    try:
        keys = [_key() for _ in range(30)]
        for key in keys:
            assert store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
        owners = {admin.get_node_from_key(PREFIX + key).port for key in keys}
        assert len(owners) == 3  # the records are spread over every master
        for key in keys:
            owner = admin.get_node_from_key(PREFIX + key)
            node = _node(owner.port)
            assert node.hget(PREFIX + key, "status") == b"IN_PROGRESS"
            node.close()
    finally:
        store.close()


@pytest.fixture
def packets(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes]]:
    """(port, bytes) of every write to a Redis socket, sync or async: one per round trip."""
    log: list[tuple[int, bytes]] = []
    sync_send: Any = redis.connection.AbstractConnection.send_packed_command
    async_send: Any = redis.asyncio.connection.AbstractConnection.send_packed_command

    def flat(command: Any) -> bytes:
        if isinstance(command, (bytes, bytearray, memoryview)):
            return bytes(command)
        if isinstance(command, str):
            return command.encode()
        return b"".join(flat(part) for part in command)

    def send(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        log.append((int(self.port), flat(command)))
        return sync_send(self, command, *args, **kwargs)

    async def asend(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        log.append((int(self.port), flat(command)))
        return await async_send(self, command, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)
    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", asend)
    return log


@pytest.mark.parametrize("wait", [0, 1])
def test_each_operation_is_one_round_trip_to_the_owning_master(
    cluster_url: str, admin: Any, mode: str, wait: int, packets: list[tuple[int, bytes]]
) -> None:
    """Without WAIT: one EVALSHA. With ``wait_replicas``: EVALSHA and WAIT pipelined in one
    write on one connection (WAIT counts its own connection's writes), still one round
    trip; ``get`` never waits."""
    s = StoreDriver(RedisStore(cluster_url, prefix=PREFIX, wait_replicas=wait), mode)
    try:
        warm = _key()  # connect, discover the slots, load the scripts on every master
        for _ in range(3):
            for key in [_key() for _ in range(12)] + [warm]:
                fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
                s.renew(key, fence, lease=LEASE)
                s.get(key)
                s.complete(key, fence, b"r", ttl=TTL)
                s.delete(key)

        def one(name: str, *args: Any, **kwargs: Any) -> Any:
            before = len(packets)
            outcome = getattr(s, name)(*args, **kwargs)
            sent = packets[before:]
            assert len(sent) == 1, (name, sent)
            port, payload = sent[0]
            assert port == admin.get_node_from_key(PREFIX + args[0]).port
            assert b"EVALSHA" in payload
            assert (b"WAIT" in payload) == (bool(wait) and name != "get")
            return outcome

        key = _key()
        fence = one("claim", key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert one("renew", key, fence, lease=LEASE)
        assert one("complete", key, fence, b"result", ttl=TTL)
        assert one("get", key).result == b"result"
        assert one("claim", key, "fp", lease=LEASE, ttl=TTL).record.result == b"result"
        assert one("delete", key)
    finally:
        s.close()
        s.store.close()


def test_the_owning_masters_clock_decides(cluster_url: str, admin: Any) -> None:
    store = RedisStore(cluster_url, prefix=PREFIX)
    try:
        key = _key()
        owner = _node(admin.get_node_from_key(PREFIX + key).port)
        seconds, micros = owner.time()
        owner.close()
        claim = store.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert claim.now == pytest.approx(seconds + micros / 1e6, abs=5)
        assert claim.record.fence == int(claim.now * 1000)
    finally:
        store.close()


def test_hash_tags_in_keys_stay_one_key_per_script(cluster_url: str, admin: Any) -> None:
    """A user key holding ``{...}`` only changes which slot its record lands in."""
    store = RedisStore(cluster_url, prefix=PREFIX)
    try:
        for key in ["{tenant}:a", "{tenant}:b", "}{x", "{}", "a{b}c{d}"]:
            key += uuid.uuid4().hex
            claim = store.claim(key, "fp", lease=LEASE, ttl=TTL)
            assert claim.acquired
            assert store.complete(key, claim.record.fence, b"r", ttl=TTL)
            assert store.claim(key, "fp", lease=LEASE, ttl=TTL).record.result == b"r"
            assert admin.exists(PREFIX + key) == 1
    finally:
        store.close()


# -- URLs ------------------------------------------------------------------------------------
def test_cluster_urls(cluster_url: str) -> None:
    store = store_from_url(f"{cluster_url}?prefix=custom:&wait_replicas=1&wait_timeout=0.5")
    assert isinstance(store, RedisStore)
    assert (store.cluster, store.prefix, store.wait_replicas, store.wait_timeout) == (
        True,
        "custom:",
        1,
        0.5,
    )
    store.close()
    tls = store_from_url("rediss+cluster://user:secret@[::1]:7000,h2:7001,h3?socket_timeout=2")
    assert isinstance(tls, RedisStore)
    assert tls.cluster
    nodes, kwargs = tls._cluster_options(redis.retry.Retry)
    assert nodes == [("::1", 7000), ("h2", 7001), ("h3", 6379)]
    assert (kwargs["ssl"], kwargs["username"], kwargs["password"]) == (True, "user", "secret")
    assert kwargs["socket_timeout"] == 2.0
    assert kwargs["retry"].get_retries() == 0  # a script whose reply was lost is not re-sent


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://h:7000/3", "database 0"),
        ("redis+cluster://h:7000?db=2", "database 0"),
        ("redis+cluster://h:notaport", "host:port"),
        ("redis+cluster://h:7000,,h:7001", "host:port"),
        ("redis+cluster://h:7000?wait_replicas=-1", "wait_replicas"),
        ("redis+cluster://h:7000?wait_replicas=1&wait_timeout=0", "wait_timeout"),
        ("redis://h:6379/0?wait_replicas=1&wait_timeout=9", "shorter than socket_timeout"),
        ("redis+cluster://h:7000?secretopt=s3cr3t", "unknown option 'secretopt'"),
    ],
)
def test_bad_cluster_urls_are_refused_without_io(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        store_from_url(url)
    assert "s3cr3t" not in str(info.value)


def test_unreachable_cluster_raises_store_error(mode: str) -> None:
    s = StoreDriver(RedisStore("redis+cluster://127.0.0.1:1,127.0.0.1:2", prefix=PREFIX), mode)
    try:
        with pytest.raises(StoreError, match="cannot connect to Redis: connection refused"):
            s.claim(_key(), "fp", lease=LEASE, ttl=TTL)
    finally:
        s.close()
        s.store.close()


# -- WAIT --------------------------------------------------------------------------------------
def test_a_write_no_replica_acknowledges_fails_closed(mode: str) -> None:
    """The shared single Redis has no replica: with ``wait_replicas=1`` the write is applied
    but not acknowledged, so the call raises; a claim that writes nothing does not wait."""
    redis_client_or_unavailable(REDIS_URL).close()
    store = RedisStore(REDIS_URL, prefix=PREFIX, wait_replicas=1, wait_timeout=0.2)
    s = StoreDriver(store, mode)
    try:
        key = _key()
        with pytest.raises(StoreError, match=r"only 0 of the 1 replica\(s\)"):
            s.claim(key, "fp", lease=LEASE, ttl=TTL)
        refused = s.claim(key, "fp", lease=LEASE, ttl=TTL)  # wrote nothing: answered
        assert not refused.acquired
        assert refused.record.status.value == "IN_PROGRESS"  # the first claim holds the key
    finally:
        s.close()
        store.close()


def _owner_and_replica(admin: Any, key: str) -> tuple[int, int]:
    """Ports of the master owning ``key``'s slot and of its replica."""
    master = admin.get_node_from_key(key)
    replica = admin.get_node_from_key(key, replica=True)
    assert replica is not None
    assert replica.port != master.port
    return int(master.port), int(replica.port)


def test_a_stalled_replica_makes_a_waited_write_fail(
    cluster_url: str, admin: Any, mode: str
) -> None:
    """The key's replica stops answering (SIGSTOP, shorter than the cluster's node timeout):
    a write under ``wait_replicas=1`` is not acknowledged and fails closed, where the same
    write without WAIT would have been acknowledged unreplicated."""
    store = RedisStore(cluster_url, prefix=PREFIX, wait_replicas=1, wait_timeout=0.3)
    s = StoreDriver(store, mode)
    key = _key()
    try:
        s.get(key)  # connected, slots known
        _master, replica_port = _owner_and_replica(admin, PREFIX + key)
        replica = _node(replica_port)
        pid = int(replica.info("server")["process_id"])
        replica.close()
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreError, match=r"only 0 of the 1 replica\(s\)"):
                s.claim(key, "fp", lease=LEASE, ttl=TTL)
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        s.close()
        store.close()


def _roles(port: int) -> dict[int, str]:
    """Port -> "master"/"slave" as node ``port`` sees the cluster."""
    node = _node(port)
    try:
        nodes = node.cluster("NODES")
    finally:
        node.close()
    return {
        int(address.rsplit(":", 1)[1]): "master" if "master" in fields["flags"] else "slave"
        for address, fields in nodes.items()
    }


def _settled(old: int, new: int, timeout: float = 10) -> bool:
    """Whether every node agrees, three polls in a row, that ``new`` is a master and ``old``
    its replica (False when the promotion was undone: two manual failovers in quick
    succession can collide on the config epoch and the older master wins the slots back)."""
    deadline, agreed = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        views = [_roles(port) for port in redis_cluster.PORTS]
        if all(v.get(new) == "master" and v.get(old) == "slave" for v in views):
            agreed += 1
            if agreed == 3 and redis_cluster.healthy():
                return True
        else:
            agreed = 0
            if views[redis_cluster.PORTS.index(new)].get(new) == "slave" and time.monotonic() > (
                deadline - timeout + 3
            ):
                return False
        time.sleep(0.2)
    return False


def _failover(admin: Any, key: str) -> tuple[int, int]:
    """``CLUSTER FAILOVER`` on the replica of ``key``'s master, until every node agrees the
    replica is the slot's master (retried if Redis undid it). Returns (old, new) ports."""
    redis_cluster.start()  # an earlier failover has settled
    admin.nodes_manager.initialize()  # the session's client may hold a stale slot map
    old, new = _owner_and_replica(admin, key)
    promoted = _node(new)
    try:
        for _ in range(3):
            assert promoted.cluster("FAILOVER") in (b"OK", True, "OK")
            if _settled(old, new):
                return old, new
    finally:
        promoted.close()
    raise AssertionError("the failover did not settle")


@pytest.mark.parametrize("wait", [0, 1])
def test_a_waited_claim_survives_a_failover_of_its_master(
    cluster_url: str, admin: Any, mode: str, wait: int
) -> None:
    """Claim under WAIT, fail the owning master over to its replica: the same store (whose
    slot map is now stale: MOVED) and a fresh one still see the claim and refuse the
    duplicate, complete on the new master, and replay the result."""
    url = f"{cluster_url}?prefix={PREFIX}&wait_replicas={wait}"
    s = StoreDriver(store_from_url(url), mode)
    key = _key()
    try:
        claim = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert claim.acquired
        old, new = _failover(admin, PREFIX + key)
        duplicate = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert not duplicate.acquired
        assert duplicate.record.fence == claim.record.fence
        fresh = store_from_url(url)
        try:
            assert not fresh.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
        finally:
            fresh.close()
        assert s.complete(key, claim.record.fence, b"done", ttl=TTL)
        owner = admin.get_node_from_key(PREFIX + key)
        admin.nodes_manager.initialize()
        owner = admin.get_node_from_key(PREFIX + key)
        assert (owner.port, old) == (new, old)
        assert s.claim(key, "fp", lease=LEASE, ttl=TTL).record.result == b"done"
    finally:
        s.close()
        s.store.close()


def test_injected_cluster_clients(cluster_url: str) -> None:
    client = redis.cluster.RedisCluster(host=redis_cluster.HOST, port=redis_cluster.PORTS[0])
    store = RedisStore(client=client, prefix=PREFIX, wait_replicas=1)
    assert store.cluster
    try:
        key = _key()
        fence = store.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert store.complete(key, fence, b"r", ttl=TTL)

        async def main() -> bytes | None:
            async_client = redis.asyncio.cluster.RedisCluster(
                host=redis_cluster.HOST, port=redis_cluster.PORTS[1]
            )
            astore = RedisStore(async_client=async_client, prefix=PREFIX, wait_replicas=1)
            try:
                other = _key()
                claim = await astore.aclaim(other, "fp", lease=LEASE, ttl=TTL)
                assert await astore.acomplete(other, claim.record.fence, b"a", ttl=TTL)
                record = await astore.aget(key)
                return None if record is None else record.result
            finally:
                await async_client.aclose()

        assert asyncio.run(main()) == b"r"
    finally:
        store.close()
        client.close()


# -- maintenance (scan / count / purge) spans every master -----------------------------------
def test_maintenance_scans_and_purges_every_master(cluster_url: str, admin: Any) -> None:
    prefix = f"{PREFIX}maint-{uuid.uuid4().hex[:8]}:"
    store = RedisStore(cluster_url, prefix=prefix)
    try:
        keys = [f"ns#{uuid.uuid4().hex}" for _ in range(24)]
        for i, key in enumerate(keys):
            fence = store.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
            if i % 2:
                assert store.complete(key, fence, b"r", ttl=TTL)
        assert len({admin.get_node_from_key(prefix + key).port for key in keys}) == 3
        assert store.count() == store.count(namespace="ns") == 24
        assert store.stats().by_status == {"IN_PROGRESS": 12, "COMPLETED": 12}
        assert store.purge(expired=True) == 0  # nothing has ended yet
        assert store.purge(expired=False) == 24  # before: cluster pipelines refused EVALSHA
        assert store.count() == 0
    finally:
        store.close()


# -- an SQS batch through process_batch on the cluster -----------------------------------------
@pytest.mark.parametrize("wait", [0, 1])
def test_sqs_batch_runs_each_record_once_on_the_cluster(
    cluster_url: str, admin: Any, mode: str, wait: int
) -> None:
    """Ten SQS messages (their records spread over the masters), one failing: the partial
    batch response names it, and two redeliveries of the whole batch run only it again."""
    prefix = f"{PREFIX}batch-{uuid.uuid4().hex[:8]}:"
    store = RedisStore(cluster_url, prefix=prefix, wait_replicas=wait)
    idem = Idempotency(store)
    runs: Counter[str] = Counter()
    broken = {"ord-7"}

    def charge(record: dict[str, Any]) -> str:
        order = str(json.loads(record["body"])["order_id"])
        runs[order] += 1
        if order in broken:
            raise RuntimeError("payment gateway timeout")
        return order

    async def acharge(record: dict[str, Any]) -> str:
        await asyncio.sleep(0)
        return charge(record)

    def process(event: dict[str, Any]) -> dict[str, Any]:
        if mode == "sync":
            return idem.process_batch(event, charge, context=FakeContext())
        return asyncio.run(idem.aprocess_batch(event, acharge, context=FakeContext()))

    event = load("sqs")
    event["Records"] = [sqs_message(f"ord-{i}", amount=i) for i in range(10)]
    failed_id = event["Records"][7]["messageId"]
    try:
        assert process(event) == {"batchItemFailures": [{"itemIdentifier": failed_id}]}
        assert runs == {f"ord-{i}": 1 for i in range(10)}
        keys = list(admin.scan_iter(match=prefix + "*", count=1000))
        assert len(keys) == 10
        assert len({admin.get_node_from_key(k).port for k in keys}) > 1  # several masters
        broken.clear()
        assert process(redeliver(event)) == {"batchItemFailures": []}
        assert process(redeliver(event, 3)) == {"batchItemFailures": []}
        assert runs == {f"ord-{i}": 2 if i == 7 else 1 for i in range(10)}
    finally:
        store.close()


# -- a slot being migrated: ASK, then MOVED ------------------------------------------------------
def _myid(port: int) -> str:
    node = _node(port)
    try:
        answer = node.cluster("MYID")
    finally:
        node.close()
    return answer.decode() if isinstance(answer, bytes) else str(answer)


@pytest.mark.parametrize("wait", [0, 1])
def test_claims_follow_a_slot_being_migrated(
    cluster_url: str, admin: Any, mode: str, wait: int
) -> None:
    """The key's slot is MIGRATING to another master: a claim of the new key gets ASK and
    is sent (behind ASKING) to the importing master, where the record is created; the
    duplicate finds it there. Once the slot has moved, the stale slot map gets MOVED."""
    s = StoreDriver(RedisStore(cluster_url, prefix=PREFIX, wait_replicas=wait), mode)
    key = _key()
    full = PREFIX + key
    admin.nodes_manager.initialize()
    slot = admin.keyslot(full)
    source = int(admin.get_node_from_key(full).port)
    target = next(int(n.port) for n in admin.get_primaries() if int(n.port) != source)
    source_id, target_id = _myid(source), _myid(target)
    src, dst = _node(source), _node(target)
    migrating = True
    try:
        s.get(_key())  # connected, slot map loaded before the migration starts
        dst.cluster("SETSLOT", slot, "IMPORTING", source_id)
        src.cluster("SETSLOT", slot, "MIGRATING", target_id)
        claim = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert claim.acquired
        pipe = dst.pipeline(transaction=False)  # ASKING applies to the next command only
        pipe.execute_command("ASKING")  # type: ignore[no-untyped-call]
        pipe.hget(full, "status")
        assert pipe.execute()[1] == b"IN_PROGRESS"
        with pytest.raises(redis.exceptions.AskError):  # absent here: "ask the target"
            src.exists(full)
        assert not s.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
        for port in (target, source):  # the migration ends: the slot is the target's
            node = _node(port)
            node.cluster("SETSLOT", slot, "NODE", target_id)
            node.close()
        migrating = False
        deadline = time.monotonic() + 10
        while {_node_owner(admin, full, p) for p in redis_cluster.PORTS} != {target}:
            assert time.monotonic() < deadline, "the slot's new owner did not propagate"
            time.sleep(0.2)
        assert s.complete(key, claim.record.fence, b"moved", ttl=TTL)  # MOVED, then sent on
        assert s.claim(key, "fp", lease=LEASE, ttl=TTL).record.result == b"moved"
    finally:
        if migrating:  # leave the cluster as it was
            for node in (src, dst):
                node.cluster("SETSLOT", slot, "STABLE")
        src.close()
        dst.close()
        s.close()
        s.store.close()


def _node_owner(admin: Any, key: str, port: int) -> int | None:
    """The master port owning ``key``'s slot as node ``port`` sees it."""
    node = _node(port)
    try:
        slot = admin.keyslot(key)
        for start, end, master, *_replicas in node.cluster("SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
        return None
    finally:
        node.close()


def test_a_waited_claim_survives_its_master_being_killed(
    cluster_url: str, admin: Any, mode: str
) -> None:
    """No graceful hand-over this time: the owning master is SIGKILLed right after a claim
    acknowledged under ``wait_replicas=1``; once its replica has taken over (after the
    cluster's node timeout), the claim is there and the duplicate is refused. The killed
    node is restarted and rejoins as a replica."""
    url = f"{cluster_url}?prefix={PREFIX}&wait_replicas=1"
    s = StoreDriver(store_from_url(url), mode)
    key = _key()
    redis_cluster.start()  # an earlier failover has settled
    admin.nodes_manager.initialize()
    old, new = _owner_and_replica(admin, PREFIX + key)
    victim = _node(old)
    pid = int(victim.info("server")["process_id"])
    victim.close()
    try:
        claim = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert claim.acquired
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _roles(new).get(new) != "master" or _node_owner(admin, PREFIX + key, new) != new:
            assert time.monotonic() < deadline, "the replica did not take over"
            time.sleep(0.2)
        for attempt in range(50):  # the first calls may still reach the dead master
            try:
                duplicate = s.claim(key, "fp", lease=LEASE, ttl=TTL)
                break
            except StoreError:
                assert attempt < 49
                time.sleep(0.2)
        assert not duplicate.acquired
        assert duplicate.record.fence == claim.record.fence
        # The new master has no replica left: a write is applied but fails closed.
        with pytest.raises(StoreError, match=r"only 0 of the 1 replica\(s\)"):
            s.complete(key, claim.record.fence, b"survived", ttl=TTL)
        _rejoin(old)
        assert s.claim(key, "fp", lease=LEASE, ttl=TTL).record.result == b"survived"
    finally:
        s.close()
        s.store.close()
        _rejoin(old)


def _rejoin(port: int) -> None:
    """Restart the node of ``port`` if it is down; wait until the cluster is healthy."""
    if _roles_or_none(port) is None:
        redis_cluster.run_node(port)
    deadline = time.monotonic() + 60
    while not redis_cluster.healthy():
        assert time.monotonic() < deadline, "the killed node did not rejoin"
        time.sleep(0.3)


def _roles_or_none(port: int) -> dict[int, str] | None:
    try:
        return _roles(port)
    except redis.exceptions.ConnectionError:
        return None


def test_a_cluster_that_cannot_start_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tests.conftest

    def cannot_start(timeout: float = 60) -> str:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")

    monkeypatch.setattr(redis_cluster, "start", cannot_start)
    monkeypatch.setattr(tests.conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        redis_cluster_url_or_unavailable()
    monkeypatch.setattr(tests.conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="backend unavailable in CI"):
        redis_cluster_url_or_unavailable()
