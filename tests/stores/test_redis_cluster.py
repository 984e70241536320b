"""RedisStore on a real Redis Cluster: 3 masters + 3 replicas on 127.0.0.1:7000-7005,
started by ``tests/redis_cluster.py`` (skipped when it cannot start, failed in CI)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar

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
def session_admin(cluster_url: str) -> Iterator[Any]:
    """A plain cluster client; deletes this session's keys at the end."""
    client = redis.cluster.RedisCluster(
        host=redis_cluster.HOST, port=redis_cluster.PORTS[0], socket_timeout=5
    )
    yield client
    redis_cluster.start()  # a test may have left it failing over
    client.nodes_manager.initialize()
    for key in client.scan_iter(match=PREFIX + "*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def admin(session_admin: Any) -> Any:
    """The session's cluster client with a fresh slot map: which node owns a key is asked
    of the cluster as it is now, not as it was before an earlier test failed a master over
    or moved a slot."""
    session_admin.nodes_manager.initialize()
    return session_admin


@pytest.fixture
def reshapes_cluster(session_admin: Any) -> Iterator[None]:
    """For a test that changes the cluster (fails a master over, kills one, migrates a slot,
    stops a replica): it starts on a healthy cluster and leaves it healthy for the next
    test, whatever happened (``redis_cluster.start`` waits for it to settle, restarts a
    node left down, or rebuilds it), with the session client's slot map refreshed."""
    redis_cluster.start()
    session_admin.nodes_manager.initialize()
    yield
    redis_cluster.start()
    session_admin.nodes_manager.initialize()


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
    """Ports of the master owning ``key``'s slot and of its replica (as the master itself
    reports it in ``CLUSTER NODES``)."""
    master = int(admin.get_node_from_key(key).port)
    view = redis_cluster.view(master)
    assert view is not None, redis_cluster.describe()
    assert view.role == "master", redis_cluster.describe()
    replicas = [p.port for p in view.peers.values() if p.master_id == view.myself.id]
    assert len(replicas) == 1, redis_cluster.describe()
    return master, replicas[0]


@pytest.mark.usefixtures("reshapes_cluster")
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


def _failed_over(seen: dict[int, redis_cluster.View | None], old: int, new: int) -> bool:
    """Whether ``new`` says it is a master and ``old`` its replica, every node agrees, and
    the cluster is healthy again (the old master resynced)."""
    new_view, old_view = seen[new], seen[old]
    if new_view is None or old_view is None or redis_cluster.problems(seen):
        return False
    new_id = new_view.myself.id
    return (
        new_view.role == "master"
        and old_view.replication.get("master_port") == str(new)
        and all(
            v is not None and v.peers[new].role == "master" and v.peers[old].master_id == new_id
            for v in seen.values()
        )
    )


def _failover(admin: Any, key: str, timeout: float = 30) -> tuple[int, int]:
    """``CLUSTER FAILOVER`` on the replica of ``key``'s master, until every node agrees, five
    polls in a row (about half a second), that the replica is the slot's master. Returns
    (old, new) ports.

    Decided from what the nodes report: FAILOVER is sent again only to a node that says it
    is a replica, and only once the last request is over: Redis aborts a manual failover
    after 5 s, and a promotion it undid (a failover right after another one can lose the
    slots back to the old master) shows as the node saying master, then replica again in
    a healthy cluster. A reply that it is a master already is no error."""
    old, new = _owner_and_replica(admin, key)
    deadline, sent, promoted, agreed = time.monotonic() + timeout, -1e9, False, 0
    seen = redis_cluster.views()
    while agreed < 5:
        assert time.monotonic() < deadline, (
            f"{new} did not take over from {old} in {timeout} s:\n{redis_cluster.describe(seen)}"
        )
        role = (new_view := seen[new]) and new_view.role
        promoted = promoted or role == "master"
        over = time.monotonic() - sent > 8 or (promoted and not redis_cluster.problems(seen))
        if role == "slave" and over:
            try:
                (reply,) = redis_cluster.query(new, ("CLUSTER", "FAILOVER"))
            except OSError:
                reply = None  # did not answer in time: looked at again below
            sent, promoted = time.monotonic(), False
            if isinstance(reply, redis_cluster.ReplyError) and "to a replica" not in str(reply):
                raise AssertionError(f"CLUSTER FAILOVER on {new}: {reply}")
        time.sleep(0.1)
        seen = redis_cluster.views()
        agreed = agreed + 1 if _failed_over(seen, old, new) else 0
    return old, new


@pytest.mark.usefixtures("reshapes_cluster")
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


@pytest.mark.usefixtures("reshapes_cluster")
@pytest.mark.parametrize("wait", [0, 1])
def test_claims_follow_a_slot_being_migrated(
    cluster_url: str, admin: Any, mode: str, wait: int
) -> None:
    """The key's slot is MIGRATING to another master: a claim of the new key gets ASK and
    is sent (behind ASKING) to the importing master, where the record is created; the
    duplicate finds it there. Once the slot has moved, the stale slot map gets MOVED."""
    s = StoreDriver(RedisStore(cluster_url, prefix=PREFIX, wait_replicas=wait), mode)
    for _ in range(100):  # a slot its master holds no key in (else SETSLOT NODE refuses)
        key = _key()
        full = PREFIX + key
        slot = admin.keyslot(full)
        source = int(admin.get_node_from_key(full).port)
        if redis_cluster.query(source, ("CLUSTER", "COUNTKEYSINSLOT", str(slot))) == [0]:
            break
    else:
        raise AssertionError("no empty slot found in 100 tries")
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
            assert time.monotonic() < deadline, (
                f"slot {slot}'s new owner {target} did not propagate:\n{redis_cluster.describe()}"
            )
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


@pytest.mark.usefixtures("reshapes_cluster")
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
    old, new = _owner_and_replica(admin, PREFIX + key)
    victim = _node(old)
    pid = int(victim.info("server")["process_id"])
    victim.close()
    try:
        claim = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert claim.acquired
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not _took_over(admin, PREFIX + key, new):
            assert time.monotonic() < deadline, (
                f"{new} did not take over from the killed {old} in 30 s:\n"
                f"{redis_cluster.describe()}"
            )
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
        if not redis_cluster.listening(old):  # the test failed before: reshapes_cluster waits
            redis_cluster.run_node(old)


def _took_over(admin: Any, key: str, new: int) -> bool:
    """Whether node ``new`` says it is a master and owns ``key``'s slot."""
    view = redis_cluster.view(new)
    return view is not None and view.role == "master" and _node_owner(admin, key, new) == new


def _rejoin(port: int, timeout: float = 60) -> None:
    """Restart the node of ``port``; wait until it has rejoined and the cluster is healthy."""
    redis_cluster.run_node(port)
    deadline = time.monotonic() + timeout
    while problems := redis_cluster.problems():
        assert time.monotonic() < deadline, (
            f"the killed node {port} did not rejoin in {timeout} s ({'; '.join(problems)}):\n"
            f"{redis_cluster.describe()}"
        )
        time.sleep(0.2)


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


# -- batches: one pipelined request per master ---------------------------------------------------
# Self-contained: the helpers below are used by these tests only.
def _spread(admin: Any, count: int = 10) -> list[str]:
    """``count`` fresh keys in distinct slots, spread over the 3 masters (at most a third,
    rounded up, on each), the masters interleaved in the list."""
    admin.nodes_manager.initialize()  # an earlier test may have failed over or moved slots
    quota = -(-count // 3)
    buckets: dict[int, list[str]] = {}
    slots: set[int] = set()
    while sum(map(len, buckets.values())) < count:
        key = _key()
        slot = admin.keyslot(PREFIX + key)
        bucket = buckets.setdefault(int(admin.get_node_from_key(PREFIX + key).port), [])
        if slot not in slots and len(bucket) < quota:
            slots.add(slot)
            bucket.append(key)
    assert len(buckets) == 3
    return [k for row in itertools.zip_longest(*buckets.values()) for k in row if k]


@pytest.mark.parametrize("wait", [0, 1])
def test_a_batch_is_one_round_trip_per_master(
    cluster_url: str, admin: Any, mode: str, wait: int, packets: list[tuple[int, bytes]]
) -> None:
    """claim_many, release_many, complete_many over 10 keys in 10 slots of the 3 masters:
    one write to each master (3 round trips, not one per slot: 10), holding one EVALSHA
    per slot that master owns and, with ``wait_replicas``, one WAIT after them; every item
    has its single-operation outcome, in item order."""
    s = StoreDriver(RedisStore(cluster_url, prefix=PREFIX, wait_replicas=wait), mode)
    try:
        for _ in range(2):  # connect to every master, load the batch scripts on each
            warm = _spread(admin)
            claims = s.claim_many([(k, "fp", LEASE, TTL) for k in warm])
            s.release_many([(k, c.record.fence) for k, c in zip(warm, claims, strict=True)])
            s.complete_many(
                [(k, c.record.fence, b"r", TTL) for k, c in zip(warm, claims, strict=True)]
            )
        keys = _spread(admin)
        owner = {k: int(admin.get_node_from_key(PREFIX + k).port) for k in keys}

        def one_write_per_master(name: str, items: list[Any]) -> Any:
            before = len(packets)
            outcome = getattr(s, name)(items)
            sent = packets[before:]
            assert sorted(port for port, _ in sent) == sorted(set(owner.values())), (name, sent)
            for port, payload in sent:
                mine = [k for k in keys if owner[k] == port]
                assert payload.count(b"EVALSHA") == len(mine)
                assert all((PREFIX + k).encode() in payload for k in mine)
                assert payload.count(b"\r\nWAIT\r\n") == wait
            return outcome

        claims = one_write_per_master("claim_many", [(k, "fp", LEASE, TTL) for k in keys])
        assert [(c.record.key, c.acquired) for c in claims] == [(k, True) for k in keys]
        fences = [c.record.fence for c in claims]
        released = one_write_per_master(
            "release_many", [(k, f) for k, f in zip(keys, fences, strict=True)]
        )
        assert released == [True] * 10
        taken = s.claim_many([(k, "fp", LEASE, TTL) for k in keys])  # takeover: fence + 1
        assert [(c.acquired, c.record.fence) for c in taken] == [(True, f + 1) for f in fences]
        completed = one_write_per_master(
            "complete_many",
            [(k, c.record.fence, b"r", TTL) for k, c in zip(keys, taken, strict=True)],
        )
        assert completed == [True] * 10
        replays = one_write_per_master("claim_many", [(k, "fp", LEASE, TTL) for k in keys])
        assert [(c.acquired, c.record.result) for c in replays] == [(False, b"r")] * 10
    finally:
        s.close()
        s.store.close()


class _SlotMove:
    """A slot of master ``source`` moving to master ``target``: :meth:`begin` marks it
    MIGRATING / IMPORTING (a key no longer on ``source`` is answered ASK),
    :meth:`migrate` moves keys (MIGRATE), :meth:`end` moves the rest and gives the slot to
    ``target`` on every master, then waits until every node agrees (a client reloading
    its slot map then learns the move; a stale one gets MOVED). :meth:`abort` undoes an
    unfinished move."""

    def __init__(self, admin: Any, key: str, target: int | None = None) -> None:
        self.admin = admin
        self.slot = int(admin.keyslot(PREFIX + key))
        self.source = int(admin.get_node_from_key(PREFIX + key).port)
        self.masters = sorted(int(n.port) for n in admin.get_primaries())
        self.target = target or next(p for p in self.masters if p != self.source)
        self.begun = self.ended = False

    #: One client per node, kept while a test runs (see :meth:`close`): connecting for
    #: each poll of every node would cost more than the moves themselves.
    nodes: ClassVar[dict[int, redis.Redis]] = {}
    ids: ClassVar[dict[int, str]] = {}

    @classmethod
    def _cluster(cls, port: int, *args: Any) -> Any:
        if port not in cls.nodes:
            cls.nodes[port] = _node(port)
        return cls.nodes[port].execute_command("CLUSTER", *args)  # type: ignore[no-untyped-call]

    @classmethod
    def close(cls) -> None:
        for node in cls.nodes.values():
            node.close()
        cls.nodes.clear()
        cls.ids.clear()

    def _id(self, port: int) -> str:
        if port not in self.ids:
            answer = self._cluster(port, "MYID")
            self.ids[port] = answer.decode() if isinstance(answer, bytes) else str(answer)
        return self.ids[port]

    def begin(self) -> _SlotMove:
        self._cluster(self.target, "SETSLOT", self.slot, "IMPORTING", self._id(self.source))
        self.begun = True
        self._cluster(self.source, "SETSLOT", self.slot, "MIGRATING", self._id(self.target))
        return self

    def migrate(self, only: str | None = None) -> None:
        keys = self._cluster(self.source, "GETKEYSINSLOT", self.slot, 1000)
        if only is not None:
            keys = [k for k in keys if k == (PREFIX + only).encode()]
        if keys:
            self.nodes[self.source].execute_command(  # type: ignore[no-untyped-call]
                "MIGRATE", redis_cluster.HOST, self.target, "", 0, 5000, "KEYS", *keys
            )

    def end(self) -> None:
        _SlotMove.end_all([self])

    @staticmethod
    def end_all(moves: list[_SlotMove]) -> None:
        """End every move of ``moves``, then wait once for every node to agree."""
        for move in moves:
            if not move.begun:
                move.begin()
            move.migrate()
            others = [p for p in move.masters if p not in (move.source, move.target)]
            for port in (move.target, move.source, *others):
                move._cluster(port, "SETSLOT", move.slot, "NODE", move._id(move.target))
            move.ended = True
        deadline = time.monotonic() + 10
        while any(
            move._owner_seen_by(port) != move.target
            for move in moves
            for port in redis_cluster.PORTS
        ):
            assert time.monotonic() < deadline, "the slot's new owner did not propagate"
            time.sleep(0.05)
        moves[0].admin.nodes_manager.initialize()

    def abort(self) -> None:
        if self.begun and not self.ended:
            for port in (self.source, self.target):
                self._cluster(port, "SETSLOT", self.slot, "STABLE")

    def _owner_seen_by(self, port: int) -> int | None:
        for start, end, master, *_replicas in self._cluster(port, "SLOTS"):
            if int(start) <= self.slot <= int(end):
                return int(master[1])
        return None


def _holders(admin: Any, key: str) -> list[int]:
    """The masters storing ``key`` (whatever their slot map says)."""
    slot = admin.keyslot(PREFIX + key)
    return [
        port
        for port in sorted(int(n.port) for n in admin.get_primaries())
        if (PREFIX + key).encode() in _SlotMove._cluster(port, "GETKEYSINSLOT", slot, 1000)
    ]


def _commands(payload: bytes) -> list[list[bytes]]:
    """The commands of one write (RESP arrays of bulk strings)."""
    commands, at = [], 0
    while at < len(payload):
        end = payload.index(b"\r\n", at)
        count, at = int(payload[at + 1 : end]), end + 2
        parts = []
        for _ in range(count):
            end = payload.index(b"\r\n", at)
            size, at = int(payload[at + 1 : end]), end + 2
            parts.append(payload[at : at + size])
            at += size + 2
        commands.append(parts)
    return commands


def _scripts_sent(packets: list[tuple[int, bytes]], since: int, key: str) -> list[Any]:
    """Each script call on ``key`` written since ``packets[since]``, in order: (port,
    whether ASKING came just before it)."""
    sent = []
    for port, payload in packets[since:]:
        commands = _commands(payload)
        for i, command in enumerate(commands):
            if command[0] in (b"EVALSHA", b"EVAL") and (PREFIX + key).encode() in command:
                sent.append((port, i > 0 and commands[i - 1] == [b"ASKING"]))
    return sent


@pytest.mark.usefixtures("reshapes_cluster")
@pytest.mark.parametrize(("mode", "wait"), [("sync", 0), ("async", 1)])
def test_a_batch_on_a_stale_slot_map_gives_each_item_its_own_outcome(
    cluster_url: str, admin: Any, mode: str, wait: int, packets: list[tuple[int, bytes]]
) -> None:
    """Slots move after the store loaded its slot map. A moved slot answers MOVED (the map
    is reloaded and only that script is sent again, to the new master); a slot being
    migrated answers ASK for a key already moved or never there (sent again behind ASKING
    to the importing master). claim_many, complete_many and release_many give every item
    exactly its single-operation outcome (new / held elsewhere / completed; own fence /
    stale fence), every other script is sent once, and each record is stored once, on its
    slot's master, with the fence the batch returned."""
    other = RedisStore(cluster_url, prefix=PREFIX)
    s = StoreDriver(RedisStore(cluster_url, prefix=PREFIX, wait_replicas=wait), mode)
    keys = _spread(admin, 9)
    new, held, done = keys[0:3], keys[3:6], keys[6:9]
    moves: list[_SlotMove] = []

    def move(*moved: str, begin_only: bool = False) -> list[_SlotMove]:
        started = [_SlotMove(admin, key) for key in moved]
        moves.extend(started)
        for m in started:
            m.begin()
        if not begin_only:
            _SlotMove.end_all(started)
        return started

    def redirected(since: int, moved: list[_SlotMove], asked: list[_SlotMove]) -> None:
        """The keys of ``moved`` slots were sent to the old then the new master, those of
        ``asked`` to the source then behind ASKING to the target; every other key once."""
        for key in keys:
            slot = admin.keyslot(PREFIX + key)
            sent = _scripts_sent(packets, since, key)
            if m := next((m for m in moved if m.slot == slot), None):
                assert sent == [(m.source, False), (m.target, False)], key
            elif a := next((a for a in asked if a.slot == slot), None):
                assert sent == [(a.source, False), (a.target, True)], key
            else:
                assert len(sent) == 1, (key, sent)

    try:
        fence = {k: other.claim(k, "fp", lease=LEASE, ttl=TTL).record.fence for k in held}
        for k in done:
            fence[k] = other.claim(k, "fp", lease=LEASE, ttl=TTL).record.fence
            assert other.complete(k, fence[k], b"d", ttl=TTL)
        s.get(_key())  # the store's slot map is loaded now
        moved = move(new[0], held[0], done[0])  # with their records
        asked = move(new[1], begin_only=True)  # migrating, the key absent: ASK
        before = len(packets)
        claims = s.claim_many([(k, "fp", LEASE, TTL) for k in keys])
        redirected(before, moved, asked)
        assert [c.record.key for c in claims] == keys
        got = dict(zip(keys, claims, strict=True))
        assert all(got[k].acquired and got[k].record.status.value == "IN_PROGRESS" for k in new)
        assert [(got[k].acquired, got[k].record.fence) for k in held] == [
            (False, fence[k]) for k in held
        ]
        assert [(got[k].acquired, got[k].record.result) for k in done] == [(False, b"d")] * 3
        fence.update({k: got[k].record.fence for k in new})
        assert _holders(admin, new[1]) == [asked[0].target]  # created on the importing side
        asked[0].end()  # the store's map is stale again: MOVED for new[1]
        [migrating] = move(new[2], begin_only=True)
        migrating.migrate(only=new[2])  # its record already moved: ASK
        before = len(packets)
        completes = s.complete_many(
            [(k, fence[k], b"ok", TTL) for k in new]
            + [(k, fence[k] - 1, b"stale", TTL) for k in held]  # a stale fence
            + [(k, fence[k], b"late", TTL) for k in done]  # already completed
        )
        redirected(before, asked, [migrating])
        assert completes == [True] * 3 + [False] * 6
        moved = [migrating, *move(held[1], begin_only=True)]  # MOVED on release
        _SlotMove.end_all(moved)
        before = len(packets)
        releases = s.release_many(
            [(k, fence[k]) for k in held]
            + [(k, fence[k]) for k in new]
            + [(done[0], fence[done[0]])]
        )
        assert releases == [True] * 3 + [False] * 4
        keys = [*held, *new, done[0]]
        redirected(before, moved, [])
        keys = [*new, *held, *done]
        final = s.claim_many([(k, "fp", LEASE, TTL) for k in keys])
        assert [(c.acquired, c.record.result) for c in final[:3]] == [(False, b"ok")] * 3
        assert [(c.acquired, c.record.fence) for c in final[3:6]] == [
            (True, fence[k] + 1) for k in held
        ]  # released: taken over with the next fence
        assert [(c.acquired, c.record.result) for c in final[6:]] == [(False, b"d")] * 3
        admin.nodes_manager.initialize()
        for key, claim in zip(keys, final, strict=True):
            owner = int(admin.get_node_from_key(PREFIX + key).port)
            assert _holders(admin, key) == [owner], key  # stored once, on its master
            fence_stored = _SlotMove.nodes[owner].hget(PREFIX + key, "fence")
            assert fence_stored == str(claim.record.fence).encode()
    finally:
        for m in moves:
            m.abort()
        _SlotMove.close()
        s.close()
        s.store.close()
        other.close()


def test_a_batch_whose_reply_is_lost_fails_whole_and_resends_nothing(
    cluster_url: str,
    admin: Any,
    mode: str,
    packets: list[tuple[int, bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection to one master breaks after the batch was written to it (its scripts
    ran, the replies are lost): the call raises StoreError, no script is sent again
    (running a claim twice would answer its own caller "in progress"), and the connection
    holding the unread replies is not reused. A retry sees each item's own claim."""
    s = StoreDriver(RedisStore(cluster_url, prefix=PREFIX), mode)
    try:
        s.claim_many([(k, "fp", LEASE, TTL) for k in _spread(admin)])  # scripts loaded
        keys = _spread(admin)
        owner = {k: int(admin.get_node_from_key(PREFIX + k).port) for k in keys}
        victim = owner[keys[0]]
        armed = [True]
        sync_read: Any = redis.connection.AbstractConnection.read_response
        async_read: Any = redis.asyncio.connection.AbstractConnection.read_response

        def read(self: Any, *args: Any, **kwargs: Any) -> Any:
            if armed and int(self.port) == victim:
                armed.clear()
                raise redis.exceptions.ConnectionError("the test broke the connection")
            return sync_read(self, *args, **kwargs)

        async def aread(self: Any, *args: Any, **kwargs: Any) -> Any:
            if armed and int(self.port) == victim:
                armed.clear()
                raise redis.exceptions.ConnectionError("the test broke the connection")
            return await async_read(self, *args, **kwargs)

        monkeypatch.setattr(redis.connection.AbstractConnection, "read_response", read)
        monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "read_response", aread)
        before = len(packets)
        with pytest.raises(StoreError, match="the test broke the connection"):
            s.claim_many([(k, "fp", LEASE, TTL) for k in keys])
        assert not armed
        assert all(_scripts_sent(packets, before, k) == [(owner[k], False)] for k in keys)
        retry = s.claim_many([(k, "fp", LEASE, TTL) for k in keys])
        assert [(c.record.key, c.acquired) for c in retry] == [(k, False) for k in keys]
        for key, claim in zip(keys, retry, strict=True):  # the first call's own claims
            assert claim.record.status.value == "IN_PROGRESS"
            node = _node(owner[key])
            assert node.hget(PREFIX + key, "fence") == str(claim.record.fence).encode()
            node.close()
    finally:
        s.close()
        s.store.close()


@pytest.mark.usefixtures("reshapes_cluster")
def test_a_batch_retries_a_slot_split_by_a_migration_then_gives_up(
    cluster_url: str, admin: Any, mode: str, packets: list[tuple[int, bytes]]
) -> None:
    """Two keys of one slot (a hash tag) whose slot is being migrated, one of them already
    moved: their one script gets TRYAGAIN (it did not run) and is sent again after a pause,
    a few times, then the call fails with StoreError; the other master's item was applied
    once, in the first round. Once the migration ends, the batch gets every outcome."""
    other = RedisStore(cluster_url, prefix=PREFIX)
    s = StoreDriver(RedisStore(cluster_url, prefix=PREFIX), mode)
    tag = uuid.uuid4().hex
    pair = [f"{{{tag}}}a", f"{{{tag}}}b"]
    admin.nodes_manager.initialize()
    split = _SlotMove(admin, pair[0])
    lone = next(
        k for k in iter(_key, None) if int(admin.get_node_from_key(PREFIX + k).port) != split.source
    )
    try:
        for key in pair:
            claim = other.claim(key, "fp", lease=LEASE, ttl=TTL)
            assert other.complete(key, claim.record.fence, b"d", ttl=TTL)
        s.get(_key())  # the store's slot map is loaded now
        split.begin()
        split.migrate(only=pair[1])
        items = [(k, "fp", LEASE, TTL) for k in [*pair, lone]]
        before = len(packets)
        with pytest.raises(StoreError, match="kept redirecting"):
            s.claim_many(items)
        assert len(_scripts_sent(packets, before, pair[0])) > 1  # sent again: it never ran
        assert len(_scripts_sent(packets, before, lone)) == 1
        split.end()
        claims = s.claim_many(items)
        assert [(c.acquired, c.record.result) for c in claims[:2]] == [(False, b"d")] * 2
        assert not claims[2].acquired  # the first call's claim, seen by the retry
        assert claims[2].record.status.value == "IN_PROGRESS"
    finally:
        split.abort()
        _SlotMove.close()
        s.close()
        s.store.close()
        other.close()


@pytest.mark.parametrize("where", ["redis", "cluster"])
def test_a_batch_whose_writes_are_not_replicated_fails_and_its_replay_is_answered(
    cluster_url: str, admin: Any, mode: str, where: str
) -> None:
    """More replicas asked for than acknowledge (the single Redis has none, each cluster
    master one): a batch that writes raises StoreError (applied on the primaries, not
    replicated), and the same batch again, which writes nothing, is answered (as a single
    claim that writes nothing is not held to WAIT)."""
    if where == "redis":
        redis_client_or_unavailable(REDIS_URL).close()
        url, replicas, keys = REDIS_URL, 1, [_key() for _ in range(5)]
    else:
        url, replicas, keys = cluster_url, 2, _spread(admin, 6)
    loader = RedisStore(url, prefix=PREFIX)  # the scripts loaded: no NOSCRIPT round below
    loader.claim_many([(k, "fp", LEASE, TTL) for k in _spread(admin, 6)])
    loader.close()
    store = RedisStore(url, prefix=PREFIX, wait_replicas=replicas, wait_timeout=0.1)
    s = StoreDriver(store, mode)
    try:
        items = [(k, "fp", LEASE, TTL) for k in keys]
        with pytest.raises(StoreError, match=rf"of the {replicas} replica\(s\)"):
            s.claim_many(items)
        refused = s.claim_many(items)  # wrote nothing: answered
        assert [(c.record.key, c.acquired) for c in refused] == [(k, False) for k in keys]
        assert all(c.record.status.value == "IN_PROGRESS" for c in refused)
    finally:
        s.close()
        store.close()
