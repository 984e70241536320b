"""``CachePersistenceLayer`` (``RedisCachePersistenceLayer``): a store over Powertools'
Redis record layout.

One Redis string per key, holding a JSON object (attribute names configurable)::

    {"status": "INPROGRESS" | "COMPLETED", "expiration": <epoch s>,
     "in_progress_expiration": <epoch ms>, "data": "<response JSON text>",
     "validation": "<hash>", "idempotence_fence": <int>}

``idempotence_fence`` (ignored by Powertools) is our fence; a result that is not JSON text
is kept base64 in ``idempotence_result`` under status ``COMPLETED_RAW`` (Powertools refuses
it with ``IdempotencyInvalidStatusError`` rather than replay something else). Every
operation is one Lua script on the server, using the client's clock (as Powertools does).

Powertools claims with ``SET NX``; it overwrites an expired or lapsed record only after
taking ``{key}:lock`` (``SET NX EX 10``). Our take-overs honour that lock and take it too
(value ``idempotence``), so a Powertools take-over and ours exclude each other; a lock we
left does not stop our own next take-over. In ``mode="cluster"`` the lock lives in another
hash slot than the record, so it is neither read nor written: a take-over by Powertools
racing ours is then not excluded (fresh claims and live records still are).

One file (over 400 lines): the Lua scripts and the layer that runs them both encode the same
Powertools record layout (its configurable attribute names), which is all this module is.

Twin kept: :class:`CachePersistenceLayer`'s connection arguments repeat
:class:`RedisConnection`'s: both mirror Powertools' public signatures as they are.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, ClassVar, Literal, Protocol

from ..._errors import CorruptRecordError, MissingDependencyError
from ..._record import Claim, Record, Status
from ...stores import Clock, fresh_fence, system_clock
from ._persistence import VALUE_HEAD, BasePersistenceLayer
from .exceptions import IdempotencyPersistenceConfigError

__all__ = [
    "CacheClientProtocol",
    "CacheConnection",
    "CachePersistenceLayer",
    "RedisCachePersistenceLayer",
    "RedisClientProtocol",
    "RedisConnection",
]

#: Physical life of a record past its logical expiry, so its fence outlives it (only with
#: the default ``expiry_attr``: Powertools reads expiry from ``expiration`` alone and would
#: otherwise replay a logically expired record during that time).
GRACE_MS = 3600 * 1000

# ARGV: now, now_ms, fingerprint, validate, S, E, IP, V, F, new_exp, new_ip, fresh, px
_CLAIM = """
local now, now_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local fp, validate = ARGV[3], ARGV[4] == '1'
local S, E, IP, V, F = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local fence = tonumber(ARGV[12])
local raw = redis.call('GET', KEYS[1])
if raw then
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' then return {0, raw} end
  local exp = tonumber(rec[E] or rec['expiration'])
  if exp == nil or exp > now then
    local ip = tonumber(rec[IP])
    local lapsed = rec[S] == 'INPROGRESS' and ip ~= nil and ip <= now_ms
    if lapsed and validate and rec[V] ~= fp then lapsed = false end
    if not lapsed then return {0, raw} end
  end
  if tonumber(rec[F]) then fence = tonumber(rec[F]) + 1 end
  if KEYS[2] then
    local lock = redis.call('GET', KEYS[2])
    if lock and lock ~= 'idempotence' then
      return {2, raw, redis.call('PTTL', KEYS[2])}
    end
    redis.call('SET', KEYS[2], 'idempotence', 'EX', 10)
  end
end
local rec = {}
rec[S] = 'INPROGRESS'
rec[E] = tonumber(ARGV[10])
rec[IP] = tonumber(ARGV[11])
rec[F] = fence
if validate then rec[V] = fp end
local out = cjson.encode(rec)
redis.call('SET', KEYS[1], out, 'PX', tonumber(ARGV[13]))
return {1, out}
"""

# ARGV: now, fence, S, E, F ; then the operation's own
_OWNED = """
local now, fence = tonumber(ARGV[1]), tonumber(ARGV[2])
local S, E, F = ARGV[3], ARGV[4], ARGV[5]
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, rec = pcall(cjson.decode, raw)
if not ok or type(rec) ~= 'table' then return 0 end
if tonumber(rec[F]) ~= fence or rec[S] ~= 'INPROGRESS' then return 0 end
local exp = tonumber(rec[E] or rec['expiration'])
if exp ~= nil and exp <= now then return 0 end
"""

# ARGV 6..: D, R, status, new_exp, data-or-raw, px
_COMPLETE = (
    _OWNED
    + """
local D, R = ARGV[6], ARGV[7]
rec[S] = ARGV[8]
rec[E] = tonumber(ARGV[9])
if ARGV[8] == 'COMPLETED' then rec[D] = ARGV[10]; rec[R] = nil
else rec[R] = ARGV[10]; rec[D] = nil end
redis.call('SET', KEYS[1], cjson.encode(rec), 'PX', tonumber(ARGV[11]))
return 1
"""
)

# ARGV 6..: IP, end_s, end_ms
_RELEASE = (
    _OWNED
    + """
rec[E] = tonumber(ARGV[7])
rec[ARGV[6]] = tonumber(ARGV[8])
redis.call('SET', KEYS[1], cjson.encode(rec), 'KEEPTTL')
return 1
"""
)

# ARGV 6..: IP, new_ip, min_exp, px
_RENEW = (
    _OWNED
    + """
rec[ARGV[6]] = tonumber(ARGV[7])
if exp == nil or exp < tonumber(ARGV[8]) then rec[E] = tonumber(ARGV[8]) end
local px = math.max(redis.call('PTTL', KEYS[1]), tonumber(ARGV[9]))
redis.call('SET', KEYS[1], cjson.encode(rec), 'PX', px)
return 1
"""
)


class RedisClientProtocol(Protocol):
    """What a Redis client passed as ``client=`` offers (``redis.Redis``,
    ``redis.cluster.RedisCluster``): this layer runs Lua scripts, so it needs
    ``register_script`` besides Powertools' ``get``/``set``/``delete``."""

    def get(self, name: Any) -> Any: ...

    def delete(self, *names: Any) -> Any: ...

    def register_script(self, script: str) -> Any: ...


class RedisConnection:
    """Powertools' connection settings, turned into a client by :meth:`_init_client`."""

    def __init__(
        self,
        url: str = "",
        host: str = "",
        port: int = 6379,
        username: str = "",
        password: str = "",
        db_index: int = 0,
        mode: Literal["standalone", "cluster"] = "standalone",
        ssl: bool = True,
    ) -> None:
        self.url, self.host, self.port = url, host, port
        self.username, self.password, self.db_index = username, password, db_index
        self.mode, self.ssl = mode, ssl

    def _init_client(self) -> Any:
        if self.mode not in ("standalone", "cluster"):
            raise IdempotencyPersistenceConfigError(f"Mode {self.mode} not supported")
        try:
            import redis
            import redis.cluster
        except ImportError as exc:
            raise MissingDependencyError(
                "'redis' is not installed, and CachePersistenceLayer needs it: "
                "pip install 'idempotence[redis]'"
            ) from exc
        cls: Any = redis.Redis if self.mode == "standalone" else redis.cluster.RedisCluster
        if self.url:
            return cls.from_url(url=self.url)
        extra = {"db": self.db_index} if self.mode == "standalone" else {}
        return cls(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            decode_responses=True,
            ssl=self.ssl,
            **extra,
        )


#: Powertools' newer names of the two classes above.
CacheClientProtocol = RedisClientProtocol
CacheConnection = RedisConnection


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


class CachePersistenceLayer(BasePersistenceLayer):
    """Powertools' ``CachePersistenceLayer`` / ``RedisCachePersistenceLayer`` (same
    arguments), as an :class:`idempotence.stores.Store` over the same Redis records:
    Powertools' records are replayed or respected and ours replayed by Powertools.

    Connection: ``client`` (a ``redis.Redis`` / ``RedisCluster``), or ``url``, or
    ``host``/``port``/``username``/``password``/``db_index``/``ssl`` (default ``True``,
    as in Powertools), ``mode`` ``"standalone"`` or ``"cluster"``. ``fence_attr`` and
    ``raw_result_attr`` name the two fields only this library reads; ``clock`` is for
    tests.
    """

    max_result_bytes: ClassVar[int] = 64 * 1024 * 1024

    def __init__(
        self,
        url: str = "",
        host: str = "",
        port: int = 6379,
        username: str = "",
        password: str = "",
        db_index: int = 0,
        mode: Literal["standalone", "cluster"] = "standalone",
        ssl: bool = True,
        client: Any = None,
        in_progress_expiry_attr: str = "in_progress_expiration",
        expiry_attr: str = "expiration",
        status_attr: str = "status",
        data_attr: str = "data",
        validation_key_attr: str = "validation",
        *,
        fence_attr: str = "idempotence_fence",
        raw_result_attr: str = "idempotence_result",
        clock: Clock | None = None,
    ) -> None:
        if client is None:
            client = RedisConnection(
                url=url,
                host=host,
                port=port,
                username=username,
                password=password,
                db_index=db_index,
                mode=mode,
                ssl=ssl,
            )._init_client()
        elif mode not in ("standalone", "cluster"):
            raise IdempotencyPersistenceConfigError(f"Mode {mode} not supported")
        self.client = client
        self.mode = mode
        self.in_progress_expiry_attr = in_progress_expiry_attr
        self.expiry_attr = expiry_attr
        self.status_attr = status_attr
        self.data_attr = data_attr
        self.validation_key_attr = validation_key_attr
        self.fence_attr = fence_attr
        self.raw_result_attr = raw_result_attr
        self._clock = clock or system_clock
        self._grace = GRACE_MS if expiry_attr == "expiration" else 0
        self._scripts: dict[str, Any] = {}
        super().__init__()

    def __repr__(self) -> str:
        return f"CachePersistenceLayer(mode={self.mode!r})"

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    def _keys(self, key: str) -> list[str]:
        return [key, f"{key}:lock"] if self.mode == "standalone" else [key]

    def _record(self, key: str, raw: Any, now: float, claimant: str | None = None) -> Record:
        try:
            rec = json.loads(_text(raw))
            status_text = rec[self.status_attr]
            exp = rec.get(self.expiry_attr, rec.get("expiration"))
            expires_at = float(exp) if exp is not None else now + 3600.0
            ip = rec.get(self.in_progress_expiry_attr)
            lease = float(ip) / 1000 if ip is not None else expires_at
            fence = int(rec.get(self.fence_attr) or 0)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptRecordError(
                f"an idempotency record in Redis is not Powertools' JSON ({type(exc).__name__})"
                "; delete it to let the function run again"
            ) from exc
        result: bytes | None = None
        if status_text == "INPROGRESS":
            status = Status.IN_PROGRESS
        elif status_text in ("COMPLETED", "COMPLETED_RAW"):
            status = Status.COMPLETED
            try:
                if status_text == "COMPLETED_RAW":
                    result = base64.b64decode(rec[self.raw_result_attr], validate=True)
                elif isinstance(rec.get(self.data_attr), str):
                    result = VALUE_HEAD + rec[self.data_attr].encode("utf-8", "surrogatepass")
            except (KeyError, TypeError, binascii.Error) as exc:
                raise CorruptRecordError(
                    "a completed idempotency record in Redis has an unreadable result; "
                    "delete it to let the function run again"
                ) from exc
        else:
            raise CorruptRecordError(
                "an idempotency record in Redis has an unknown status; delete it to let "
                "the function run again"
            )
        fingerprint = "-"
        if self.payload_validation_enabled:
            fingerprint = rec.get(self.validation_key_attr) or ""
            if not fingerprint and status is Status.COMPLETED and claimant is not None:
                # Powertools' completion drops the validation hash: nothing to compare.
                fingerprint = claimant
        return Record(key, status, fingerprint, fence, lease, expires_at, result)

    def _px(self, until: float, now: float) -> int:
        return max(1, math.ceil((until - now) * 1000) + self._grace)

    # -- operations --------------------------------------------------------------------
    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        now = self._clock()
        until = now + max(ttl, lease)
        args = [
            repr(now),
            repr(now * 1000),
            fingerprint,
            "1" if self.payload_validation_enabled else "0",
            self.status_attr,
            self.expiry_attr,
            self.in_progress_expiry_attr,
            self.validation_key_attr,
            self.fence_attr,
            math.ceil(until),
            math.ceil((now + lease) * 1000),
            fresh_fence(now),
            self._px(until, now),
        ]
        answer = self._script(_CLAIM)(keys=self._keys(key), args=args)
        outcome = int(answer[0])
        record = self._record(key, answer[1], now, fingerprint)
        if outcome == 1:
            return Claim(True, record, now)
        if outcome == 2:  # a Powertools take-over holds the lock: in progress until it ends
            busy_until = now + max(int(answer[2]), 0) / 1000
            record = Record(key, Status.IN_PROGRESS, fingerprint, 0, busy_until, busy_until)
        return Claim(False, record, now)

    def _owned(self, fence: int, now: float) -> list[Any]:
        return [repr(now), fence, self.status_attr, self.expiry_attr, self.fence_attr]

    def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        now = self._clock()
        text: str | None = None
        if result.startswith(VALUE_HEAD):
            try:
                text = result[len(VALUE_HEAD) :].decode("utf-8")
            except UnicodeDecodeError:
                text = None
        status, body = (
            ("COMPLETED", text)
            if text is not None
            else ("COMPLETED_RAW", base64.b64encode(result).decode("ascii"))
        )
        args = [
            *self._owned(fence, now),
            self.data_attr,
            self.raw_result_attr,
            status,
            math.ceil(now + ttl),
            body,
            self._px(now + ttl, now),
        ]
        return bool(self._script(_COMPLETE)(keys=[key], args=args))

    def release(self, key: str, fence: int) -> bool:
        now = self._clock()
        args = [
            *self._owned(fence, now),
            self.in_progress_expiry_attr,
            math.floor(now),
            math.floor(now * 1000),
        ]
        return bool(self._script(_RELEASE)(keys=[key], args=args))

    def renew(self, key: str, fence: int, *, lease: float) -> bool:
        now = self._clock()
        args = [
            *self._owned(fence, now),
            self.in_progress_expiry_attr,
            math.ceil((now + lease) * 1000),
            math.ceil(now + lease),
            self._px(now + lease, now),
        ]
        return bool(self._script(_RENEW)(keys=[key], args=args))

    def get(self, key: str) -> Record | None:
        raw = self.client.get(key)
        if raw is None:
            return None
        now = self._clock()
        record = self._record(key, raw, now)
        return None if record.is_expired(now) else record

    def delete(self, key: str) -> bool:
        return bool(self.client.delete(key))

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if callable(close):
            close()


#: Powertools' older (deprecated) name of :class:`CachePersistenceLayer`.
RedisCachePersistenceLayer = CachePersistenceLayer
