"""RedisStore against a real Redis (127.0.0.1:6379, db 15, a prefix of its own per session)."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.connection
import redis.connection

from idempotence import StoreError
from idempotence._record import Status
from idempotence.stores import store_from_url
from idempotence.stores._redis import SCRIPTS, RedisStore
from idempotence.testing import LEASE, TTL, ManualClock, StoreContract, StoreDriver
from tests.conftest import REDIS_URL, redis_client_or_unavailable

PREFIX = f"idempotence-test:{uuid.uuid4().hex}:"


@pytest.fixture(scope="session")
def admin() -> Iterator[Any]:
    """A plain client on the test database; deletes this session's keys at the end."""
    client = redis_client_or_unavailable(REDIS_URL)
    yield client
    for key in client.scan_iter(match=PREFIX + "*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def url(admin: Any) -> str:
    return REDIS_URL


class TestRedisStore(StoreContract):
    @pytest.fixture
    def store(self, clock: ManualClock, url: str) -> Iterator[RedisStore]:
        store = RedisStore(url, prefix=PREFIX, clock=clock)
        yield store
        store.close()

    @pytest.fixture
    def store_url(self, url: str) -> str:
        return f"{url}?prefix={PREFIX}"


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def driven(url: str, mode: str) -> Iterator[StoreDriver]:
    """A store with a manual clock, driven through its sync or its async methods."""
    driver = StoreDriver(RedisStore(url, prefix=PREFIX, clock=ManualClock()), mode)
    yield driver
    driver.close()
    driver.store.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every command sent to Redis by any (sync or async) connection, in order."""
    log: list[tuple[Any, ...]] = []
    sync_send: Any = redis.connection.AbstractConnection.send_command
    async_send: Any = redis.asyncio.connection.AbstractConnection.send_command

    def send(self: Any, *args: Any, **kwargs: Any) -> Any:
        log.append(args)
        return sync_send(self, *args, **kwargs)

    async def asend(self: Any, *args: Any, **kwargs: Any) -> Any:
        log.append(args)
        return await async_send(self, *args, **kwargs)

    # The async store pipelines concurrent calls (one write per loop iteration).
    async_pack: Any = redis.asyncio.connection.AbstractConnection.pack_commands

    def apack(self: Any, commands: Any) -> Any:
        commands = [tuple(c) for c in commands]
        log.extend(commands)
        return async_pack(self, commands)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_command", send)
    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_command", asend)
    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "pack_commands", apack)
    from idempotence.stores import _redis

    pack: Any = _redis._pack

    def logged_pack(command: tuple[Any, ...]) -> bytes:
        log.append(command)
        return pack(command)  # type: ignore[no-any-return]

    monkeypatch.setattr(_redis, "_pack", logged_pack)
    return log


def _key() -> str:
    return f"k#{uuid.uuid4().hex}"


# -- round trips and one key per script ----------------------------------------------------
def test_every_operation_is_one_round_trip_on_one_key(
    driven: StoreDriver, sent: list[tuple[Any, ...]]
) -> None:
    s = driven
    warm = _key()  # connect, and load every script, before counting
    fence = s.claim(warm, "fp", lease=LEASE, ttl=TTL).record.fence
    s.renew(warm, fence, lease=LEASE)
    s.get(warm)
    s.release(warm, fence)
    fence = s.claim(warm, "fp", lease=LEASE, ttl=TTL).record.fence
    s.complete(warm, fence, b"r", ttl=TTL)
    s.delete(warm)

    def one(name: str, *args: Any, **kwargs: Any) -> Any:
        before = len(sent)
        outcome = getattr(s, name)(*args, **kwargs)
        commands = sent[before:]
        assert len(commands) == 1, (name, commands)
        command, _sha, numkeys, redis_key = commands[0][:4]
        assert (command, numkeys) == ("EVALSHA", 1)  # one key per script: Cluster-safe
        assert redis_key == PREFIX + args[0]
        return outcome

    key, other = _key(), _key()
    claim = one("claim", key, "fp", lease=LEASE, ttl=TTL)
    assert claim.acquired
    fence = claim.record.fence
    assert one("renew", key, fence, lease=LEASE)
    assert one("complete", key, fence, b"result", ttl=TTL)
    replay = one("claim", key, "fp", lease=LEASE, ttl=TTL)
    assert (replay.acquired, replay.record.result) == (False, b"result")
    assert one("get", key).result == b"result"
    other_fence = one("claim", other, "fp", lease=LEASE, ttl=TTL).record.fence
    assert one("release", other, other_fence)
    assert one("delete", key)


def test_scripts_name_only_their_one_key() -> None:
    for name, script in SCRIPTS.items():
        assert set(re.findall(r"KEYS\[(\d+)\]", script.source)) == {"1"}, name


def test_flushed_script_cache_costs_one_extra_round_trip(
    driven: StoreDriver, admin: Any, sent: list[tuple[Any, ...]]
) -> None:
    driven.get(_key())  # connected
    admin.script_flush()
    before = len(sent)
    assert driven.claim(_key(), "fp", lease=LEASE, ttl=TTL).acquired
    assert [c[0] for c in sent[before:]] == ["EVALSHA", "EVAL"]
    before = len(sent)
    assert driven.claim(_key(), "fp", lease=LEASE, ttl=TTL).acquired
    assert [c[0] for c in sent[before:]] == ["EVALSHA"]


# -- time, precision, expiry ------------------------------------------------------------------
def test_server_clock_decides_by_default(url: str, admin: Any) -> None:
    assert RedisStore.uses_client_clock is False
    store = RedisStore(url, prefix=PREFIX)
    try:
        seconds, micros = admin.time()
        outcome = store.claim(_key(), "fp", lease=LEASE, ttl=TTL)
        assert outcome.now == pytest.approx(seconds + micros / 1e6, abs=5)
        assert outcome.record.lease_expires_at == outcome.now + LEASE
        assert outcome.record.fence == int(outcome.now * 1000)  # a new key: server ms
    finally:
        store.close()


def test_expired_hash_never_revives_a_stale_fence(url: str, admin: Any) -> None:
    """Redis deletes the hash when its TTL ends (here: at once) while a zombie still holds
    its fence; the next record's fence comes from the clock, above every earlier one."""
    clock = ManualClock()
    store = RedisStore(url, prefix=PREFIX, clock=clock)
    try:
        key = _key()
        zombie = store.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence  # then pauses
        admin.delete(PREFIX + key)  # the key's TTL ran out during the pause
        clock.advance(0.002)
        newcomer = store.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert newcomer.acquired
        assert newcomer.record.fence > zombie
        assert not store.complete(key, zombie, b"zombie", ttl=TTL)
        assert store.complete(key, newcomer.record.fence, b"newcomer", ttl=TTL)
    finally:
        store.close()


def test_times_round_trip_exactly(url: str, mode: str) -> None:
    clock = ManualClock(1_700_000_000.123456789)
    s = StoreDriver(RedisStore(url, prefix=PREFIX, clock=clock), mode)
    try:
        key = _key()
        claim = s.claim(key, "fp", lease=0.1, ttl=1 / 3)
        assert claim.now == clock()
        assert claim.record.lease_expires_at == clock() + 0.1
        assert claim.record.expires_at == clock() + 1 / 3
        assert s.get(key) == claim.record
        clock.advance(0.01)
        assert s.renew(key, claim.record.fence, lease=0.7)
        record = s.get(key)
        assert record is not None
        assert record.lease_expires_at == record.expires_at == clock() + 0.7
    finally:
        s.close()
        s.store.close()


def test_unicode_keys_and_fingerprints(driven: StoreDriver) -> None:
    key = "ключ/🔑 " + _key()
    claim = driven.claim(key, "empreinte-é", lease=LEASE, ttl=TTL)
    assert claim.acquired
    assert driven.claim(key, "x", lease=LEASE, ttl=TTL).record == claim.record


def test_key_ttl_follows_retention_and_release_keeps_the_fence(
    driven: StoreDriver, admin: Any
) -> None:
    # The store's clock is a ManualClock (2023) while Redis runs on real time: TTLs are
    # relative, so records are not deleted on write.
    s, key = driven, _key()
    fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
    assert TTL * 1000 - 5000 < admin.pttl(PREFIX + key) <= TTL * 1000
    assert s.complete(key, fence, b"r", ttl=60)
    assert 55_000 < admin.pttl(PREFIX + key) <= 60_000

    released = _key()
    fence = s.claim(released, "fp", lease=LEASE, ttl=TTL).record.fence
    assert s.release(released, fence)
    assert s.get(released) is None
    assert admin.hget(PREFIX + released, "fence") == str(fence).encode()
    assert admin.pttl(PREFIX + released) > (TTL - 5) * 1000  # kept until its retention
    assert s.claim(released, "fp", lease=LEASE, ttl=TTL).record.fence == fence + 1

    renewed = _key()
    fence = s.claim(renewed, "fp", lease=10, ttl=20).record.fence
    assert s.renew(renewed, fence, lease=100)
    assert admin.pttl(PREFIX + renewed) > 95_000

    zero = _key()
    fence = s.claim(zero, "fp", lease=LEASE, ttl=TTL).record.fence
    assert s.complete(zero, fence, b"r", ttl=0)
    assert s.get(zero) is None
    assert 0 < admin.pttl(PREFIX + zero) <= 1000  # the floor: the fence outlives the write


def test_result_size_limit_is_documented() -> None:
    assert RedisStore.max_result_bytes == 64 * 1024 * 1024


# -- failures and recovery --------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fails_fast(
    store: RedisStore, mode: str, limit: float, match: str = r"RedisStore\.a?claim failed"
) -> None:
    s = StoreDriver(store, mode)
    started = time.monotonic()
    try:
        with pytest.raises(StoreError, match=match):
            s.claim(_key(), "fp", lease=LEASE, ttl=TTL)
    finally:
        s.close()
        store.close()
    assert time.monotonic() - started < limit


def test_server_down_raises_store_error_fast(mode: str) -> None:
    store = RedisStore(f"redis://127.0.0.1:{_closed_port()}/0")
    _fails_fast(store, mode, limit=2.0, match="cannot connect to Redis: connection refused")


def test_unresponsive_server_times_out(mode: str) -> None:
    with socket.socket() as server:  # accepts connections (backlog), never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
        _fails_fast(store, mode, limit=3.0)


def _kill_connections(admin: Any, name: str) -> int:
    ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
    for client_id in ids:
        admin.client_kill_filter(_id=client_id)
    return len(ids)


def _idle(s: StoreDriver, seconds: float) -> None:
    """Time passes between calls (with the event loop running, for an async store)."""
    if s.loop is None:
        time.sleep(seconds)
    else:
        s.loop.run_until_complete(asyncio.sleep(seconds))


@pytest.fixture
def named(url: str, mode: str) -> Iterator[tuple[StoreDriver, str]]:
    """A driven store whose connections carry a client name of their own, and that name."""
    name = f"idem-test-{uuid.uuid4().hex[:12]}"
    s = StoreDriver(RedisStore(url, prefix=PREFIX, client_name=name), mode)
    yield s, name
    s.close()
    s.store.close()


def test_recovers_after_its_connections_are_killed(
    named: tuple[StoreDriver, str], admin: Any
) -> None:
    s, name = named
    key = _key()
    assert s.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
    assert _kill_connections(admin, name) >= 1
    _idle(s, 0.1)
    # The pool notices the closed connection before sending and reconnects.
    assert not s.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
    record = s.get(key)
    assert record is not None
    assert record.status is Status.IN_PROGRESS


def test_a_dead_connection_fails_one_call_at_most(
    named: tuple[StoreDriver, str], admin: Any, mode: str
) -> None:
    # A connection the server closed while idle is found dead when taken from the pool
    # (before anything is sent: reconnecting is safe), sync and async alike (the async
    # calls are pipelined on a connection checked out of the pool).
    s, name = named
    key = _key()
    assert s.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
    assert _kill_connections(admin, name) >= 1
    assert s.get(key) is not None
    record = s.get(key)
    assert record is not None
    assert record.status is Status.IN_PROGRESS


# -- clients ---------------------------------------------------------------------------------
def test_injected_sync_client_serves_sync_and_async_and_stays_open(url: str) -> None:
    client = redis.Redis.from_url(url)
    store = RedisStore(client=client, prefix=PREFIX)
    try:
        key = _key()
        fence = store.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert asyncio.run(store.acomplete(key, fence, b"r", ttl=TTL))
        asyncio.run(store.aclose())
        store.close()
        assert client.ping()
        assert store.claim(key, "fp", lease=LEASE, ttl=TTL).record.result == b"r"
    finally:
        client.close()


def test_injected_async_client(url: str) -> None:
    key = _key()

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(url)
        store = RedisStore(async_client=client, prefix=PREFIX)
        fence = (await store.aclaim(key, "fp", lease=LEASE, ttl=TTL)).record.fence
        assert await store.acomplete(key, fence, b"r", ttl=TTL)
        await store.aclose()
        assert await client.ping()  # not closed by the store
        record = await store.aget(key)
        assert record is not None
        assert record.result == b"r"
        with pytest.raises(StoreError, match="async_client"):
            store.get(key)
        await client.aclose()

    asyncio.run(main())


def test_decoding_clients_are_refused(url: str) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisStore(client=client)
    client.close()
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisStore(url, decode_responses=True)


def test_one_store_across_asyncio_run_calls(
    url: str, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # AWS Lambda style: asyncio.run per invocation, the store lives across them, no aclose.
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    name = f"idem-test-{uuid.uuid4().hex[:12]}"
    store = RedisStore(url, prefix=PREFIX, client_name=name)
    key = _key()

    async def invocation() -> bool:
        return (await store.aclaim(key, "fp", lease=LEASE, ttl=TTL)).acquired

    assert asyncio.run(invocation())
    # The loop's client was closed when asyncio.run shut its loop down.
    assert not [c for c in admin.client_list() if c.get("name") == name]
    assert not asyncio.run(invocation())
    assert len(store._loop_clients) == 1  # the first loop's entry was dropped
    gc.collect()
    assert unraisable == []  # no "unclosed connection/transport" warnings
    store.close()


# -- URLs and packaging ----------------------------------------------------------------------
def test_url_forms(url: str) -> None:
    store = store_from_url(f"{url}?prefix=custom:&socket_timeout=2")
    assert isinstance(store, RedisStore)
    assert (store.prefix, store.url) == ("custom:", f"{url}?socket_timeout=2")
    try:
        key = _key()
        assert store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
        assert store.delete(key)
    finally:
        store.close()
    tls = store_from_url("rediss://user:secret@redis.invalid:6380/2")
    assert isinstance(tls, RedisStore)
    assert (tls.prefix, tls.url) == ("idempotence:", "rediss://user:secret@redis.invalid:6380/2")


def test_module_imports_without_redis() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from idempotence import MissingDependencyError\n"
        "from idempotence.stores._redis import RedisStore\n"
        "try:\n    RedisStore()\nexcept MissingDependencyError as e:\n    print(e)\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": src},
    )
    assert "idempotence[redis]" in out.stdout


@pytest.mark.parametrize("ttl", [99 * 365 * 86400.0, 1e16, 1e300])
def test_huge_ttl_does_not_expire_the_key_at_once(url: str, admin: Any, ttl: float) -> None:
    """A ttl/lease so large that PEXPIRE's milliseconds would overflow is capped at
    ``MAX_KEY_TTL_MS`` (before: Redis deleted the key at once and the record was lost)."""
    from idempotence.stores._redis import MAX_KEY_TTL_MS

    store = RedisStore(url, prefix=PREFIX)
    key = _key()
    try:
        claim = store.claim(key, "fp", lease=ttl, ttl=ttl)
        assert claim.acquired
        assert 0 < admin.pttl(PREFIX + key) <= MAX_KEY_TTL_MS
        assert store.renew(key, claim.record.fence, lease=ttl)
        assert store.complete(key, claim.record.fence, b"r", ttl=ttl)
        record = store.get(key)
        assert record is not None
        assert record.result == b"r"
        assert 0 < admin.pttl(PREFIX + key) <= MAX_KEY_TTL_MS
        assert not store.claim(key, "fp", lease=10, ttl=10).acquired  # still answers
    finally:
        store.delete(key)
        store.close()


# -- async: concurrent calls on one loop are pipelined ----------------------------------------
def test_concurrent_async_calls_share_pipelined_writes_of_up_to_32(url: str) -> None:
    """70 concurrent async claims on one loop go out as three pipelines (32, 32 and 6
    commands: a full batch is written at once, so the server runs it while the client
    prepares the next), each on one pooled connection (one write), each command still its
    own EVALSHA with its own reply; before auto-pipelining, each took a connection of its
    own (70 connections, 70 writes)."""
    from idempotence.stores import _redis

    client = redis.asyncio.Redis.from_url(url, protocol=2)
    pool = client.connection_pool
    taken: list[int] = []
    get_connection: Any = pool.get_connection

    async def counted(*args: Any, **kwargs: Any) -> Any:
        taken.append(1)
        return await get_connection(*args, **kwargs)

    pool.get_connection = counted  # type: ignore[method-assign]
    store = RedisStore(async_client=client, prefix=PREFIX)
    keys = [_key() for _ in range(70)]
    written: list[int] = []
    pipeline: Any = _redis._Coalescer._pipeline

    async def recorded(self: Any, commands: list[Any]) -> Any:
        written.append(len(commands))
        return await pipeline(self, commands)

    async def main() -> list[Any]:
        await store.aget(_key())  # connected
        taken.clear()
        written.clear()
        claims = await asyncio.gather(*(store.aclaim(k, "fp", lease=LEASE, ttl=TTL) for k in keys))
        await client.aclose()
        return claims

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_redis._Coalescer, "_pipeline", recorded)
        claims = asyncio.run(main())
    assert [c.acquired for c in claims] == [True] * 70
    assert [c.record.key for c in claims] == keys  # each caller gets its own reply
    assert written == [32, 32, 6]
    assert len(taken) == 3


def test_an_error_reply_fails_only_its_own_call_in_a_pipelined_batch(url: str) -> None:
    store = RedisStore(url, prefix=PREFIX)
    failing = "return redis.error_reply('deliberate failure')"

    async def main() -> list[Any]:
        outcomes = await asyncio.gather(
            store.aclaim(_key(), "fp", lease=LEASE, ttl=TTL),
            store.arun_script(failing, PREFIX + _key(), []),
            store.aclaim(_key(), "fp", lease=LEASE, ttl=TTL),
            return_exceptions=True,
        )
        await store.aclose()
        return outcomes

    first, failed, last = asyncio.run(main())
    assert isinstance(failed, redis.exceptions.ResponseError)
    assert "deliberate failure" in str(failed)
    assert first.acquired
    assert last.acquired


def test_a_flushed_script_cache_in_a_pipelined_batch_reloads_once_per_call(
    url: str, admin: Any
) -> None:
    store = RedisStore(url, prefix=PREFIX)

    async def main() -> list[Any]:
        await store.aget(_key())
        admin.script_flush()
        claims = await asyncio.gather(
            *(store.aclaim(_key(), "fp", lease=LEASE, ttl=TTL) for _ in range(8))
        )
        await store.aclose()
        return claims

    assert all(c.acquired for c in asyncio.run(main()))


def test_a_lost_connection_fails_every_call_of_its_batch_and_the_next_reconnects(
    url: str, admin: Any
) -> None:
    store = RedisStore(url, prefix=PREFIX, client_name="idempotence-batch-test")

    async def main() -> tuple[list[Any], Any]:
        await store.aget(_key())
        for info in admin.client_list():
            if info.get("name") == "idempotence-batch-test":
                admin.client_kill_filter(_id=info["id"])
        outcomes = await asyncio.gather(
            *(store.aget(_key()) for _ in range(4)), return_exceptions=True
        )
        after = await store.aget(_key())
        await store.aclose()
        return outcomes, after

    outcomes, after = asyncio.run(main())
    # redis-py reconnects a pooled connection the server closed (or fails the batch):
    # either way no caller hangs and each gets an answer or an exception of its own.
    assert all(o is None or isinstance(o, Exception) for o in outcomes)
    assert after is None


def test_a_reply_lost_in_flight_fails_its_batch_and_nothing_is_resent(
    url: str, sent: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script may have run when its reply is lost: the calls of that pipelined batch
    fail (fail closed) and no command is sent again (redis-py's own Pipeline would resend
    the batch under its connection's retry policy)."""
    store = RedisStore(url, prefix=PREFIX)
    read: Any = redis.asyncio.connection.AbstractConnection.read_response
    lost = [True]

    async def read_once_lost(self: Any, *args: Any, **kwargs: Any) -> Any:
        if lost[0]:
            lost[0] = False
            raise redis.exceptions.ConnectionError("reply lost (test)")
        return await read(self, *args, **kwargs)

    keys = [_key(), _key()]

    async def main() -> list[Any]:
        await store.aget(_key())  # connected
        sent.clear()
        monkeypatch.setattr(
            redis.asyncio.connection.AbstractConnection, "read_response", read_once_lost
        )
        outcomes = await asyncio.gather(
            *(store.aclaim(k, "fp", lease=LEASE, ttl=TTL) for k in keys),
            return_exceptions=True,
        )
        await store.aclose()
        return outcomes

    outcomes = asyncio.run(main())
    assert all(isinstance(o, StoreError) for o in outcomes), outcomes
    claims = [c for c in sent if c[0] == "EVALSHA"]
    assert sorted(c[3] for c in claims) == sorted(PREFIX + k for k in keys)  # once each


def _slow_replies(monkeypatch: pytest.MonkeyPatch, delays: list[float]) -> None:
    """Each async read of a reply first waits the next of ``delays`` (then none)."""
    read: Any = redis.asyncio.connection.AbstractConnection.read_response

    async def slow_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        if delays:
            await asyncio.sleep(delays.pop(0))
        return await read(self, *args, **kwargs)

    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "read_response", slow_read)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="one timer per batch from Python 3.11")
def test_a_reply_later_than_socket_timeout_fails_its_batch_and_the_next_reconnects(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's timer (see ``_replies``) bounds each read: a reply that does not come
    fails the calls of its batch (the script may have run: fail closed) within 1.5 times
    ``socket_timeout``, and the connection, which may still receive it, is dropped."""
    store = RedisStore(url, prefix=PREFIX, socket_timeout=0.2)

    async def main() -> tuple[list[Any], float, Any]:
        await store.aget(_key())  # connected: no timer in the way of connecting
        _slow_replies(monkeypatch, [30.0])
        start = time.perf_counter()
        outcomes = await asyncio.gather(
            *(store.aclaim(_key(), "fp", lease=LEASE, ttl=TTL) for _ in range(2)),
            return_exceptions=True,
        )
        elapsed = time.perf_counter() - start
        after = await store.aclaim(_key(), "fp", lease=LEASE, ttl=TTL)
        await store.aclose()
        return outcomes, elapsed, after

    outcomes, elapsed, after = asyncio.run(main())
    assert all(isinstance(o, StoreError) for o in outcomes), outcomes
    assert all("Timeout" in str(o.__cause__) for o in outcomes)
    assert 0.2 <= elapsed < 1.5
    assert after.acquired


@pytest.mark.skipif(sys.version_info < (3, 11), reason="one timer per batch from Python 3.11")
def test_each_reply_of_a_batch_gets_the_whole_socket_timeout(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One timer per batch, but moved forward as its replies come: four replies that each
    take half of ``socket_timeout`` (two timeouts in all) are all read."""
    store = RedisStore(url, prefix=PREFIX, socket_timeout=0.2)

    async def main() -> list[Any]:
        await store.aget(_key())
        _slow_replies(monkeypatch, [0.1] * 4)
        claims = await asyncio.gather(
            *(store.aclaim(_key(), "fp", lease=LEASE, ttl=TTL) for _ in range(4))
        )
        await store.aclose()
        return claims

    assert all(claim.acquired for claim in asyncio.run(main()))


def test_aclose_then_a_call_on_the_same_loop_uses_a_new_client(url: str, admin: Any) -> None:
    """After ``aclose`` the next call on the loop builds (and pipelines on) a new client,
    which the next ``aclose`` closes: no call goes to the closed one."""
    name = f"idem-test-{uuid.uuid4().hex[:12]}"
    store = RedisStore(url, prefix=PREFIX, client_name=name)

    def connections() -> int:
        return len([c for c in admin.client_list() if c.get("name") == name])

    async def main() -> list[int]:
        counts = []
        for _ in range(2):
            claims = await asyncio.gather(
                *(store.aclaim(_key(), "fp", lease=LEASE, ttl=TTL) for _ in range(3))
            )
            assert all(claim.acquired for claim in claims)
            counts.append(connections())
            await store.aclose()
            counts.append(connections())
        return counts

    assert asyncio.run(main()) == [1, 0, 1, 0]


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "ab" * 20, 1, PREFIX + "k#é ü 中", "", "0.5", "3600.0"),
        ("EVALSHA", "cd" * 20, 1, "k", "12", b"\x00\xff\r\n result \r\n", "1e+300"),
        ("EVALSHA", "ef" * 20, 2, "a", "b"),
    ],
)
def test_the_async_packer_writes_the_bytes_redis_py_writes(command: tuple[Any, ...]) -> None:
    from idempotence.stores._redis import _pack

    connection = redis.asyncio.connection.Connection()
    assert _pack(command) == b"".join(connection.pack_command(*command))
