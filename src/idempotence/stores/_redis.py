"""Redis store: one hash per record, every operation one atomic Lua script.

Needs ``redis`` (``pip install 'idempotence[redis]'``), imported when a store is built, so
importing this module never fails. Redis 5.0 or later (scripts that read ``TIME`` and then
write rely on effects replication, the default since 5.0).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._errors import StoreError
from .._lazy import require
from .._record import Claim, Record, Status
from ._base import Clock, Store, forget_closed_loops
from ._registry import merge_option, url_query

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

__all__ = ["RedisStore"]

_T = TypeVar("_T")

#: Floor of the Redis TTL (ms) set on a record key, so a zero or past retention never lets
#: Redis drop the key (and its fence) before the script that set it has returned.
MIN_KEY_TTL_MS = 1000
#: Ceiling of the Redis TTL (ms) set on a record key (about 31,700 years): a huge ``ttl`` or
#: ``lease`` (even ``inf``) would otherwise overflow PEXPIRE's 64-bit arithmetic, and Redis
#: would delete the key at once.
MAX_KEY_TTL_MS = 10**15
#: redis-py's URL query options (``redis.connection.parse_url``), accepted and passed on;
#: a name not listed is also accepted when the installed redis-py parses it.
_REDIS_URL_OPTIONS = frozenset(
    [
        "db",
        "username",
        "password",
        "client_name",
        "health_check_interval",
        "max_connections",
        "readonly",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_timeout",
        "retry_on_timeout",
        "timeout",
        "protocol",
        "encoding",
        "encoding_errors",
        "lib_name",
        "lib_version",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    ]
)

# -- scripts -----------------------------------------------------------------------------
# Every script touches exactly one key, KEYS[1] (the record's hash), so it is valid on Redis
# Cluster. ARGV[1] is the client clock ("" = the server's TIME decides). Times are seconds
# since the epoch, stored with %.17g so every float round-trips exactly.
_PRELUDE = """
local key = KEYS[1]
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local function num(x) return string.format('%.17g', x) end
local function key_ttl(expires_at)
  local ms = math.ceil((expires_at - now) * 1000)
  if ms < MIN_KEY_TTL_MS then ms = MIN_KEY_TTL_MS end
  if not (ms <= MAX_KEY_TTL_MS) then ms = MAX_KEY_TTL_MS end
  return string.format('%d', ms)
end
-- The record's status/fence/retention when `fence` owns it (in progress, not expired).
local function owned(fence)
  local f = redis.call('HMGET', key, 'status', 'fence', 'expires_at')
  if f[1] == 'IN_PROGRESS' and tonumber(f[2]) == tonumber(fence)
      and now < tonumber(f[3]) then
    return f
  end
  return nil
end
""".replace("MIN_KEY_TTL_MS", str(MIN_KEY_TTL_MS)).replace("MAX_KEY_TTL_MS", str(MAX_KEY_TTL_MS))

# ARGV: now, fingerprint, lease, ttl -> {acquired, now, flat record}. decide_claim in Lua.
# A record created from nothing takes fresh_fence(now): the clock in ms (exact in a double),
# so a key whose hash Redis expired never hands out a fence a paused zombie still holds.
_CLAIM = """
local flat = redis.call('HGETALL', key)
local fence = math.max(1, math.floor(now * 1000))
if #flat > 0 then
  local rec = {}
  for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
  if now < tonumber(rec['expires_at']) then
    local lapsed = rec['status'] == 'IN_PROGRESS' and now >= tonumber(rec['lease_expires_at'])
    if not (lapsed and rec['fingerprint'] == ARGV[2]) then
      return {0, num(now), flat}
    end
  end
  fence = tonumber(rec['fence']) + 1
end
local lease = tonumber(ARGV[3])
local expires_at = now + math.max(tonumber(ARGV[4]), lease)
local fields = {'status', 'IN_PROGRESS', 'fingerprint', ARGV[2],
  'fence', string.format('%d', fence), 'lease_expires_at', num(now + lease),
  'expires_at', num(expires_at)}
redis.call('DEL', key)
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, key_ttl(expires_at))
return {1, num(now), fields}
"""

# ARGV: now, fence, result, ttl -> 1 | 0
_COMPLETE = """
if not owned(ARGV[2]) then return 0 end
local expires_at = now + tonumber(ARGV[4])
redis.call('HSET', key, 'status', 'COMPLETED', 'result', ARGV[3], 'expires_at', num(expires_at))
redis.call('PEXPIRE', key, key_ttl(expires_at))
return 1
"""

# ARGV: now, fence -> 1 | 0. Keeps the hash (and its fence) and its Redis TTL; ending the
# logical retention makes it read as absent and the next claim takes it over with fence + 1.
_RELEASE = """
if not owned(ARGV[2]) then return 0 end
redis.call('HSET', key, 'expires_at', num(now))
return 1
"""

# ARGV: now, fence, lease -> 1 | 0. Retention (and the key's TTL) only ever grow.
_RENEW = """
local f = owned(ARGV[2])
if not f then return 0 end
local lease_end = now + tonumber(ARGV[3])
local expires_at = math.max(tonumber(f[3]), lease_end)
redis.call('HSET', key, 'lease_expires_at', num(lease_end), 'expires_at', num(expires_at))
local ttl = key_ttl(expires_at)
local pttl = redis.call('PTTL', key)
if pttl >= 0 and pttl < tonumber(ttl) then redis.call('PEXPIRE', key, ttl) end
return 1
"""

# ARGV: now -> flat record, or {} when absent or past retention.
_GET = """
local flat = redis.call('HGETALL', key)
if #flat == 0 then return {} end
for i = 1, #flat, 2 do
  if flat[i] == 'expires_at' and now >= tonumber(flat[i + 1]) then return {} end
end
return flat
"""

_DELETE = "return redis.call('DEL', KEYS[1])"


def _connect_failure(exc: Exception) -> StoreError | None:
    """A ``StoreError`` naming why connecting to Redis failed and what to change, or
    ``None`` when ``exc`` is not a failure to connect (e.g. a connection lost mid-command:
    the script may have run)."""
    low = str(exc).lower()
    if type(exc).__name__.startswith("Authentication") or "wrongpass" in low:
        why = (
            "authentication failed: check the user and password in the URL (and the "
            "server's ACL / requirepass)"
        )
    elif "connection refused" in low or "connect call failed" in low:
        why = (
            "connection refused: nothing accepts connections at the URL's host and port; "
            "check them and that Redis is running"
        )
    elif "not known" in low or "name resolution" in low or "nodename nor servname" in low:
        why = "unknown host: the URL's host name does not resolve; check its spelling and DNS"
    elif "timeout connecting" in low:
        why = "no answer within socket_connect_timeout: check the host, the port and firewalls"
    else:
        return None
    detail = " ".join(str(exc).split())
    return StoreError(f"cannot connect to Redis: {why} ({type(exc).__name__}: {detail})")


def _redis_knows(name: str) -> bool:
    """Whether the installed redis-py parses URL option ``name``."""
    try:
        from redis.connection import URL_QUERY_ARGUMENT_PARSERS
    except ImportError:
        return False
    return name in URL_QUERY_ARGUMENT_PARSERS


class _Script:
    """Lua source and its SHA1 (computed locally: EVALSHA needs no SCRIPT LOAD)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


SCRIPTS = {
    "claim": _Script(_PRELUDE + _CLAIM),
    "complete": _Script(_PRELUDE + _COMPLETE),
    "release": _Script(_PRELUDE + _RELEASE),
    "renew": _Script(_PRELUDE + _RENEW),
    "get": _Script(_PRELUDE + _GET),
    "delete": _Script(_DELETE),
}


@dataclass(frozen=True)
class _Call(Generic[_T]):
    """One operation, transport-agnostic: a script, its one key, its ARGV and a parser of
    the reply. The sync and async paths run the same ``_Call``."""

    script: _Script
    key: str
    args: tuple[str | bytes, ...]
    parse: Callable[[Any], _T]


@functools.lru_cache(maxsize=64)
def _script(source: str) -> _Script:
    """A script given to :meth:`RedisStore.run_script`, its SHA1 computed once."""
    return _Script(source)


def _raw(reply: Any) -> Any:
    return reply


# -- reply parsing -----------------------------------------------------------------------
def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record(key: str, flat: list[Any]) -> Record | None:
    if not flat:
        return None
    fields = {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
    result = fields.get("result")
    return Record(
        key=key,
        status=Status(_text(fields["status"])),
        fingerprint=_text(fields["fingerprint"]),
        fence=int(fields["fence"]),
        lease_expires_at=float(fields["lease_expires_at"]),
        expires_at=float(fields["expires_at"]),
        result=bytes(result) if result is not None else None,
    )


def _claim_parser(key: str) -> Callable[[Any], Claim]:
    def parse(reply: Any) -> Claim:
        acquired, now, flat = reply
        record = _record(key, flat)
        assert record is not None
        return Claim(acquired=bool(int(acquired)), record=record, now=float(now))

    return parse


def _flag(reply: Any) -> bool:
    return int(reply) == 1


async def _close_with_loop(client: AsyncRedis) -> AsyncGenerator[None, None]:
    """Started once per loop and then parked: ``loop.shutdown_asyncgens()`` (which
    ``asyncio.run`` calls before closing its loop) finalises it, closing the loop's client
    while the loop still runs, so no connection outlives its loop."""
    try:
        yield
    finally:
        await client.aclose()


@dataclass
class _LoopClient:
    client: AsyncRedis
    closer: AsyncGenerator[None, None]


class RedisStore(Store):
    """Records in Redis: one hash per key (``{prefix}{key}``), one Lua script per operation.

    ``claim``, ``complete``, ``release``, ``renew``, ``get`` and ``delete`` are each one
    ``EVALSHA`` (one round trip; after a ``SCRIPT FLUSH`` or on a fresh server the first call
    of a script falls back to ``EVAL``, a second round trip, which reloads it). A claim that
    fails returns the existing record from the same script. Each script touches exactly one
    key, so the store works on Redis Cluster (one record = one slot).

    Time: by default leases and retention are decided by the Redis server's clock (``TIME``
    inside the script), so clients with skewed clocks agree. With ``clock=`` the client
    passes its clock's reading to the script instead (for tests with a manual clock).

    Expiry: retention is enforced on read from the record's ``expires_at``; the key's Redis
    TTL (a relative ``PEXPIRE``, at least :data:`MIN_KEY_TTL_MS`) follows retention so Redis
    deletes finished records. ``release`` ends the logical retention but keeps the key and
    its Redis TTL, so the fence survives and a released owner's fence stays stale.

    Clients: from ``url`` the store builds a sync client and, for the async methods, one
    async client per running event loop (a client is bound to its loop; ``asyncio.run`` per
    call, as on AWS Lambda, gets a fresh client, and the loop's client is closed when
    ``asyncio.run`` shuts the loop down). Instead pass ready clients: ``client``
    (``redis.Redis``) and/or ``async_client`` (``redis.asyncio.Redis``), both with
    ``decode_responses=False``; the store never closes them. With only ``client``, the async
    methods run it in a worker thread; with only ``async_client``, the sync methods fail.
    Store-built clients use ``socket_timeout`` / ``socket_connect_timeout`` (5 s) and no
    command retries (a timed-out script may have run; the caller fails closed with
    :class:`~idempotence.StoreError`) and speak RESP2 (``protocol=2``; redis-py 8.1 does
    not replace a server-closed pooled async RESP3 connection); other keyword arguments go
    to ``redis.Redis.from_url`` (e.g. ``retry=``, ``max_connections=``, ``protocol=3``).

    ``max_result_bytes`` is 64 MiB: below Redis's 512 MB string limit, and a completed
    record's result travels in every replaying claim, so keep results small.
    """

    max_result_bytes = 64 * 1024 * 1024
    uses_client_clock = False

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        async_client: AsyncRedis | None = None,
        prefix: str = "idempotence:",
        clock: Clock | None = None,
        socket_timeout: float | None = 5.0,
        socket_connect_timeout: float | None = 5.0,
        **options: Any,
    ) -> None:
        self._redis = require("redis", "redis")
        require("redis.asyncio", "redis")  # binds self._redis.asyncio
        if url is None and client is None and async_client is None:
            url = "redis://localhost:6379/0"
        if url is not None:  # our options in the URL are read exactly as from_url reads them
            parsed = self.parse_url(url)
            url = parsed["url"]
            prefix = merge_option("prefix", prefix, "idempotence:", parsed["prefix"])
        if options.get("decode_responses"):
            raise ValueError("RedisStore needs decode_responses=False: results are bytes")
        for given in (client, async_client):
            if given is not None and given.get_connection_kwargs().get("decode_responses"):
                raise ValueError(
                    "RedisStore needs a client built with decode_responses=False "
                    "(results are arbitrary bytes)"
                )
        self.url = url
        self.prefix = prefix
        self.clock = clock
        self._options: dict[str, Any] = {
            # RESP2: the scripts need nothing newer, and redis-py 8.1's async pool hands out
            # server-closed RESP3 connections instead of reconnecting (redis-py #4252).
            "protocol": 2,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            **options,
        }
        self._injected_client = client
        self._injected_async_client = async_client
        self._client: Redis | None = None
        self._loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient]
        self._loop_clients = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @classmethod
    def parse_url(cls, url: str) -> dict[str, Any]:
        """The constructor arguments of ``redis://[user:password@]host:port/db`` or
        ``rediss://`` (TLS), checked without connecting. Query options: ``prefix`` (key
        prefix, default ``idempotence:``) and redis-py's (e.g. ``socket_timeout=2``), which
        stay in the URL; any other is refused with ``ValueError``."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in {"redis", "rediss", "unix"}:
            raise ValueError("a Redis store URL starts with redis://, rediss:// or unix://")
        options = url_query(url, ("prefix", *sorted(_REDIS_URL_OPTIONS)), extra=_redis_knows)
        query = parse_qsl(parts.query, keep_blank_values=True)
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        return {
            "url": urlunsplit(parts._replace(query=rest)),
            "prefix": options.get("prefix", "idempotence:"),
        }

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """The store of a ``redis://`` URL (see :meth:`parse_url`); the same as
        ``RedisStore(url)``."""
        return cls(**cls.parse_url(url))

    # -- clients ------------------------------------------------------------------------
    def _sync_client(self) -> Redis:
        if self._injected_client is not None:
            return self._injected_client
        if self.url is None:
            raise RuntimeError(
                "this RedisStore was given only async_client=: pass client= or a URL "
                "to use its sync methods"
            )
        with self._lock:
            if self._client is None:
                client: Redis = self._redis.Redis.from_url(self.url, **self._options)
                self._client = client
            return self._client

    async def _async_client(self) -> AsyncRedis | None:
        """This loop's async client (built on first use), or None: use the sync client."""
        if self._injected_async_client is not None:
            return self._injected_async_client
        if self.url is None:
            return None
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._loop_clients.get(loop)
            if entry is not None:
                return entry.client
            forget_closed_loops(self._loop_clients)
            client: AsyncRedis = self._redis.asyncio.Redis.from_url(self.url, **self._options)
            entry = self._loop_clients[loop] = _LoopClient(client, _close_with_loop(client))
        await entry.closer.__anext__()  # runs to its `yield` now; the loop tracks it
        return client

    def close(self) -> None:
        """Close the sync client the store built (it is rebuilt on next use) and forget
        async clients of closed loops. Async clients of live loops are closed by
        :meth:`aclose` on their loop, or when ``asyncio.run`` ends. Injected clients are
        left open."""
        with self._lock:
            client, self._client = self._client, None
            forget_closed_loops(self._loop_clients)
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close this loop's async client and the sync client the store built (both are
        rebuilt on next use). Injected clients are left open."""
        with self._lock:
            entry = self._loop_clients.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry.closer.aclose()  # its `finally` closes the loop's client
        self.close()

    # -- running a call -----------------------------------------------------------------
    def _run(self, call: _Call[_T]) -> _T:
        client = self._sync_client()
        key, args, script = call.key, call.args, call.script
        try:
            try:
                reply = client.evalsha(script.sha, 1, key, *args)
            except self._redis.exceptions.NoScriptError:
                reply = client.eval(script.source, 1, key, *args)
        except self._redis.exceptions.ConnectionError as exc:
            failure = _connect_failure(exc)
            if failure is None:
                raise
            raise failure from exc
        return call.parse(reply)

    async def _arun(self, call: _Call[_T]) -> _T:
        client = await self._async_client()
        if client is None:
            return await asyncio.to_thread(self._run, call)
        key, args, script = call.key, call.args, call.script
        try:
            try:
                reply = await client.evalsha(script.sha, 1, key, *args)
            except self._redis.exceptions.NoScriptError:
                reply = await client.eval(script.source, 1, key, *args)
        except self._redis.exceptions.ConnectionError as exc:
            failure = _connect_failure(exc)
            if failure is None:
                raise
            raise failure from exc
        return call.parse(reply)

    # -- capability: AtomicScripts (idempotence.stores.capabilities) --------------------
    def run_script(self, script: str, key: str, args: Sequence[str | bytes]) -> Any:
        """Run the Lua ``script`` atomically on ``key`` (the full Redis key) with ``ARGV =
        args`` through the store's client (``EVALSHA``, ``EVAL`` after ``NOSCRIPT``); the
        raw reply. See :class:`~idempotence.stores.capabilities.AtomicScripts`."""
        return self._run(_Call(_script(script), key, tuple(args), _raw))

    async def arun_script(self, script: str, key: str, args: Sequence[str | bytes]) -> Any:
        """Async :meth:`run_script` (the loop's client, or the sync one in a thread)."""
        return await self._arun(_Call(_script(script), key, tuple(args), _raw))

    # -- calls (shared by the sync and async methods) ------------------------------------
    def _now(self) -> str:
        return "" if self.clock is None else repr(float(self.clock()))

    def _claim(self, key: str, fingerprint: str, lease: float, ttl: float) -> _Call[Claim]:
        args = (self._now(), fingerprint, repr(float(lease)), repr(float(ttl)))
        return _Call(SCRIPTS["claim"], self.prefix + key, args, _claim_parser(key))

    def _complete(self, key: str, fence: int, result: bytes, ttl: float) -> _Call[bool]:
        args = (self._now(), str(int(fence)), bytes(result), repr(float(ttl)))
        return _Call(SCRIPTS["complete"], self.prefix + key, args, _flag)

    def _release(self, key: str, fence: int) -> _Call[bool]:
        args = (self._now(), str(int(fence)))
        return _Call(SCRIPTS["release"], self.prefix + key, args, _flag)

    def _renew(self, key: str, fence: int, lease: float) -> _Call[bool]:
        args = (self._now(), str(int(fence)), repr(float(lease)))
        return _Call(SCRIPTS["renew"], self.prefix + key, args, _flag)

    def _get(self, key: str) -> _Call[Record | None]:
        return _Call(SCRIPTS["get"], self.prefix + key, (self._now(),), lambda r: _record(key, r))

    def _delete(self, key: str) -> _Call[bool]:
        return _Call(SCRIPTS["delete"], self.prefix + key, (), _flag)

    # -- operations ---------------------------------------------------------------------
    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        return self._run(self._claim(key, fingerprint, lease, ttl))

    def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        return self._run(self._complete(key, fence, result, ttl))

    def release(self, key: str, fence: int) -> bool:
        return self._run(self._release(key, fence))

    def renew(self, key: str, fence: int, *, lease: float) -> bool:
        return self._run(self._renew(key, fence, lease))

    def get(self, key: str) -> Record | None:
        return self._run(self._get(key))

    def delete(self, key: str) -> bool:
        return self._run(self._delete(key))

    async def aclaim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        return await self._arun(self._claim(key, fingerprint, lease, ttl))

    async def acomplete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        return await self._arun(self._complete(key, fence, result, ttl))

    async def arelease(self, key: str, fence: int) -> bool:
        return await self._arun(self._release(key, fence))

    async def arenew(self, key: str, fence: int, *, lease: float) -> bool:
        return await self._arun(self._renew(key, fence, lease))

    async def aget(self, key: str) -> Record | None:
        return await self._arun(self._get(key))

    async def adelete(self, key: str) -> bool:
        return await self._arun(self._delete(key))
