"""Redis store: one hash per record, every operation one atomic Lua script.

Needs ``redis`` (``pip install 'idempotence[redis]'``), imported when a store is built, so
importing this module never fails. Redis 5.0 or later (scripts that read ``TIME`` and then
write rely on effects replication, the default since 5.0). Redis Cluster
(``redis+cluster://``) through redis-py's ``RedisCluster``: every script declares its one
key, so it runs on the master owning that key's slot.

One file (over 400 lines): the Lua scripts, the call objects and the client handling
(pipelining, Cluster) serve only :class:`RedisStore`; split, they would be private imports
between the modules of one store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import os
import threading
import time
import types
import weakref
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._drive import adrive, drive
from .._errors import StoreError
from .._lazy import require
from .._record import Claim, Record, Status
from ._base import Clock, forget_closed_loops
from ._maintenance import (
    DEFAULT_BATCH,
    CountedByScan,
    Progress,
    StoreStats,
    batches,
    matching,
    stats_of,
)
from ._operations import OperationStore
from ._registry import merge_option, option_number, url_query

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

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

#: URL schemes of a Redis Cluster (``limits`` spells them the same way).
_CLUSTER_SCHEMES = frozenset(["redis+cluster", "rediss+cluster"])
#: Rounds of MOVED / ASK redirections followed by one call with ``wait_replicas``, or by a
#: cluster batch (with its NOSCRIPT and TRYAGAIN resends), before giving up.
_MAX_REDIRECTS = 5

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
if #flat > 0 then redis.call('DEL', key) end -- a taken-over record's result goes
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
    elif "cluster cannot be connected" in low:
        why = (
            "no startup node of the cluster answered: check the URL's hosts and ports and "
            "that the cluster is running"
        )
    elif "timeout connecting" in low:
        why = "no answer within socket_connect_timeout: check the host, the port and firewalls"
    else:
        return None
    detail = " ".join(str(exc).split())
    return StoreError(f"cannot connect to Redis: {why} ({type(exc).__name__}: {detail})")


def _cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The startup nodes ``(host, port)`` of a ``redis+cluster://`` URL (port 6379 when
    left out; IPv6 hosts in brackets). ``ValueError`` when there is none or one is
    malformed (the URL is not echoed: it may hold a password)."""
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for item in hosts.split(","):
        parts = urlsplit("redis://" + item.strip())
        try:
            port = parts.port or 6379
        except ValueError:
            port = 0
        if not parts.hostname or not 0 < port < 65536:
            raise ValueError(
                "a redis+cluster:// URL lists its startup nodes as host:port, separated by "
                "commas (IPv6 hosts in brackets: [::1]:7000)"
            )
        nodes.append((parts.hostname, port))
    return nodes


def _redirected_too_often() -> StoreError:
    return StoreError(
        "Redis Cluster kept redirecting the command (slots being migrated or a failover "
        "in progress); retry later"
    )


class _ConnectFailures:
    """``with`` block: a connection error (or a cluster's "no startup node answered")
    that :func:`_connect_failure` recognises becomes its :class:`StoreError` (raised
    from it); any other exception passes unchanged. A class, not a generator context
    manager: it sits on every call's path."""

    __slots__ = ("errors",)

    def __init__(self, redis: Any) -> None:
        self.errors = (redis.exceptions.ConnectionError, _cluster_errors(redis))

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if isinstance(exc, self.errors):
            failure = _connect_failure(exc)
            if failure is not None:
                raise failure from exc
        return False


def _cluster_errors(redis: Any) -> type[Exception]:
    """``RedisClusterException``: what a cluster client raises when no startup node
    answers (it is not a ``RedisError``)."""
    return redis.exceptions.RedisClusterException  # type: ignore[no-any-return]


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


# The batch scripts (BatchClaims): the single script's body as a function of its ARGV,
# applied to each of KEYS in order with one clock reading. ARGV: now, then for each key its
# arguments (``_PER`` of them) -> one reply per key.
_PER = {"claim": 3, "complete": 3, "release": 1}
_MANY = """
end
local out = {}
for i = 1, #KEYS do
  key = KEYS[i]
  local a = {ARGV[1]}
  for j = 1, PER do a[j + 1] = ARGV[1 + (i - 1) * PER + j] end
  out[i] = one(a)
end
return out
"""


def _many(body: str, per: int) -> str:
    return _PRELUDE + "local function one(ARGV)\n" + body + _MANY.replace("PER", str(per))


SCRIPTS = {
    "claim_many": _Script(_many(_CLAIM, _PER["claim"])),
    "complete_many": _Script(_many(_COMPLETE, _PER["complete"])),
    "release_many": _Script(_many(_RELEASE, _PER["release"])),
    "claim": _Script(_PRELUDE + _CLAIM),
    "complete": _Script(_PRELUDE + _COMPLETE),
    "release": _Script(_PRELUDE + _RELEASE),
    "renew": _Script(_PRELUDE + _RENEW),
    "get": _Script(_PRELUDE + _GET),
    "delete": _Script(_DELETE),
}


@dataclass(slots=True)  # not frozen: that costs a setattr call per field, per operation
class _Call(Generic[_T]):
    """One operation, transport-agnostic: a script, its one key, its ARGV, a parser of
    the reply and ``wrote(result)``: whether the script changed the key (``None``: it never
    does), which decides whether ``wait_replicas`` must be acknowledged. The sync and async
    paths run the same ``_Call``."""

    script: _Script
    key: str
    args: tuple[str | bytes, ...]
    parse: Callable[[Any], _T]
    wrote: Callable[[_T], bool] | None = None
    #: Further keys (the batch scripts; all in ``key``'s hash slot on a cluster).
    more: tuple[str, ...] = ()

    def argv(self) -> tuple[Any, ...]:
        """What follows the script in ``EVALSHA``/``EVAL``: the key count, the keys, ARGV."""
        return (1 + len(self.more), self.key, *self.more, *self.args)

    def command(self, use_eval: bool = False) -> tuple[Any, ...]:
        """The whole command: ``EVALSHA sha ...``, or ``EVAL source ...`` (after
        ``NOSCRIPT``)."""
        if use_eval:
            return ("EVAL", self.script.source, *self.argv())
        return ("EVALSHA", self.script.sha, *self.argv())


@dataclass(frozen=True)
class _Batch:
    """Commands to send on ONE connection, pipelined (one round trip): to the master
    owning ``key``'s slot, or to ``node`` (host, port) after an ``ASK`` redirection."""

    key: str
    node: tuple[str, int] | None
    commands: tuple[tuple[Any, ...], ...]


class _Refresh:
    """Reload the cluster's slot map (after a ``MOVED`` reply or a lost connection)."""


#: A call with ``wait_replicas``, sans-I/O: yields what to send, receives the replies (a
#: list, errors as exception objects) or ``None`` after a refresh; returns the result.
_Waited = Generator["_Batch | _Refresh", "list[Any] | None", _T]


@dataclass(frozen=True)
class _Scatter:
    """A cluster batch's scripts, sent at once: the batches going to one node (the master
    owning each batch's key slot, or its ``ASK`` node) are pipelined on one connection of
    that node, in order, followed by ``wait`` once when given (``WAIT`` counts the writes
    of its own connection, so one covers that node's scripts); every node is written to
    before any reply is read. Each batch gets back its replies, then its node's ``WAIT``
    reply."""

    batches: tuple[_Batch, ...]
    wait: tuple[Any, ...] | None


@dataclass(frozen=True)
class _Pause:
    """Wait ``seconds`` before the next round (``TRYAGAIN``: a slot's keys are on both
    sides of a migration in progress)."""

    seconds: float


#: A cluster batch, sans-I/O: yields a :class:`_Scatter` (receives one reply list per
#: batch) or a :class:`_Refresh` / :class:`_Pause` (receives ``None``); returns the results.
_Scattered = Generator["_Scatter | _Refresh | _Pause", "list[list[Any]] | None", _T]


def _by_node(client: Any, scatter: _Scatter) -> list[tuple[Any, list[int], list[Any]]]:
    """``scatter``'s batches grouped by the node of ``client`` (a sync or async
    ``RedisCluster``) each goes to, per its slot map: ``(node, batch indexes, commands)``,
    the commands ending with the ``WAIT`` when there is one."""
    groups: dict[str, tuple[Any, list[int], list[Any]]] = {}
    for index, batch in enumerate(scatter.batches):
        node = (
            client.get_node(*batch.node)
            if batch.node is not None
            else client.get_node_from_key(batch.key)
        )
        if node is None:
            raise StoreError("Redis Cluster redirected to a node it does not list; retry")
        group = groups.setdefault(node.name, (node, [], []))
        group[1].append(index)
        group[2].extend(batch.commands)
    if scatter.wait is not None:
        for _node, _indexes, commands in groups.values():
            commands.append(scatter.wait)
    return list(groups.values())


def _per_batch(
    scatter: _Scatter, groups: list[tuple[Any, list[int], list[Any]]], replies: list[list[Any]]
) -> list[list[Any]]:
    """Each batch's replies (and its node's ``WAIT`` reply) out of each node's replies."""
    out: list[list[Any]] = [[] for _ in scatter.batches]
    for (_node, indexes, _commands), got in zip(groups, replies, strict=True):
        at = 0
        for index in indexes:
            size = len(scatter.batches[index].commands)
            out[index] = got[at : at + size]
            at += size
            if scatter.wait is not None:
                out[index].append(got[-1])
    return out


def _read_replies(connection: Any, count: int) -> list[Any]:
    """``count`` replies of a sync connection (an error reply as its exception)."""
    from redis.exceptions import ResponseError

    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


async def _anode_pipeline(node: Any, commands: list[Any]) -> list[Any]:
    """Send ``commands`` in one write on one connection of the async cluster ``node`` and
    read their replies (an error reply as its exception). On any failure the connection
    is dropped (a reply left unread must not reach the next command) and nothing is
    resent."""
    from redis.exceptions import ResponseError

    connection = node.acquire_connection()
    try:
        await node.disconnect_if_needed(connection)
        await connection.send_packed_command(connection.pack_commands(commands))
        replies = await _replies(connection, len(commands), ResponseError, None)
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    finally:
        node.release(connection)
    return replies


def _resp(command: tuple[Any, ...]) -> bytes:
    """``command`` in RESP, its ``str`` parts UTF-8 and numbers as text (as redis-py's
    default encoder writes them), without redis-py's general-purpose packer."""
    out = [b"*%d\r\n" % len(command)]
    for part in command:
        data = part if isinstance(part, bytes) else str(part).encode()
        out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


#: The packer :func:`_pack` uses: :func:`_resp`, or hiredis's ``pack_command`` (the same
#: bytes for ``str``, ``bytes`` and ``int`` parts, about four times faster) once a store
#: was built with hiredis installed (:func:`_load_packer`).
_packer: Callable[[tuple[Any, ...]], bytes] = _resp


def _load_packer() -> None:
    """Use hiredis's C packer from now on when it is installed (not at import: the
    module imports no backend library)."""
    global _packer
    try:
        from hiredis import pack_command
    except ImportError:
        return
    _packer = pack_command


def _pack(command: tuple[Any, ...]) -> bytes:
    """``command`` (parts ``str``, ``bytes`` or ``int``) in RESP, as redis-py's default
    encoder writes it (the sync single-node path and the async pipelines)."""
    return _packer(command)


def _always(_result: Any) -> bool:
    return True


def _acquired(claim: Claim) -> bool:
    return claim.acquired


def _truth(flag: bool) -> bool:
    return flag


# Delete a record if it still matches what the purge selected it for: ARGV[1] = now,
# ARGV[2] = "1" to delete only if retention and lease have ended. Non-record keys are kept.
_PURGE = _Script("""
local f = redis.call('HMGET', KEYS[1], 'status', 'fence', 'expires_at', 'lease_expires_at')
if not f[1] or not f[2] then return 0 end
if ARGV[2] == '1' then
  local now = tonumber(ARGV[1])
  if tonumber(f[3]) > now or tonumber(f[4]) > now then return 0 end
end
return redis.call('UNLINK', KEYS[1])
""")

_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\^"})


@functools.lru_cache(maxsize=64)
def _script(source: str) -> _Script:
    """A script given to :meth:`RedisStore.run_script`, its SHA1 computed once."""
    return _Script(source)


def _raw(reply: Any) -> Any:
    return reply


# -- reply parsing -----------------------------------------------------------------------
def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


#: ``Status`` by value: a dict lookup (``Status(value)`` goes through ``EnumMeta.__call__``).
_STATUS = {status.value: status for status in Status}


def _record(key: str, flat: list[Any]) -> Record | None:
    """The record of an ``HGETALL``-style flat reply (``KeyError`` or ``ValueError`` when
    it holds none). Positional construction and the lookup above: a claim's reply parses
    in half the time of keyword construction with ``Status(...)``."""
    if not flat:
        return None
    fields = dict(zip(map(_text, flat[::2]), flat[1::2], strict=True))
    result = fields.get("result")
    return Record(
        key,
        _STATUS[_text(fields["status"])],
        _text(fields["fingerprint"]),
        int(fields["fence"]),
        float(fields["lease_expires_at"]),
        float(fields["expires_at"]),
        None if result is None else bytes(result),
    )


def _claim_parser(key: str) -> Callable[[Any], Claim]:
    def parse(reply: Any) -> Claim:
        acquired, now, flat = reply
        record = _record(key, flat)
        assert record is not None
        return Claim(int(acquired) == 1, record, float(now))

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


#: The most commands of one pipelined write (see :class:`_Coalescer`). A full batch goes
#: out at once, so the server runs it while the client prepares the next: 64 asyncio
#: tasks in one batch left the client idle about a third of the time (waiting for the
#: server's 64 scripts), in two batches of 32 about 1 %, for +30-50 % calls/s and the same
#: CPU per call (8 or 16 cost CPU per call: more writes). See docs/benchmarks.md.
_MAX_BATCH = 32


class _Coalescer:
    """Auto-pipelining of one async client on one event loop: the commands submitted
    during one loop iteration go out as one pipeline (one write, one connection, the
    replies read in order), sent at the end of that iteration, or as soon as it holds
    :data:`_MAX_BATCH` commands. Each command is still its own ``EVALSHA`` (no
    transaction: a command's failure is its own reply), so round trips and atomicity per
    call are unchanged; 64 concurrent tasks cost two writes and pooled connections per
    round instead of 64 of each. A batch in flight does not hold up the next: that one
    takes another pooled connection."""

    __slots__ = ("client", "pending", "tasks")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self.tasks: set[asyncio.Task[None]] = set()  # batches in flight (kept referenced)

    def submit(self, command: tuple[Any, ...]) -> asyncio.Future[Any]:
        """A future of ``command``'s reply (an error reply: its exception, as a value)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = self.pending
        if not pending:
            loop.call_soon(self._flush)
        pending.append((command, future))
        if len(pending) >= _MAX_BATCH:
            self._flush()
        return future

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:  # flushed early (a full batch): the scheduled flush finds none
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._pipeline([command for command, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the whole batch failed (e.g. the connection): each caller
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():  # a caller cancelled meanwhile
                future.set_result(reply)

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write on one pooled connection and read their replies
        (an error reply is returned as its exception). Not redis-py's ``Pipeline``: that
        one resends the whole batch after a lost connection (its connection's retry
        policy), and a script whose reply was lost may have run, so nothing is resent:
        the batch fails and the connection is dropped. A connection found dead when taken
        from the pool (before anything is sent) is reconnected by the pool, which is safe."""
        from redis.exceptions import ResponseError  # an error reply

        pool = self.client.connection_pool
        connection = await pool.get_connection()
        try:
            encoding = getattr(connection.encoder, "encoding", "")
            if encoding.replace("-", "").lower() == "utf8":
                packed: Any = b"".join(map(_pack, commands))
            else:  # an unusual client encoding: redis-py encodes
                packed = connection.pack_commands(commands)
            await connection.send_packed_command(packed)
            timeout = connection.socket_timeout
            if _batch_timeout is None or timeout is None:  # Python 3.10, or no timeout
                replies = await _replies(connection, len(commands), ResponseError, None)
            else:
                try:
                    async with _batch_timeout(None) as deadline:
                        replies = await _replies(
                            connection, len(commands), ResponseError, (deadline, timeout)
                        )
                except TimeoutError:
                    from redis.exceptions import TimeoutError as ReadTimeout

                    raise ReadTimeout("Timeout reading a pipeline's replies from Redis") from None
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)
        return replies


#: ``asyncio.timeout`` (Python 3.11+): one timer for a batch's replies, see :func:`_replies`.
_batch_timeout: Callable[[float | None], Any] | None = getattr(asyncio, "timeout", None)


async def _replies(
    connection: Any, n: int, error_reply: type[Exception], deadline: tuple[Any, float] | None
) -> list[Any]:
    """The next ``n`` replies on ``connection`` (an error reply as its exception).

    ``deadline`` (``asyncio.timeout`` context, ``socket_timeout``): the replies are read
    under that one timer, moved forward only when a read starts less than
    ``socket_timeout`` before it (to ``1.5 * socket_timeout`` from then), so each reply is
    waited for at least ``socket_timeout`` and at most 1.5 times it, and a batch of 64
    replies costs one timer, not 64 (redis-py's ``read_response`` arms and cancels one per
    read: ``timeout=math.inf`` turns that off in redis-py 8.1+). ``None``: redis-py's own
    timeout per read."""
    replies: list[Any] = []
    if deadline is None:
        for _ in range(n):
            try:
                replies.append(await connection.read_response())
            except error_reply as exc:
                replies.append(exc)
        return replies
    timer, timeout = deadline
    loop = asyncio.get_running_loop()
    due = 0.0
    for _ in range(n):
        now = loop.time()
        if now + timeout > due:
            due = now + 1.5 * timeout
            timer.reschedule(due)
        try:
            replies.append(await connection.read_response(timeout=math.inf))
        except error_reply as exc:
            replies.append(exc)
    return replies


class _Direct:
    """The sync single-node path of one ``redis.Redis`` (not a cluster): one script call
    takes one connection, packs its command here (:func:`_pack`), writes it with
    ``send_packed_command`` and reads the reply with ``read_response`` (hiredis parses
    it when installed), then gives the connection back. Not ``execute_command``: per
    command that adds a pool checkout and release (each with a lock, a pid check, four
    metrics hooks and an event), a retry wrapper and its closures, and redis-py's generic
    packer, which measured more client CPU per new-key call than the two round trips
    themselves (docs/benchmarks.md).

    What the generic path guarantees is kept: the socket's ``socket_timeout`` bounds every
    read and write; after any failure between the write and the end of the reply (a lost
    connection, a timeout, an interruption) the connection is disconnected, so no reply
    is ever left pending on a connection that is used again, and nothing is resent (the
    script may have run); ``NOSCRIPT`` is answered by ``EVAL`` on the same connection; an
    error reply (read in full) leaves the connection in use; a connection found dead or
    with unread data when taken (before anything is sent) is reconnected, as the pool
    does.

    ``keep`` (a client the store built and owns): connections stay checked out of its
    pool between calls, in ``spare`` (a list: ``pop`` and ``append`` are atomic, so
    threads sharing the store never share a connection); after a fork the child drops
    the parent's. Otherwise (an injected client, whose pool others may share) each call
    checks a connection out of the pool and releases it.

    Only for a plain setup (:meth:`of`); anything else takes redis-py's generic path, as
    does a call while ``execute_command`` is wrapped or patched (instrumentation, e.g.
    OpenTelemetry's) or redis-py's own metrics are on (:meth:`plain`).
    """

    __slots__ = (
        "client",
        "error_reply",
        "keep",
        "noscript",
        "observability",
        "pid",
        "pool",
        "spare",
        "unusable",
        "utf8",
    )

    def __init__(self, redis: Any, client: Any, *, keep: bool) -> None:
        self.client = client
        self.pool = client.connection_pool
        self.keep = keep
        self.spare: list[Any] = []
        self.pid = os.getpid()
        encoding = str(self.pool.connection_kwargs.get("encoding", "utf-8"))
        self.utf8 = encoding.replace("-", "").lower() == "utf8"
        self.noscript: type[Exception] = redis.exceptions.NoScriptError
        self.error_reply: type[Exception] = redis.exceptions.ResponseError
        try:  # redis-py's metrics switch (redis-py 7.1+)
            from redis.observability.providers import get_observability_instance
        except ImportError:
            self.observability: Callable[[], Any] | None = None
        else:
            self.observability = get_observability_instance
        errors = redis.exceptions
        self.unusable: tuple[type[Exception], ...] = (
            errors.ConnectionError,
            errors.TimeoutError,
            OSError,
        )

    @classmethod
    def of(cls, redis: Any, client: Any, *, keep: bool) -> _Direct | None:
        """The direct path of ``client``, or ``None`` when it is not a plain
        ``redis.Redis``: a pooled client (no ``single_connection_client``) on a
        ``ConnectionPool`` / ``BlockingConnectionPool`` of TCP, TLS or Unix socket
        connections, speaking RESP2, without client-side caching, a credential provider
        (it re-authenticates on release) or command retries (the generic path honours
        ``retry=`` / ``retry_on_timeout`` / ``retry_on_error``; the store's own client
        has none)."""
        if not isinstance(client, redis.Redis) or client.connection is not None:
            return None
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        retry = kwargs.get("retry")
        retries = (
            retry.get_retries()
            if retry is not None
            else int(bool(kwargs.get("retry_on_timeout") or kwargs.get("retry_on_error")))
        )
        plain = (
            type(pool) in (redis.ConnectionPool, redis.BlockingConnectionPool)
            and pool.connection_class
            in (redis.Connection, redis.SSLConnection, redis.UnixDomainSocketConnection)
            and kwargs.get("protocol") in (None, 2, "2")
            and getattr(pool, "cache", None) is None
            and kwargs.get("credential_provider") is None
            and retries == 0
        )
        return cls(redis, client, keep=keep) if plain else None

    def plain(self) -> bool:
        """Whether this call may bypass ``execute_command``: it is redis-py's own (not
        wrapped on the class nor replaced on the client) and redis-py's observability
        (its command metrics) is off."""
        method = type(self.client).execute_command
        if (
            type(method) is not types.FunctionType
            or method.__module__ != "redis.client"
            or "execute_command" in vars(self.client)
        ):
            return False
        return self.observability is None or self.observability().get_provider_manager() is None

    def execute(self, script: _Script, rest: tuple[Any, ...]) -> Any:
        """``EVALSHA script rest...`` (``EVAL`` after ``NOSCRIPT``) and its reply; an error
        reply raises its ``ResponseError``."""
        connection = self._take()
        try:
            try:
                reply = self._round_trip(connection, ("EVALSHA", script.sha, *rest))
            except self.noscript:
                reply = self._round_trip(connection, ("EVAL", script.source, *rest))
        except self.error_reply:  # read in full: the connection is clean
            self._give(connection)
            raise
        except BaseException:  # the reply may be on its way: never read it as another's
            connection.disconnect()
            self.pool.release(connection)
            raise
        self._give(connection)
        return reply

    def _round_trip(self, connection: Any, command: tuple[Any, ...]) -> Any:
        if self.utf8:
            connection.send_packed_command((_pack(command),))
        else:  # an unusual client encoding: redis-py encodes
            connection.send_packed_command(connection.pack_command(*command))
        return connection.read_response()

    def _take(self) -> Any:
        """A connected connection with nothing pending: a spare one when kept (checked as
        the pool checks: no unread data, not closed by the server; else reconnected, which
        is safe since nothing was sent), or one from the pool (which checks the same)."""
        if self.keep:
            if self.pid != os.getpid():  # a forked child: the parent's sockets are not ours
                self.spare, self.pid = [], os.getpid()
            try:
                connection = self.spare.pop()
            except IndexError:
                pass
            else:
                try:
                    if not connection.can_read():
                        return connection
                except self.unusable:  # closed by the server, or the socket failed
                    pass
                connection.disconnect()
                self.pool.release(connection)
        return self.pool.get_connection()

    def _give(self, connection: Any) -> None:
        if self.keep:
            self.spare.append(connection)
        else:
            self.pool.release(connection)


class RedisStore(CountedByScan, OperationStore):
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
    The async methods pipeline automatically (not on a cluster, nor with ``wait_replicas``):
    the calls made during one event-loop iteration go out as one pipeline (up to 32 calls
    each), each its own ``EVALSHA`` with its own reply (see :class:`_Coalescer`). The sync
    methods on a single node write each command on a connection directly, not through redis-py's
    ``execute_command`` (see :class:`_Direct`: the same commands and guarantees, half the
    client CPU); a client with command retries, or whose ``execute_command`` is wrapped
    (instrumentation) or redis-py metrics are on, goes through ``execute_command``.
    Store-built clients use ``socket_timeout`` / ``socket_connect_timeout`` (5 s) and no
    command retries (a timed-out script may have run; the caller fails closed with
    :class:`~idempotence.StoreError`) and speak RESP2 (``protocol=2``; redis-py 8.1 does
    not replace a server-closed pooled async RESP3 connection); other keyword arguments go
    to ``redis.Redis.from_url`` (e.g. ``retry=``, ``max_connections=``, ``protocol=3``).

    ``max_result_bytes`` is 64 MiB: below Redis's 512 MB string limit, and a completed
    record's result travels in every replaying claim, so keep results small.

    Redis Cluster: ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` for
    TLS) builds ``redis.cluster.RedisCluster`` / ``redis.asyncio.cluster.RedisCluster``
    clients over those startup nodes (an injected ``client`` / ``async_client`` may be one
    too). Each script runs on the master owning its key's slot, and that master's ``TIME``
    decides the record's lease and retention. Cluster clients do not retry a command after
    a lost connection either (the slot map is reloaded; the next call follows a failover).
    A batch (``claim_many``...) runs one script per hash slot and pipelines the scripts of
    each master's slots in one write: one round trip per master (see :meth:`_scattered`).

    Durability: ``wait_replicas=N`` (URL ``?wait_replicas=N``) sends ``WAIT N timeout``
    after each write script, pipelined on the same connection (one round trip, two
    commands); a write that fewer than ``N`` replicas acknowledge within ``wait_timeout``
    seconds (default 1) raises :class:`~idempotence.StoreError` (the primary applied it, the
    replicas may not have: it counts as failed). Redis replication stays asynchronous:
    ``WAIT`` makes losing an acknowledged write in a failover unlikely, not impossible.
    """

    max_result_bytes = 64 * 1024 * 1024
    uses_client_clock = False

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | RedisCluster | None = None,
        async_client: AsyncRedis | AsyncRedisCluster | None = None,
        prefix: str = "idempotence:",
        clock: Clock | None = None,
        socket_timeout: float | None = 5.0,
        socket_connect_timeout: float | None = 5.0,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        **options: Any,
    ) -> None:
        self._redis = require("redis", "redis")
        self._connect_failures = _ConnectFailures(self._redis)
        _load_packer()
        require("redis.asyncio", "redis")  # binds self._redis.asyncio
        require("redis.asyncio.cluster", "redis")
        if url is None and client is None and async_client is None:
            url = "redis://localhost:6379/0"
        self.cluster = False
        if url is not None:  # our options in the URL are read exactly as from_url reads them
            parsed = self.parse_url(url)
            url = parsed["url"]
            prefix = merge_option("prefix", prefix, "idempotence:", parsed["prefix"])
            wait_replicas = merge_option("wait_replicas", wait_replicas, 0, parsed["wait_replicas"])
            wait_timeout = merge_option("wait_timeout", wait_timeout, 1.0, parsed["wait_timeout"])
            self.cluster = urlsplit(url).scheme.lower() in _CLUSTER_SCHEMES
            if self.cluster and "db" in options:
                raise ValueError("Redis Cluster has only database 0: drop the db option")
        if not (isinstance(wait_replicas, int) and wait_replicas >= 0):
            raise ValueError("wait_replicas must be a whole number of replicas (0: no WAIT)")
        if not (0 < wait_timeout < float("inf")):
            raise ValueError("wait_timeout must be a positive number of seconds")
        #: Replicas that must acknowledge each write (``WAIT``); 0: none (no ``WAIT``).
        self.wait_replicas = wait_replicas
        #: Seconds each ``WAIT`` may block.
        self.wait_timeout = float(wait_timeout)
        if wait_replicas and socket_timeout is not None and wait_timeout >= socket_timeout:
            raise ValueError("wait_timeout must be shorter than socket_timeout")
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
        self._injected_client: Any = client  # a Redis or a RedisCluster
        self._injected_async_client: Any = async_client
        #: Whether the store talks to a Redis Cluster (a cluster URL or client).
        self.cluster = (
            self.cluster
            or isinstance(client, self._redis.cluster.RedisCluster)
            or isinstance(async_client, self._redis.asyncio.cluster.RedisCluster)
        )
        self._client: Redis | None = None
        #: The sync single-node path without ``execute_command`` (see :class:`_Direct`):
        #: of an injected plain client now, of the store's own client once built.
        self._direct: _Direct | None = None
        if client is not None and not self.cluster:
            self._direct = _Direct.of(self._redis, client, keep=False)
        self._loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient]
        self._loop_clients = weakref.WeakKeyDictionary()
        #: Each loop's auto-pipelining of its async client (see :class:`_Coalescer`).
        self._coalescers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Coalescer]
        self._coalescers = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @classmethod
    def parse_url(cls, url: str) -> dict[str, Any]:
        """The constructor arguments of ``redis://[user:password@]host:port/db`` or
        ``rediss://`` (TLS), or of a cluster ``redis+cluster://[user:password@]host:port[,
        host:port...]`` (``rediss+cluster://``: TLS; database 0 only), checked without
        connecting. Query options: ``prefix`` (key prefix, default ``idempotence:``),
        ``wait_replicas`` and ``wait_timeout`` (see the class) and redis-py's (e.g.
        ``socket_timeout=2``), which stay in the URL; any other is refused with
        ``ValueError``."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in {"redis", "rediss", "unix", *_CLUSTER_SCHEMES}:
            raise ValueError(
                "a Redis store URL starts with redis://, rediss://, unix://, "
                "redis+cluster:// or rediss+cluster://"
            )
        ours = ("prefix", "wait_replicas", "wait_timeout")
        options = url_query(url, (*ours, *sorted(_REDIS_URL_OPTIONS)), extra=_redis_knows)
        if scheme in _CLUSTER_SCHEMES:
            _cluster_nodes(url)  # checked now, without connecting
            if "db" in options or parts.path.strip("/") not in {"", "0"}:
                raise ValueError("Redis Cluster has only database 0: drop the /db and db=")
        wait_replicas = options.get("wait_replicas", "0")
        if not wait_replicas.isdigit():
            raise ValueError("store URL option 'wait_replicas' must be a whole number >= 0")
        wait_timeout = option_number(options, "wait_timeout", 1.0)
        query = parse_qsl(parts.query, keep_blank_values=True)
        rest = urlencode([(k, v) for k, v in query if k not in ours])
        return {
            "url": urlunsplit(parts._replace(query=rest)),
            "prefix": options.get("prefix", "idempotence:"),
            "wait_replicas": int(wait_replicas),
            "wait_timeout": wait_timeout,
        }

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """The store of a ``redis://`` URL (see :meth:`parse_url`); the same as
        ``RedisStore(url)``."""
        return cls(**cls.parse_url(url))

    # -- clients ------------------------------------------------------------------------
    def _sync_client(self) -> Redis:
        if self._injected_client is not None:  # a RedisCluster has the same commands
            return cast("Redis", self._injected_client)
        if self.url is None:
            raise RuntimeError(
                "this RedisStore was given only async_client=: pass client= or a URL "
                "to use its sync methods"
            )
        with self._lock:
            if self._client is None:
                if self.cluster:
                    cluster = self._redis.cluster
                    nodes, kwargs = self._cluster_options(self._redis.retry.Retry)
                    client: Redis = cluster.RedisCluster(
                        startup_nodes=[cluster.ClusterNode(h, p) for h, p in nodes], **kwargs
                    )
                else:
                    client = self._redis.Redis.from_url(self.url, **self._options)
                    self._direct = _Direct.of(self._redis, client, keep=True)
                self._client = client
            return self._client

    def _cluster_options(self, retry: Any) -> tuple[list[tuple[str, int]], dict[str, Any]]:
        """Startup nodes and ``RedisCluster`` keyword arguments of the cluster URL: its
        credentials and query options (typed by redis-py's URL parser), TLS for
        ``rediss+cluster``, the store's options, and no cluster-level retries unless
        ``retry=`` is given (a command that lost its connection may have run: the caller
        fails closed)."""
        assert self.url is not None
        parts = urlsplit(self.url)
        userinfo = parts.netloc.rpartition("@")[0]
        one_node = urlunsplit(
            ("redis", (userinfo + "@" if userinfo else "") + "node", "/0", parts.query, "")
        )
        from_url: dict[str, Any] = dict(self._redis.connection.parse_url(one_node))
        for name in ("host", "port", "db"):
            from_url.pop(name, None)
        if parts.scheme.lower() == "rediss+cluster":
            from_url["ssl"] = True
        # As redis-py's from_url: the URL's options win over keyword arguments.
        kwargs = {"retry": retry(self._redis.backoff.NoBackoff(), 0), **self._options}
        return _cluster_nodes(self.url), {**kwargs, **from_url}

    async def _async_client(self) -> AsyncRedis | None:
        """This loop's async client (built on first use), or None: use the sync client."""
        if self._injected_async_client is not None:
            return cast("AsyncRedis", self._injected_async_client)
        if self.url is None:
            return None
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._loop_clients.get(loop)
            if entry is not None:
                return entry.client
            forget_closed_loops(self._loop_clients)
            if self.cluster:
                client: AsyncRedis = self._async_cluster_client()
            else:
                client = self._redis.asyncio.Redis.from_url(self.url, **self._options)
            entry = self._loop_clients[loop] = _LoopClient(client, _close_with_loop(client))
        await entry.closer.__anext__()  # runs to its `yield` now; the loop tracks it
        return client

    def _async_cluster_client(self) -> Any:
        """A ``redis.asyncio.cluster.RedisCluster`` of the cluster URL (not yet connected).
        An option it does not take (it has a fixed parameter list, unlike the sync client)
        is refused with ``ValueError`` naming it, never dropped."""
        import inspect

        cluster = self._redis.asyncio.cluster
        nodes, kwargs = self._cluster_options(self._redis.asyncio.retry.Retry)
        accepted = inspect.signature(cluster.RedisCluster).parameters
        refused = sorted(name for name in kwargs if name not in accepted)
        if refused:
            raise ValueError(
                f"redis.asyncio.cluster.RedisCluster does not take the option(s) {refused}: "
                "remove them from the store URL / arguments for async use"
            )
        return cluster.RedisCluster(
            startup_nodes=[cluster.ClusterNode(h, p) for h, p in nodes], **kwargs
        )

    def close(self) -> None:
        """Close the sync client the store built (it is rebuilt on next use) and forget
        async clients of closed loops. Async clients of live loops are closed by
        :meth:`aclose` on their loop, or when ``asyncio.run`` ends. Injected clients are
        left open."""
        with self._lock:
            client, self._client = self._client, None
            if self._injected_client is None:  # its spare connections close with the client
                self._direct = None
            forget_closed_loops(self._loop_clients)
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close this loop's async client and the sync client the store built (both are
        rebuilt on next use). Injected clients are left open."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._loop_clients.pop(loop, None)
            self._coalescers.pop(loop, None)  # the next call takes the slow path: a new client
        if entry is not None:
            await entry.closer.aclose()  # its `finally` closes the loop's client
        self.close()

    # -- running a call -----------------------------------------------------------------
    def _run(self, call: _Call[_T]) -> _T:
        script = call.script
        with self._connect_failures:
            direct = self._direct
            if (
                direct is not None
                and not (self.wait_replicas and call.wrote is not None)
                and direct.plain()
            ):
                return call.parse(direct.execute(script, call.argv()))
            client = self._sync_client()
            if self.wait_replicas and call.wrote is not None:
                return self._drive(client, self._waited(call))
            try:
                reply = client.evalsha(script.sha, *call.argv())
            except self._redis.exceptions.NoScriptError:
                reply = client.eval(script.source, *call.argv())
        return call.parse(reply)

    async def _arun(self, call: _Call[_T]) -> _T:
        # The fast path: this loop's single-node client is built and its coalescer set up
        # (registered below on the first call, dropped by aclose()), so no client lookup
        # under the lock nor cluster check (``isinstance`` of redis-py's RedisCluster, a
        # Protocol subclass, costs more than a claim's packing) per call.
        coalescer = self._coalescers.get(asyncio.get_running_loop())
        if coalescer is None or (self.wait_replicas and call.wrote is not None):
            return await self._arun_client(call)
        with self._connect_failures:
            reply = await coalescer.submit(call.command())
            if isinstance(reply, Exception):
                if not isinstance(reply, self._redis.exceptions.NoScriptError):
                    raise reply
                reply = await coalescer.client.eval(call.script.source, *call.argv())
        return call.parse(reply)

    async def _arun_client(self, call: _Call[_T]) -> _T:
        """:meth:`_arun` before this loop's coalescer exists (it is set up here for a
        single node), on a cluster, with ``wait_replicas``, or in a worker thread when the
        store has only a sync client."""
        client = await self._async_client()
        if client is None:
            return await asyncio.to_thread(self._run, call)
        script = call.script
        with self._connect_failures:
            cluster = isinstance(client, self._redis.asyncio.cluster.RedisCluster)
            if cluster:
                # Locked and a no-op once done. redis-py 8.1's lazy initialisation inside a
                # command lets concurrent first commands fail with "Connection closed by
                # server" (64 concurrent claims on a fresh client: several fail).
                await client.initialize()
            if self.wait_replicas and call.wrote is not None:
                return await self._adrive(client, self._waited(call))
            if cluster:
                try:
                    reply = await client.evalsha(script.sha, *call.argv())
                except self._redis.exceptions.NoScriptError:
                    reply = await client.eval(script.source, *call.argv())
            else:  # one pipeline per loop iteration for all concurrent calls
                loop = asyncio.get_running_loop()
                coalescer = self._coalescers.get(loop)
                if coalescer is None or coalescer.client is not client:
                    self._coalescers[loop] = _Coalescer(client)
                return await self._arun(call)  # now on the fast path
        return call.parse(reply)

    # -- WAIT: the script and WAIT pipelined on one connection of the key's master --------
    def _waited(self, call: _Call[_T]) -> _Waited[_T]:
        """The steps of ``call`` with ``wait_replicas`` (sans-I/O, run by :meth:`_drive`
        and :meth:`_adrive`): ``EVALSHA`` (``EVAL`` after ``NOSCRIPT``) and ``WAIT`` in one
        pipeline on one connection, since ``WAIT`` counts the writes of its own connection.
        ``MOVED`` reloads the slot map and ``ASK`` resends to the named node behind
        ``ASKING``: both mean the script did not run, so resending is safe. A write that
        fewer than ``wait_replicas`` replicas acknowledged raises ``StoreError``."""
        errors = self._redis.exceptions
        wait = ("WAIT", self.wait_replicas, max(1, round(self.wait_timeout * 1000)))
        use_eval = False
        node: tuple[str, int] | None = None
        for _ in range(_MAX_REDIRECTS):
            asking: tuple[tuple[Any, ...], ...] = (("ASKING",),) if node is not None else ()
            replies = yield _Batch(call.key, node, (*asking, call.command(use_eval), wait))
            assert replies is not None
            reply, acked = replies[-2], replies[-1]
            if isinstance(reply, errors.NoScriptError) and not use_eval:
                use_eval = True
            elif isinstance(reply, errors.MovedError):
                node = None
                yield _Refresh()
            elif isinstance(reply, errors.AskError):
                node = (str(reply.host), int(reply.port))
            elif isinstance(reply, BaseException):
                raise reply
            else:
                result = call.parse(reply)
                if isinstance(acked, BaseException):
                    raise acked
                assert call.wrote is not None
                if call.wrote(result):
                    self._check_replicated(acked)
                return result
        raise _redirected_too_often()

    def _drive(self, client: Any, steps: _Waited[_T]) -> _T:
        """Run :meth:`_waited`'s steps on the sync client (a failure propagates)."""

        def step(request: Any) -> Any:
            if isinstance(request, _Refresh):
                client.nodes_manager.initialize()
                return None
            return self._send_batch(client, request)

        return drive(steps, step, catch=())

    async def _adrive(self, client: Any, steps: _Waited[_T]) -> _T:
        """Run :meth:`_waited`'s steps on an async client (a failure propagates)."""

        async def step(request: Any) -> Any:
            if isinstance(request, _Refresh):
                await client.nodes_manager.initialize()
                return None
            return await self._asend_batch(client, request)

        return await adrive(steps, step, catch=())

    def _send_batch(self, client: Any, batch: _Batch) -> list[Any]:
        """Pipeline ``batch`` on one connection: of ``client`` itself, or of the cluster
        node it names. A lost connection reloads the cluster's slot map and propagates."""
        is_cluster = isinstance(client, self._redis.cluster.RedisCluster)
        target = client
        if is_cluster:
            node = (
                client.get_node(*batch.node)
                if batch.node is not None
                else client.get_node_from_key(batch.key)
            )
            if node is None:
                raise StoreError("Redis Cluster redirected to a node it does not list; retry")
            target = client.get_redis_connection(node)
        pipe = target.pipeline(transaction=False)
        for command in batch.commands:
            pipe.execute_command(*command)
        try:
            return list(pipe.execute(raise_on_error=False))
        except (self._redis.exceptions.ConnectionError, self._redis.exceptions.TimeoutError):
            if is_cluster:
                with contextlib.suppress(Exception):
                    client.nodes_manager.initialize()
            raise

    async def _asend_batch(self, client: Any, batch: _Batch) -> list[Any]:
        """Async :meth:`_send_batch`."""
        cluster = self._redis.asyncio.cluster
        if not isinstance(client, cluster.RedisCluster):
            pipe = client.pipeline(transaction=False)
            for command in batch.commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))
        node = (
            client.get_node(*batch.node)
            if batch.node is not None
            else client.get_node_from_key(batch.key)
        )
        if node is None:
            raise StoreError("Redis Cluster redirected to a node it does not list; retry")
        commands = [cluster.PipelineCommand(i, *c) for i, c in enumerate(batch.commands)]
        lost = (self._redis.exceptions.ConnectionError, self._redis.exceptions.TimeoutError)
        try:
            await node.execute_pipeline(commands)
            for command in commands:
                if isinstance(command.result, lost):
                    raise command.result
        except lost:
            with contextlib.suppress(Exception):
                await client.nodes_manager.initialize()
            raise
        return [command.result for command in commands]

    # -- capability: AtomicScripts (idempotence.stores.capabilities) --------------------
    def run_script(self, script: str, key: str, args: Sequence[str | bytes]) -> Any:
        """Run the Lua ``script`` atomically on ``key`` (the full Redis key) with ``ARGV =
        args`` through the store's client (``EVALSHA``, ``EVAL`` after ``NOSCRIPT``); the
        raw reply. See :class:`~idempotence.stores.capabilities.AtomicScripts`."""
        return self._run(_Call(_script(script), key, tuple(args), _raw, _always))

    async def arun_script(self, script: str, key: str, args: Sequence[str | bytes]) -> Any:
        """Async :meth:`run_script` (the loop's client, or the sync one in a thread)."""
        return await self._arun(_Call(_script(script), key, tuple(args), _raw, _always))

    # -- capability: Maintainable (idempotence.stores.capabilities) ----------------------
    def _maintenance_now(self) -> float:
        if self.clock is not None:
            return float(self.clock())
        seconds, micros = self._sync_client().time()
        return int(seconds) + int(micros) / 1e6

    def _scan_batches(self, namespace: str | None, batch_size: int) -> Iterator[list[Any]]:
        """The store's hash keys (under the prefix, and ``namespace#`` if given), in lists
        of at most ``batch_size`` (``SCAN ... MATCH ... COUNT ... TYPE hash``)."""
        head = self.prefix + ("" if namespace is None else namespace + "#")
        pattern = head.translate(_GLOB_SPECIAL) + "*"
        keys = self._sync_client().scan_iter(match=pattern, count=batch_size, _type="hash")
        return batches(keys, batch_size)

    def _fetch(self, keys: list[Any]) -> list[Record]:
        """The records of ``keys`` (full Redis keys), one pipelined round trip; keys that
        vanished or hold no record are left out."""
        pipe = self._sync_client().pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        records = []
        for key, fields in zip(keys, pipe.execute(), strict=True):
            flat = [x for pair in fields.items() for x in pair] if fields else []
            try:
                record = _record(_text(key)[len(self.prefix) :], flat)
            except (KeyError, ValueError):
                record = None  # not a record (another user of the prefix)
            if record is not None:
                records.append(record)
        return records

    def scan(
        self,
        *,
        namespace: str | None = None,
        status: Status | None = None,
        older_than: float | None = None,
        expired: bool = False,
        limit: int | None = None,
        batch_size: int = DEFAULT_BATCH,
    ) -> Iterator[Record]:
        """The matching records: ``SCAN`` over the prefix (and namespace), each batch of
        keys read with one pipelined round trip of ``HGETALL``. Records Redis already
        expired are gone. See :class:`~idempotence.stores.capabilities.Maintainable`."""
        now = self._maintenance_now()
        records = (
            r for keys in self._scan_batches(namespace, batch_size) for r in self._fetch(keys)
        )
        yield from matching(records, now, namespace, status, older_than, expired, limit)

    def purge(
        self,
        *,
        namespace: str | None = None,
        expired: bool = True,
        batch_size: int = DEFAULT_BATCH,
        progress: Progress | None = None,
    ) -> int:
        """Delete the matching records: ``SCAN`` in batches of ``batch_size`` keys, each
        batch deleted by one pipelined round trip of a per-key script that re-checks the
        key atomically (``UNLINK`` only if it still holds a record and, with ``expired``,
        its retention and lease have ended). Redis itself deletes records once their
        retention and lease end, so ``purge()`` rarely finds any. Returns how many were
        deleted."""
        client = self._sync_client()
        now = self._maintenance_now()
        client.script_load(_PURGE.source)
        flag = "1" if expired else "0"
        total = 0
        for keys in self._scan_batches(namespace, batch_size):
            if namespace is not None:  # exact namespace: no further '#' after it
                head = len(self.prefix) + len(namespace) + 1
                keys = [k for k in keys if "#" not in _text(k)[head:]]
            if not keys:
                continue
            if isinstance(client, self._redis.cluster.RedisCluster):
                # redis-py's cluster pipelines refuse EVALSHA: one script call per key.
                args = (repr(now), flag)
                deleted = sum(self._run(_Call(_PURGE, _text(k), args, int)) for k in keys)
            else:
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.evalsha(_PURGE.sha, 1, key, repr(now), flag)
                deleted = sum(int(n) for n in pipe.execute())
            total += deleted
            if deleted and progress is not None:
                progress(deleted)
        return total

    def stats(self) -> StoreStats:
        """Counts by status and namespace (one scan)."""
        now = self._maintenance_now()
        return stats_of(self.scan(), now)

    # -- calls (shared by the sync and async methods) ------------------------------------
    def _now(self) -> str:
        return "" if self.clock is None else repr(float(self.clock()))

    def _claim_op(self, key: str, fingerprint: str, lease: float, ttl: float) -> _Call[Claim]:
        args = (self._now(), fingerprint, repr(float(lease)), repr(float(ttl)))
        return _Call(SCRIPTS["claim"], self.prefix + key, args, _claim_parser(key), _acquired)

    def _complete_op(self, key: str, fence: int, result: bytes, ttl: float) -> _Call[bool]:
        args = (self._now(), str(int(fence)), bytes(result), repr(float(ttl)))
        return _Call(SCRIPTS["complete"], self.prefix + key, args, _flag, _truth)

    def _release_op(self, key: str, fence: int) -> _Call[bool]:
        args = (self._now(), str(int(fence)))
        return _Call(SCRIPTS["release"], self.prefix + key, args, _flag, _truth)

    def _renew_op(self, key: str, fence: int, lease: float) -> _Call[bool]:
        args = (self._now(), str(int(fence)), repr(float(lease)))
        return _Call(SCRIPTS["renew"], self.prefix + key, args, _flag, _truth)

    def _get_op(self, key: str) -> _Call[Record | None]:
        return _Call(SCRIPTS["get"], self.prefix + key, (self._now(),), lambda r: _record(key, r))

    def _delete_op(self, key: str) -> _Call[bool]:
        return _Call(SCRIPTS["delete"], self.prefix + key, (), _flag, _truth)

    # -- capability: BatchClaims (idempotence.stores.capabilities) ----------------------
    # One script call over the batch's keys; on a cluster one per hash slot, and the calls
    # of every slot a master owns pipelined in one write to that master (one round trip
    # per master involved, the masters written to before any reply is read).
    def _many(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[tuple[str | bytes, ...]],
        parse: Any,
        wrote: Callable[[Any], bool],
    ) -> list[_Call[list[Any]]]:
        """The batch script ``name`` over ``keys`` (with each key's ``args``): one call, or
        on a cluster one per hash slot. Each call's result is ``[(index, value)...]``; it
        wrote (``wait_replicas`` applies) when ``wrote`` holds for one of its values, as
        for the single operation (a batch that only replays does not wait)."""
        groups: dict[int, list[int]] = {}
        if self.cluster:
            key_slot = self._redis.crc.key_slot
            for i, key in enumerate(keys):
                groups.setdefault(key_slot((self.prefix + key).encode()), []).append(i)
        else:
            groups[0] = list(range(len(keys)))
        calls = []
        for indexes in groups.values():
            full = [self.prefix + keys[i] for i in indexes]
            flat = tuple(a for i in indexes for a in args[i])

            def parsed(reply: Any, indexes: list[int] = indexes) -> list[Any]:
                return [(i, parse(keys[i], r)) for i, r in zip(indexes, reply, strict=True)]

            def any_wrote(values: list[Any]) -> bool:
                return any(wrote(value) for _, value in values)

            calls.append(
                _Call(
                    SCRIPTS[name],
                    full[0],
                    (self._now(), *flat),
                    parsed,
                    any_wrote,
                    tuple(full[1:]),
                )
            )
        return calls

    def _claims(self, items: Sequence[tuple[str, str, float, float]]) -> list[_Call[list[Any]]]:
        args = [(fp, repr(float(lease)), repr(float(ttl))) for _, fp, lease, ttl in items]
        keys = [item[0] for item in items]
        return self._many("claim_many", keys, args, lambda k, r: _claim_parser(k)(r), _acquired)

    def _completes(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[_Call[list[Any]]]:
        args = [(str(int(f)), bytes(res), repr(float(ttl))) for _, f, res, ttl in items]
        keys = [item[0] for item in items]
        return self._many("complete_many", keys, args, lambda k, r: _flag(r), _truth)

    def _releases(self, items: Sequence[tuple[str, int]]) -> list[_Call[list[Any]]]:
        args = [(str(int(fence)),) for _, fence in items]
        keys = [item[0] for item in items]
        return self._many("release_many", keys, args, lambda k, r: _flag(r), _truth)

    def _run_many(self, calls: list[_Call[_T]]) -> list[_T]:
        """Run a batch's calls: on a cluster client all at once (:meth:`_scattered`), else
        each in turn (a single node has one call)."""
        with self._connect_failures:
            client = self._sync_client()
            if not isinstance(client, self._redis.cluster.RedisCluster):
                return [self._run(call) for call in calls]

            def step(request: Any) -> Any:
                if isinstance(request, _Refresh):
                    client.nodes_manager.initialize()
                    return None
                if isinstance(request, _Pause):
                    time.sleep(request.seconds)
                    return None
                return self._scatter(client, request)

            return drive(self._scattered(calls), step, catch=())

    async def _arun_many(self, calls: list[_Call[_T]]) -> list[_T]:
        """Async :meth:`_run_many` (the masters written to concurrently)."""
        client: Any = await self._async_client()
        if client is None:
            return await asyncio.to_thread(self._run_many, calls)
        if not isinstance(client, self._redis.asyncio.cluster.RedisCluster):
            return [await self._arun(call) for call in calls]

        async def step(request: Any) -> Any:
            if isinstance(request, _Refresh):
                await client.nodes_manager.initialize()
                return None
            if isinstance(request, _Pause):
                await asyncio.sleep(request.seconds)
                return None
            return await self._ascatter(client, request)

        with self._connect_failures:
            await client.initialize()  # locked, a no-op once done (see _arun)
            return await adrive(self._scattered(calls), step, catch=())

    def _scattered(self, calls: Sequence[_Call[_T]]) -> _Scattered[list[_T]]:
        """The steps of a cluster batch's ``calls`` (one per hash slot; sans-I/O, run by
        :meth:`_run_many` / :meth:`_arun_many`): each round sends every call not yet
        answered, pipelined per master (:class:`_Scatter`), with one ``WAIT`` per master
        when ``wait_replicas`` is set. A call is sent again only when its script did not
        run: ``NOSCRIPT`` (then ``EVAL``), ``MOVED`` (after reloading the slot map),
        ``ASK`` (to the named node, behind ``ASKING``), ``TRYAGAIN`` (after a pause). A
        lost connection is not retried: its scripts may have run, and a claim run again
        would answer its own caller "in progress", a complete or release ``False``; it
        fails the whole batch (``StoreError``), as does any other error reply, or a write
        that fewer than ``wait_replicas`` replicas acknowledged."""
        errors = self._redis.exceptions
        wait = None
        if self.wait_replicas:
            wait = ("WAIT", self.wait_replicas, max(1, round(self.wait_timeout * 1000)))
        use_eval = [False] * len(calls)
        asked: list[tuple[str, int] | None] = [None] * len(calls)
        done: dict[int, _T] = {}
        for _ in range(_MAX_REDIRECTS):
            todo = [i for i in range(len(calls)) if i not in done]
            batches = []
            for i in todo:
                asking: tuple[tuple[Any, ...], ...] = (("ASKING",),) if asked[i] else ()
                command = calls[i].command(use_eval[i])
                batches.append(_Batch(calls[i].key, asked[i], (*asking, command)))
            replies = yield _Scatter(tuple(batches), wait)
            assert replies is not None
            refresh = pause = False
            for i, got in zip(todo, replies, strict=True):
                reply = got[-2] if wait is not None else got[-1]
                if isinstance(reply, errors.NoScriptError) and not use_eval[i]:
                    use_eval[i] = True
                elif isinstance(reply, errors.MovedError):  # (a subclass of AskError)
                    asked[i], refresh = None, True
                elif isinstance(reply, errors.AskError):
                    asked[i] = (str(reply.host), int(reply.port))
                elif isinstance(reply, errors.TryAgainError):
                    pause = True
                elif isinstance(reply, BaseException):
                    raise reply
                else:
                    result = calls[i].parse(reply)
                    wrote = calls[i].wrote
                    if wait is not None and wrote is not None and wrote(result):
                        self._check_replicated(got[-1])
                    done[i] = result
            if len(done) == len(calls):
                return [done[i] for i in range(len(calls))]
            if refresh:
                yield _Refresh()
            if pause:
                yield _Pause(0.05)
        raise _redirected_too_often()

    def _check_replicated(self, acked: Any) -> None:
        """Raise unless ``WAIT`` answered ``acked`` >= ``wait_replicas``."""
        if isinstance(acked, BaseException):
            raise acked
        if int(acked) < self.wait_replicas:
            raise StoreError(
                f"Redis applied the write on the primary, but only {int(acked)} of "
                f"the {self.wait_replicas} replica(s) asked for (wait_replicas) "
                f"acknowledged it within {self.wait_timeout:g} s: a failover could "
                "lose it, so it counts as failed. Check the replicas (INFO "
                "replication), or raise wait_timeout / lower wait_replicas."
            )

    def _scatter(self, client: Any, scatter: _Scatter) -> list[list[Any]]:
        """Send ``scatter`` on the sync cluster ``client``: a connection to each node taken
        (connected) first, then one write to each, then each node's replies read, so the
        nodes work concurrently without threads. A failure drops every connection whose
        replies were not all read; a lost connection also reloads the slot map."""
        groups = _by_node(client, scatter)
        taken: list[tuple[Any, Any, list[Any]]] = []  # (pool, connection, commands)
        replies: list[list[Any]] = []
        try:
            for node, _indexes, commands in groups:
                pool = client.get_redis_connection(node).connection_pool
                taken.append((pool, pool.get_connection(), commands))
            for _pool, connection, commands in taken:
                connection.send_packed_command(connection.pack_commands(commands))
            for _pool, connection, commands in taken:
                replies.append(_read_replies(connection, len(commands)))
        except BaseException as exc:
            for _pool, connection, _commands in taken[len(replies) :]:
                connection.disconnect()
            lost = (self._redis.exceptions.ConnectionError, self._redis.exceptions.TimeoutError)
            if isinstance(exc, lost):
                with contextlib.suppress(Exception):
                    client.nodes_manager.initialize()
            raise
        finally:
            for pool, connection, _commands in taken:
                pool.release(connection)
        return _per_batch(scatter, groups, replies)

    async def _ascatter(self, client: Any, scatter: _Scatter) -> list[list[Any]]:
        """Async :meth:`_scatter`: one task per node (``asyncio.gather``); every node's
        pipeline ends before a failure is raised."""
        groups = _by_node(client, scatter)
        outcomes = await asyncio.gather(
            *(_anode_pipeline(node, commands) for node, _indexes, commands in groups),
            return_exceptions=True,
        )
        replies: list[list[Any]] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                lost = (self._redis.exceptions.ConnectionError, self._redis.exceptions.TimeoutError)
                if isinstance(outcome, lost):
                    with contextlib.suppress(Exception):
                        await client.nodes_manager.initialize()
                raise outcome
            replies.append(outcome)
        return _per_batch(scatter, groups, replies)

    @staticmethod
    def _merged(n: int, parts: Sequence[list[Any]]) -> list[Any]:
        out: list[Any] = [None] * n
        for part in parts:
            for i, value in part:
                out[i] = value
        return out

    def claim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Claim]:
        """Claim every ``(key, fingerprint, lease, ttl)`` in one script (on a cluster one
        per hash slot, pipelined per master: one round trip per master). See
        :class:`~idempotence.stores.capabilities.BatchClaims`."""
        return self._merged(len(items), self._run_many(self._claims(items)))

    def complete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[bool]:
        """Complete every ``(key, fence, result, ttl)`` in one script (per hash slot,
        pipelined per master)."""
        return self._merged(len(items), self._run_many(self._completes(items)))

    def release_many(self, items: Sequence[tuple[str, int]]) -> list[bool]:
        """Release every ``(key, fence)`` in one script (per hash slot, pipelined per
        master)."""
        return self._merged(len(items), self._run_many(self._releases(items)))

    async def aclaim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Claim]:
        """Async :meth:`claim_many` (the masters written to concurrently)."""
        return self._merged(len(items), await self._arun_many(self._claims(items)))

    async def acomplete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[bool]:
        """Async :meth:`complete_many`."""
        return self._merged(len(items), await self._arun_many(self._completes(items)))

    async def arelease_many(self, items: Sequence[tuple[str, int]]) -> list[bool]:
        """Async :meth:`release_many`."""
        return self._merged(len(items), await self._arun_many(self._releases(items)))
