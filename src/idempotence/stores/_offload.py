"""Large results: compression, and offloading to Amazon S3, around any store.

:class:`LargeResultStore` wraps a store. On ``complete`` it:

1. compresses a result longer than ``compress_over`` bytes (zlib, when that makes it
   smaller);
2. if it is still longer than ``offload_over`` (or the wrapped store refuses it with
   :class:`~idempotence.ResultTooLargeError`), uploads it to S3 and keeps in the record a
   pointer (bucket, object key, size, SHA-256 of the object);
3. refuses a result longer than ``max_offload_bytes`` with ``ResultTooLargeError`` before
   anything is written (the protocol then completes the key as "result not stored").

Reads (``claim`` returning a completed record, ``get``) turn the stored bytes back into the
encoded result: decompress, or fetch the object (one S3 ``GetObject``), check its size and
checksum and decompress it. ``delete`` deletes the object too.

Batches (the ``BatchClaims`` capability, when the wrapped store has it): ``complete_many``
encodes every result as ``complete`` does (uploads first, concurrently when async), then
completes them all in one ``complete_many`` of the wrapped store; ``claim_many`` is the
wrapped store's, each completed record read back as ``claim`` reads it (the ``GetObject``
requests concurrently when async).

Stored bytes are self-describing (the first byte of a plain encoded result is the envelope
version, 1; a frame of this module starts with 2)::

    \\x02 Z <zlib stream of the encoded result>
    \\x02 S <JSON pointer: {"bucket", "key", "sha256", "size"}>
    \\x02 R <a result that itself starts with byte 2, kept as it is>

so records written before (or without) the wrapper read as they are, and results stay
opaque bytes (the library's own never start with 2; any other caller's are escaped).

The object key is ``<prefix><sha256 of the idempotency key>/<fence>``: each claim of a key
has a fence of its own, so a successor's object never overwrites its predecessor's, and a
late owner whose ``complete`` is refused deletes only the object it uploaded itself.
Objects whose record is gone without ``delete`` (retention ended, ``purge()``, a backend
TTL, a take-over of an expired record) are left to an S3 lifecycle expiration rule on the
prefix (see ``docs/stores.md``, "Large results").

One file (over 400 lines): :class:`LargeResultStore` (about 600 lines) and the capability
mixins that forward the wrapped store's capabilities share its private request types and
drivers.

Twins kept: the public operations and their ``a``-twins are one line each around the shared
programs (``_claim``, ``_complete``, ``_get``, ``_delete``, ``_claim_many``,
``_complete_many``) run by ``_run`` / ``_arun`` (and ``_settle`` / ``_asettle``, which run
the sub-programs of an ``_Each`` one after the other or concurrently);
unlike ``OperationStore`` (the network stores' shared operations) they keep their own
docstrings (what the wrapper adds), and ``release``/``renew``/``release_many`` call the
wrapped store directly. The ``_Maintained`` methods restate
:class:`~idempotence.stores.capabilities.Maintainable`'s signatures to forward them.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import re
import threading
import weakref
import zlib
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Final, NamedTuple
from urllib.parse import unquote, urlsplit

from .._drive import adrive, drive
from .._errors import CorruptRecordError, IdempotencyError, ResultTooLargeError, StoreError
from .._lazy import require
from .._record import Claim, Record, Status
from ._base import Store, _socket_cause, _to_thread, forget_closed_loops
from ._maintenance import Progress, StoreStats

__all__ = ["LargeResultStore", "parse_offload_url"]

KiB: Final = 1024
MiB: Final = 1024 * KiB

#: First byte of a frame written by this module (a plain encoded result starts with 1).
FRAME: Final = 2
ZLIB: Final = ord("Z")
S3: Final = ord("S")
RAW: Final = ord("R")
_FRAME_HEAD: Final = bytes((FRAME,))
_ZLIB_HEAD: Final = bytes((FRAME, ZLIB))
_S3_HEAD: Final = bytes((FRAME, S3))
_RAW_HEAD: Final = bytes((FRAME, RAW))

DEFAULT_COMPRESS_OVER: Final = 8 * KiB
DEFAULT_OFFLOAD_OVER: Final = 256 * KiB
DEFAULT_MAX_OFFLOAD_BYTES: Final = 100 * MiB
#: A compressed result is read back up to this many times the store's current
#: ``max_result_bytes`` (room for records written under a higher limit; beyond it a stream is
#: refused as corrupt instead of filling memory).
_INFLATE_FACTOR: Final = 4

_FORGET = (
    "The function is not run again; forget the key (`.forget(...)` or `idempotence forget`) "
    "to let it run."
)


class _StoreOp(NamedTuple):
    """Call ``<wrapped store>.<name>(*args, **kwargs)`` (``a<name>`` when async)."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _S3Op(NamedTuple):
    """One S3 request: ``_<action>(*args)`` (sync, boto3), ``_a<action>(*args)`` (async,
    aiobotocore) or the sync one in a worker thread (async without aiobotocore, or with a
    given boto3 client). Actions: ``put``, ``fetch``, ``remove``."""

    action: str
    args: tuple[Any, ...]


class _Each(NamedTuple):
    """Run every program to its end: one after the other (sync) or concurrently (async).
    Sent back: each one's return value, or the exception it raised, in order."""

    programs: tuple[Generator[Any, Any, Any], ...]


_Op = _StoreOp | _S3Op | _Each
_Program = Generator[_Op, Any, Any]


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_offload_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket/prefix``; ``ValueError`` when it is not one.
    The prefix gets a trailing ``/`` when it has none (empty: the bucket's root)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            "offload must be an S3 location 's3://bucket/prefix' (no query or fragment)"
        )
    if not _BUCKET.match(parts.netloc):
        raise ValueError(
            "offload must name an S3 bucket (3-63 lowercase letters, digits, '.' and '-') "
            "as 's3://bucket/prefix'"
        )
    prefix = unquote(parts.path).lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return parts.netloc, prefix


def _is_missing(exc: Exception) -> bool:
    """The S3 error of an object that does not exist (``NoSuchKey``)."""
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code in {"NoSuchKey", "404", "NotFound"}


_HAS_AIOBOTOCORE: Final = importlib.util.find_spec("aiobotocore") is not None


def _framed(claim: Any) -> bool:
    """Whether a claim returned an existing record whose stored result is a frame of this
    module (to read back)."""
    if not isinstance(claim, Claim) or claim.acquired:
        return False
    result = claim.record.result
    return result is not None and result[:1] == _FRAME_HEAD


def _size_option(name: str, value: Any, *, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative whole number of bytes")
    return value


class LargeResultStore(Store):
    """A store that compresses large results and offloads very large ones to S3.

    ``store`` is the store that keeps the records (any :class:`Store`). ``offload`` is an S3
    location ``"s3://bucket/prefix"`` (``None``: compress only). Sizes are in bytes, of the
    encoded result:

    ``compress_over`` (8 KiB)
        longer results are zlib-compressed, when that makes them smaller.
    ``offload_over`` (``None``: 256 KiB, or the store's ``max_result_bytes`` if lower)
        longer results (after compression) go to S3; so does a result the store refuses
        with :class:`~idempotence.ResultTooLargeError` (e.g. over DynamoDB's 400 KB item).
    ``max_offload_bytes`` (100 MiB)
        longer results are refused (:class:`~idempotence.ResultTooLargeError` from
        ``complete``; through :class:`~idempotence.Idempotency` the key completes as
        "result not stored" and the caller and every duplicate get
        :class:`~idempotence.ResultNotStoredError`; the function never runs twice). It is
        this store's :attr:`max_result_bytes` when ``offload`` is set.

    ``s3_client`` is a boto3 S3 client to use (the store never closes it); otherwise one is
    made on first use from ``region``/``endpoint_url`` and the default credential chain
    (needs boto3: ``pip install 'idempotence[s3]'``). Async methods run the wrapped
    store's async twins, and the S3 requests on an aiobotocore client per event loop when
    aiobotocore is installed (``idempotence[dynamodb-async]``) and no ``s3_client`` was
    given, otherwise the boto3 requests in a worker thread. Sync and async run the same
    request programs.

    Requests: a result kept inline costs what the wrapped store costs; an offloaded one
    adds one ``PutObject`` on ``complete`` and one ``GetObject`` on each replay; ``delete``
    reads the record first (one more store request) to find its object. A batch
    (``claim_many``, ``complete_many``, ``release_many``) costs what the wrapped store's
    batch costs, plus those S3 requests for its offloaded results.

    Permissions: ``s3:PutObject``, ``s3:GetObject`` and ``s3:DeleteObject`` on
    ``arn:aws:s3:::bucket/prefix*``.

    Capabilities: the instance offers exactly those of
    :mod:`idempotence.stores.capabilities` that ``store`` offers (its class is a subclass
    made for that set), plus ``store``'s ``auto_create`` switch, ``create_table`` and
    ``clock``. Its ``purge`` also deletes the S3 objects of the purged records; its
    ``BatchClaims`` methods compress and offload each result as ``complete`` does and read
    back each completed record as ``claim`` does (a result refused for its size, or an S3
    failure of one item, is returned in that item's place). With a Redis store,
    ``prefix`` is the Redis key prefix; the S3 one is :attr:`offload_prefix`.
    """

    def __new__(cls, store: Store, *args: Any, **kwargs: Any) -> LargeResultStore:
        # ``LargeResultStore(store)`` is an instance of the subclass with exactly ``store``'s
        # capabilities (see _wrapper_class); a subclass of a user's is made as it is.
        target = _wrapper_class(store) if cls is LargeResultStore else cls
        return super().__new__(target)

    def __init__(
        self,
        store: Store,
        offload: str | None = None,
        *,
        compress_over: int = DEFAULT_COMPRESS_OVER,
        offload_over: int | None = None,
        max_offload_bytes: int = DEFAULT_MAX_OFFLOAD_BYTES,
        s3_client: Any = None,
        region: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        if not isinstance(store, Store):
            raise TypeError(f"store must be a Store, got {type(store).__name__}")
        self.store = store
        self.compress_over: int = _size_option("compress_over", compress_over)
        self.max_offload_bytes: int = _size_option("max_offload_bytes", max_offload_bytes)
        given = _size_option("offload_over", offload_over, allow_none=True)
        self.offload_over: int = (
            given if given is not None else min(DEFAULT_OFFLOAD_OVER, store.max_result_bytes)
        )
        self.bucket: str | None = None
        #: The object key prefix in :attr:`bucket` (``prefix`` is the wrapped Redis store's
        #: key prefix when it has one: see :class:`LargeResultStore`).
        self.offload_prefix = ""
        if offload is not None:
            self.bucket, self.offload_prefix = parse_offload_url(offload)
        self._limit = max_offload_bytes if offload is not None else store.max_result_bytes
        self._client = s3_client
        self._own_client = s3_client is None
        self._client_pid = os.getpid()
        self._session: Any = None
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._region = region
        self._endpoint_url = endpoint_url
        self._lock = threading.Lock()

    # The interface's limit is this instance's (a wrapped store's or max_offload_bytes).
    @property
    def max_result_bytes(self) -> int:  # type: ignore[override]
        """Largest encoded result kept: ``max_offload_bytes`` when offloading, otherwise
        the wrapped store's."""
        return self._limit

    @property
    def uses_client_clock(self) -> bool:  # type: ignore[override]
        """The wrapped store's."""
        return self.store.uses_client_clock

    def __repr__(self) -> str:
        where = f"s3://{self.bucket}/{self.offload_prefix}" if self.bucket is not None else None
        return f"LargeResultStore({self.store!r}, offload={where!r})"

    # -- S3 ----------------------------------------------------------------------------
    def s3_client(self) -> Any:
        """The boto3 S3 client: the given one, or one made on first use (again after a
        fork)."""
        if not self._own_client:
            return self._client
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                boto3 = require("boto3", "s3")
                session = boto3.session.Session()  # own session: nothing shared, fork-safe
                self._client = session.client(
                    "s3",
                    region_name=self._region,
                    endpoint_url=self._endpoint_url,
                    config=self._config(aio=False),
                )
                self._client_pid = os.getpid()
            return self._client

    def _config(self, *, aio: bool) -> Any:
        if aio:
            config_class = require("aiobotocore.config", "dynamodb-async").AioConfig
        else:
            config_class = require("botocore.config", "s3").Config
        return config_class(
            connect_timeout=3,
            read_timeout=30,
            retries={"total_max_attempts": 3, "mode": "standard"},
            max_pool_connections=32,
        )

    # Async: one aiobotocore client per running event loop (as DynamoDBStore), closed with
    # the loop; without aiobotocore, or with a given boto3 client, the sync requests run in
    # a worker thread.
    async def _as3(self, op: _S3Op) -> Any:
        if not self._own_client or not _HAS_AIOBOTOCORE:
            return await _to_thread(getattr(self, "_" + op.action), *op.args)
        client = await self._async_client()
        return await getattr(self, "_a" + op.action)(client, *op.args)

    async def _open_async_client(self) -> tuple[Any, AsyncGenerator[None, None]]:
        from ._dynamodb import open_aio_client

        with self._lock:
            if self._session is None:
                self._session = require("aiobotocore.session", "dynamodb-async").get_session()
            session = self._session
        return await open_aio_client(
            session,
            "s3",
            region_name=self._region,
            endpoint_url=self._endpoint_url,
            config=self._config(aio=True),
        )

    async def _async_client(self) -> Any:
        from ._dynamodb import loop_client

        return await loop_client(self._lock, self._async_clients, self._open_async_client)

    async def _aclose_async_client(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            task = self._async_clients.pop(loop, None)
        if task is not None:
            try:
                _, keeper = await task
            except Exception:  # it never opened: nothing to close
                pass
            else:
                await keeper.aclose()

    def object_key(self, key: str, fence: int) -> str:
        """The S3 object key of ``key``'s result written under ``fence``."""
        return f"{self.offload_prefix}{hashlib.sha256(key.encode('utf-8')).hexdigest()}/{fence}"

    def _put(self, bucket: str, name: str, body: bytes, checksum: str) -> None:
        self.s3_client().put_object(
            Bucket=bucket,
            Key=name,
            Body=body,
            ContentType="application/octet-stream",
            Metadata={"sha256": checksum},
        )

    def _fetch(self, bucket: str, name: str) -> bytes | None:
        """The object's bytes, or ``None`` if it does not exist."""
        try:
            response = self.s3_client().get_object(Bucket=bucket, Key=name)
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise
        body = response["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def _remove(self, bucket: str, name: str) -> None:
        self.s3_client().delete_object(Bucket=bucket, Key=name)

    async def _aput(self, client: Any, bucket: str, name: str, body: bytes, checksum: str) -> None:
        await client.put_object(
            Bucket=bucket,
            Key=name,
            Body=body,
            ContentType="application/octet-stream",
            Metadata={"sha256": checksum},
        )

    async def _afetch(self, client: Any, bucket: str, name: str) -> bytes | None:
        try:
            response = await client.get_object(Bucket=bucket, Key=name)
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise
        async with response["Body"] as stream:
            return bytes(await stream.read())

    async def _aremove(self, client: Any, bucket: str, name: str) -> None:
        await client.delete_object(Bucket=bucket, Key=name)

    # -- frames ------------------------------------------------------------------------
    def _pack(self, result: bytes) -> bytes:
        """``result``, compressed when long enough and smaller so (escaped when it starts
        like a frame)."""
        if len(result) > self.compress_over:
            packed = _ZLIB_HEAD + zlib.compress(result, 6)
            if len(packed) < len(result):
                return packed
        return _RAW_HEAD + result if result[:1] == b"\x02" else result

    def _inflate(self, data: bytes) -> bytes:
        limit = self._limit * _INFLATE_FACTOR
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(data[2:], limit + 1)
        except zlib.error as exc:
            raise CorruptRecordError(f"the compressed stored result is corrupt ({exc})") from exc
        if len(out) > limit or inflater.unconsumed_tail or not inflater.eof:
            raise CorruptRecordError(
                f"the compressed stored result is truncated or inflates beyond {limit} bytes"
            )
        return out

    def _unframe(self, data: bytes) -> bytes:
        """The result of a stored compressed, escaped or plain frame."""
        if data[:1] != b"\x02":
            return data
        if data[1:2] == b"Z":
            return self._inflate(data)
        if data[1:2] == b"R":
            return data[2:]
        raise CorruptRecordError(f"stored result has unknown frame {data[1:2]!r}")

    def _resolve(self, record: Record) -> Generator[_Op, Any, Record]:
        """``record`` with its stored bytes turned back into the encoded result."""
        data = record.result
        if not data or data[0] != FRAME:
            return record
        if data[1:2] != b"S":
            return record._replace(result=self._unframe(data))
        try:
            pointer = json.loads(data[2:])
            bucket, name = str(pointer["bucket"]), str(pointer["key"])
            checksum, size = str(pointer["sha256"]), int(pointer["size"])
        except Exception as exc:
            raise CorruptRecordError(
                f"the pointer to an offloaded result is unreadable ({type(exc).__name__})"
            ) from exc
        body = yield _S3Op("fetch", (bucket, name))
        if body is None:
            raise CorruptRecordError(
                f"the offloaded result is missing from S3 bucket {bucket!r} (deleted, or "
                "expired by a lifecycle rule shorter than the records' ttl). " + _FORGET
            )
        if len(body) != size or hashlib.sha256(body).hexdigest() != checksum:
            raise CorruptRecordError(
                f"the offloaded result in S3 bucket {bucket!r} does not match the checksum "
                "its record holds (the object was changed or truncated). " + _FORGET
            )
        return record._replace(result=self._unframe(body))

    def _pointer(self, record: Record | None) -> tuple[str, str] | None:
        """``(bucket, object key)`` of a raw record's offload pointer, if it points to the
        object this store wrote for that record: in the configured bucket, named after the
        record's key and fence (whatever the prefix was). Anything else (no pointer, an
        unreadable or foreign one) is ``None``: never deleted."""
        data = record.result if record is not None else None
        if record is None or not data or not data.startswith(_S3_HEAD):
            return None
        try:
            pointer = json.loads(data[2:])
            bucket, name = str(pointer["bucket"]), str(pointer["key"])
        except Exception:
            return None
        own = self.object_key(record.key, record.fence).removeprefix(self.offload_prefix)
        if bucket != self.bucket or not (name == own or name.endswith("/" + own)):
            return None
        return bucket, name

    # -- maintenance -------------------------------------------------------------------
    def offloaded_object(self, record: Record) -> tuple[str, str] | None:
        """``(bucket, object key)`` of the S3 object a record points to, as the *wrapped*
        store returns it (``self.store.get``, a scan of ``self.store``); ``None`` when its
        result is not offloaded (or the pointer is not to the object this store's bucket
        keeps for that key and fence: such objects are never deleted). Records read
        through this store have their result already read back, so ask about raw ones."""
        return self._pointer(record)

    def delete_offloaded(self, record: Record) -> bool:
        """Delete the S3 object a raw record (see :meth:`offloaded_object`) points to, for
        tools that remove records without :meth:`delete` (a purge of expired records).
        Returns whether the record pointed to one. Deleting an object that is already gone
        is not an error."""
        where = self._pointer(record)
        if where is None:
            return False
        self._remove(*where)
        return True

    # -- the programs shared by the sync and async methods ------------------------------
    def _claim(self, key: str, fingerprint: str, lease: float, ttl: float) -> _Program:
        claim: Claim = yield _StoreOp("claim", (key, fingerprint), {"lease": lease, "ttl": ttl})
        if not _framed(claim):
            return claim
        record = yield from self._resolve(claim.record)
        return claim._replace(record=record)

    def _claim_many(self, items: Sequence[tuple[str, str, float, float]]) -> _Program:
        """The wrapped store's ``claim_many``; each completed record read back as
        :meth:`_claim` does, the S3 reads as one :class:`_Each` (concurrent when async). A
        record that cannot be read back gets its error in its place."""
        claims: list[Any] = yield _StoreOp("claim_many", (items,), {})
        todo = [i for i, claim in enumerate(claims) if _framed(claim)]
        if not todo:
            return claims
        records = yield _Each(tuple(self._resolve(claims[i].record) for i in todo))
        out = list(claims)
        for i, record in zip(todo, records, strict=True):
            if isinstance(record, Exception):
                out[i] = self._item_error(record, "claim_many", claims[i].record.key)
            else:
                out[i] = claims[i]._replace(record=record)
        return out

    def _get(self, key: str) -> _Program:
        record: Record | None = yield _StoreOp("get", (key,), {})
        if record is None:
            return None
        return (yield from self._resolve(record))

    def _encode(self, key: str, result: bytes) -> bytes:
        """``result`` as it is kept (:meth:`_pack`); :class:`ResultTooLargeError` when it
        is over the limit (nothing written)."""
        if len(result) > self._limit:
            raise ResultTooLargeError(
                f"the encoded result is {len(result)} bytes, more than this store keeps "
                f"({self._limit} bytes: max_offload_bytes)"
                if self.bucket is not None
                else f"the encoded result is {len(result)} bytes, more than this store keeps "
                f"({self._limit} bytes); pass offload='s3://bucket/prefix' to keep it in S3",
                key=key,
            )
        return self._pack(result)

    def _inline(self, data: bytes) -> bool:
        """Whether stored bytes ``data`` go in the record (else to S3)."""
        return self.bucket is None or len(data) <= self.offload_over

    def _complete(self, key: str, fence: int, result: bytes, ttl: float) -> _Program:
        data = self._encode(key, result)
        if self._inline(data):
            try:
                return (yield _StoreOp("complete", (key, fence, data), {"ttl": ttl}))
            except ResultTooLargeError:
                if self.bucket is None:
                    raise
        return (yield from self._offload(key, fence, data, ttl))

    def _upload(self, key: str, fence: int, data: bytes) -> Generator[_Op, Any, bytes]:
        """Upload ``data`` as the object of ``key`` under ``fence``; the pointer frame the
        record keeps."""
        assert self.bucket is not None
        bucket, name = self.bucket, self.object_key(key, fence)
        checksum = hashlib.sha256(data).hexdigest()
        yield _S3Op("put", (bucket, name, data, checksum))
        pointer = json.dumps(
            {"bucket": bucket, "key": name, "sha256": checksum, "size": len(data)},
            separators=(",", ":"),
            sort_keys=True,
        ).encode("utf-8")
        return _S3_HEAD + pointer

    def _fenced_out(self, key: str, fence: int) -> _Program:
        """Remove the object of ``key`` under ``fence`` after its record refused it: the
        object is ours alone (named after our fence). Returns ``False``."""
        assert self.bucket is not None
        yield _S3Op("remove", (self.bucket, self.object_key(key, fence)))
        return False

    def _offload(self, key: str, fence: int, data: bytes, ttl: float) -> _Program:
        frame = yield from self._upload(key, fence, data)
        # A failure here leaves the object (whether the record was written is unknown);
        # the lifecycle rule removes it if no record points to it.
        done = yield _StoreOp("complete", (key, fence, frame), {"ttl": ttl})
        if not done:
            return (yield from self._fenced_out(key, fence))
        return done

    def _complete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> _Program:
        """Each result encoded as :meth:`_complete` does: the offloaded ones uploaded (one
        :class:`_Each`), then one ``complete_many`` of the wrapped store with every stored
        form; then, as one more :class:`_Each`, the objects of refused (fenced-out) items
        removed and an inline result the wrapped store refused for its size offloaded (a
        ``complete`` of its own). An item's own failure is returned in its place."""
        out: list[Any] = [None] * len(items)
        stored: dict[int, tuple[str, int, bytes, float]] = {}
        uploads: list[int] = []
        for i, (key, fence, result, ttl) in enumerate(items):
            try:
                stored[i] = (key, fence, self._encode(key, result), ttl)
            except ResultTooLargeError as exc:
                out[i] = exc
                continue
            if not self._inline(stored[i][2]):
                uploads.append(i)
        if uploads:
            frames = yield _Each(tuple(self._upload(*stored[i][:3]) for i in uploads))
            for i, frame in zip(uploads, frames, strict=True):
                key, fence, _, ttl = stored[i]
                if isinstance(frame, Exception):
                    out[i] = self._item_error(frame, "complete_many", key)
                    del stored[i]
                else:
                    stored[i] = (key, fence, frame, ttl)
        order = sorted(stored)
        if not order:
            return out
        answers: list[Any] = yield _StoreOp("complete_many", ([stored[i] for i in order],), {})
        offloaded = set(uploads)
        later: dict[int, _Program] = {}
        for i, answer in zip(order, answers, strict=True):
            key, fence, data, ttl = stored[i]
            refused = isinstance(answer, Exception)
            if i in offloaded and not refused and not answer:  # fence lost: our object
                later[i] = self._fenced_out(key, fence)
            elif i not in offloaded and isinstance(answer, ResultTooLargeError) and self.bucket:
                later[i] = self._offload(key, fence, data, ttl)  # refused inline: offload
            else:
                out[i] = answer
        if later:
            settled = yield _Each(tuple(later.values()))
            for i, value in zip(later, settled, strict=True):
                failed = isinstance(value, Exception)
                out[i] = self._item_error(value, "complete_many", stored[i][0]) if failed else value
        return out

    def _delete(self, key: str) -> _Program:
        record: Record | None = yield _StoreOp("get", (key,), {})
        removed = yield _StoreOp("delete", (key,), {})
        where = self._pointer(record)
        if where is not None:
            yield _S3Op("remove", where)
        return removed

    def _item_error(self, exc: Exception, operation: str, key: str) -> Exception:
        """The error returned in one item's place: the library's own as it is, any other
        (an S3 client's) as the :class:`~idempotence.StoreError` the single operation
        would raise."""
        if isinstance(exc, IdempotencyError):
            return exc
        error = StoreError(
            f"{type(self).__name__}.{operation} failed for one item: {type(exc).__name__}: "
            f"{exc}{_socket_cause(exc)}. Check that the store and the S3 bucket are reachable "
            "and the permissions on the prefix, then retry.",
            key=key,
        )
        error.__cause__ = exc
        return error

    # -- drivers -----------------------------------------------------------------------
    def _run(self, program: _Program) -> Any:
        def step(op: Any) -> Any:
            if isinstance(op, _StoreOp):
                return getattr(self.store, op.name)(*op.args, **op.kwargs)
            if isinstance(op, _Each):
                return [self._settle(each) for each in op.programs]
            return getattr(self, "_" + op.action)(*op.args)

        return drive(program, step, catch=Exception)

    async def _arun(self, program: _Program) -> Any:
        async def step(op: Any) -> Any:
            if isinstance(op, _StoreOp):
                return await getattr(self.store, "a" + op.name)(*op.args, **op.kwargs)
            if isinstance(op, _Each):
                return await asyncio.gather(*map(self._asettle, op.programs))
            return await self._as3(op)

        return await adrive(program, step, catch=Exception)

    def _settle(self, program: _Program) -> Any:
        """:meth:`_run`, its exception returned instead of raised (an ``_Each`` item)."""
        try:
            return self._run(program)
        except Exception as exc:
            return exc

    async def _asettle(self, program: _Program) -> Any:
        """:meth:`_arun`, its exception returned instead of raised."""
        try:
            return await self._arun(program)
        except Exception as exc:
            return exc

    # -- the interface -----------------------------------------------------------------
    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        """The wrapped store's claim; a completed record's result is read back (one
        ``GetObject`` when it was offloaded)."""
        result: Claim = self._run(self._claim(key, fingerprint, lease, ttl))
        return result

    def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        """Compress / offload ``result`` as the class describes, then complete the record
        (fence-conditional). When the fence was lost, an uploaded object is deleted."""
        done: bool = self._run(self._complete(key, fence, result, ttl))
        return done

    def release(self, key: str, fence: int) -> bool:
        """The wrapped store's release."""
        return self.store.release(key, fence)

    def renew(self, key: str, fence: int, *, lease: float) -> bool:
        """The wrapped store's renew."""
        return self.store.renew(key, fence, lease=lease)

    def get(self, key: str) -> Record | None:
        """The wrapped store's record, its result read back."""
        record: Record | None = self._run(self._get(key))
        return record

    def delete(self, key: str) -> bool:
        """Forget ``key`` and delete its offloaded object, if any (one more store request
        first, to read the record)."""
        removed: bool = self._run(self._delete(key))
        return removed

    def close(self) -> None:
        """Close the wrapped store and an S3 client the store made itself (both are made
        again on next use)."""
        self.store.close()
        self._close_client()

    def _close_client(self) -> None:
        if self._own_client:
            with self._lock:
                client, self._client = self._client, None
                forget_closed_loops(self._async_clients)
            if client is not None:
                client.close()

    async def aclaim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        """Async :meth:`claim`."""
        result: Claim = await self._arun(self._claim(key, fingerprint, lease, ttl))
        return result

    async def acomplete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        """Async :meth:`complete`."""
        done: bool = await self._arun(self._complete(key, fence, result, ttl))
        return done

    async def arelease(self, key: str, fence: int) -> bool:
        """Async :meth:`release`."""
        return await self.store.arelease(key, fence)

    async def arenew(self, key: str, fence: int, *, lease: float) -> bool:
        """Async :meth:`renew`."""
        return await self.store.arenew(key, fence, lease=lease)

    async def aget(self, key: str) -> Record | None:
        """Async :meth:`get`."""
        record: Record | None = await self._arun(self._get(key))
        return record

    async def adelete(self, key: str) -> bool:
        """Async :meth:`delete`."""
        removed: bool = await self._arun(self._delete(key))
        return removed

    async def aclose(self) -> None:
        """Async :meth:`close`: also closes the running loop's aiobotocore client."""
        await self.store.aclose()
        await self._aclose_async_client()
        self._close_client()


# -- capabilities: the wrapper offers exactly those of the store it wraps ------------------
# ``LargeResultStore(store)`` makes an instance of a subclass built from the mixins below
# whose capability ``store`` has (``isinstance(store, Capability)``), so
# ``isinstance(wrapper, Capability)`` is true exactly when it is for the wrapped store.
# BatchClaims included: the wrapper's batch methods encode each result (compress, offload)
# before the wrapped store's one batch write, and read back each completed record a batch
# claim returns, so a batch costs the wrapped store's requests plus the S3 ones.


class _Batches(LargeResultStore):
    """``BatchClaims``: the wrapped store's batch requests, around the results this store
    encodes and reads back."""

    def claim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Any]:
        """The wrapped store's :meth:`claim_many`; each completed record's result is read
        back as :meth:`claim` reads it (one ``GetObject`` per offloaded one). A record that
        cannot be read back (:class:`~idempotence.CorruptRecordError`, an S3 failure) gets
        the error in its place."""
        claims: list[Any] = self._run(self._claim_many(items))
        return claims

    def complete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[Any]:
        """Encode each result as :meth:`complete` does (compress; upload the large ones),
        then one :meth:`complete_many` of the wrapped store. A result over
        ``max_offload_bytes`` gets :class:`~idempotence.ResultTooLargeError` in its place
        (nothing written for it), a failed upload a :class:`~idempotence.StoreError`; an
        item whose fence was lost has its uploaded object deleted, as :meth:`complete`
        does. A result the wrapped store refuses for its size is offloaded with a
        ``complete`` of its own."""
        done: list[Any] = self._run(self._complete_many(items))
        return done

    def release_many(self, items: Sequence[tuple[str, int]]) -> list[Any]:
        """The wrapped store's :meth:`release_many`."""
        released: list[Any] = self.store.release_many(items)  # type: ignore[attr-defined]
        return released

    async def aclaim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Any]:
        """Async :meth:`claim_many` (the ``GetObject`` requests concurrently)."""
        claims: list[Any] = await self._arun(self._claim_many(items))
        return claims

    async def acomplete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[Any]:
        """Async :meth:`complete_many` (the ``PutObject`` requests concurrently)."""
        done: list[Any] = await self._arun(self._complete_many(items))
        return done

    async def arelease_many(self, items: Sequence[tuple[str, int]]) -> list[Any]:
        """Async :meth:`release_many`."""
        released: list[Any] = await self.store.arelease_many(items)  # type: ignore[attr-defined]
        return released


class _Maintained(LargeResultStore):
    """``Maintainable``: the wrapped store's ``scan``/``count``/``stats``; ``purge`` also
    deletes the S3 objects of the records it deletes."""

    def scan(
        self,
        *,
        namespace: str | None = None,
        status: Status | None = None,
        older_than: float | None = None,
        expired: bool = False,
        limit: int | None = None,
        batch_size: int = 1000,
    ) -> Iterator[Record]:
        """The wrapped store's records as it stores them: a compressed result stays in its
        frame and an offloaded one is its pointer (no S3 request per record; read one back
        with :meth:`get`, find its object with :meth:`offloaded_object`)."""
        records: Iterator[Record] = self.store.scan(  # type: ignore[attr-defined]
            namespace=namespace,
            status=status,
            older_than=older_than,
            expired=expired,
            limit=limit,
            batch_size=batch_size,
        )
        return records

    def count(
        self,
        *,
        namespace: str | None = None,
        status: Status | None = None,
        older_than: float | None = None,
        expired: bool = False,
    ) -> int:
        """The wrapped store's count."""
        n: int = self.store.count(  # type: ignore[attr-defined]
            namespace=namespace, status=status, older_than=older_than, expired=expired
        )
        return n

    def stats(self) -> StoreStats:
        """The wrapped store's statistics."""
        stats: StoreStats = self.store.stats()  # type: ignore[attr-defined]
        return stats

    def purge(
        self,
        *,
        namespace: str | None = None,
        expired: bool = True,
        batch_size: int = 1000,
        progress: Progress | None = None,
    ) -> int:
        """The wrapped store's purge, then the deletion of the S3 objects of the records it
        matched (``DeleteObjects``, up to 1000 a request). When offloading, the matching
        records are scanned first (one more pass, keeping the object keys of offloaded
        ones); an object is named after its record's fence, so one whose key was claimed
        again meanwhile is no longer read by anyone. Records that start to match between
        the scan and the purge keep their objects: the lifecycle rule removes them. A
        failed S3 deletion raises :class:`~idempotence.StoreError` after the records were
        deleted (the lifecycle rule removes those objects too)."""
        inner: Any = self.store
        names: list[str] = []
        if self.bucket is not None:
            for record in inner.scan(namespace=namespace, expired=expired, batch_size=batch_size):
                where = self._pointer(record)
                if where is not None:
                    names.append(where[1])
        deleted: int = inner.purge(
            namespace=namespace, expired=expired, batch_size=batch_size, progress=progress
        )
        if names:
            self._remove_many(names)
        return deleted

    def _remove_many(self, names: list[str]) -> None:
        assert self.bucket is not None
        failed = 0
        for start in range(0, len(names), 1000):
            chunk = names[start : start + 1000]
            reply = self.s3_client().delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": name} for name in chunk], "Quiet": True},
            )
            failed += sum(1 for e in reply.get("Errors", ()) if e.get("Code") != "NoSuchKey")
        if failed:
            raise StoreError(
                f"{failed} offloaded result object(s) of purged records could not be deleted "
                f"from S3 bucket {self.bucket!r} (check s3:DeleteObject on the prefix); the "
                "bucket's lifecycle rule removes them"
            )


class _SQL(LargeResultStore):
    """``SQLConnections``: the wrapped store's connections (and its ``table``)."""

    @property
    def table(self) -> str:
        """The wrapped store's records table."""
        return str(self.store.table)  # type: ignore[attr-defined]

    def sql_connection(self) -> AbstractContextManager[Any]:
        """The wrapped store's :meth:`sql_connection`. Records written through it are the
        wrapped store's: a result a transactional effect writes is kept as it is."""
        cm: AbstractContextManager[Any] = self.store.sql_connection()  # type: ignore[attr-defined]
        return cm

    def asql_connection(self) -> AbstractAsyncContextManager[Any] | None:
        """The wrapped store's :meth:`asql_connection`."""
        cm: AbstractAsyncContextManager[Any] | None = self.store.asql_connection()  # type: ignore[attr-defined]
        return cm


class _Scripts(LargeResultStore):
    """``AtomicScripts``: the wrapped store's scripts and key prefix."""

    @property
    def prefix(self) -> str:
        """The wrapped store's key prefix (the S3 one is :attr:`offload_prefix`)."""
        return str(self.store.prefix)  # type: ignore[attr-defined]

    def run_script(self, script: str, key: str, args: Sequence[str | bytes]) -> Any:
        """The wrapped store's :meth:`run_script`."""
        return self.store.run_script(script, key, args)  # type: ignore[attr-defined]

    async def arun_script(self, script: str, key: str, args: Sequence[str | bytes]) -> Any:
        """The wrapped store's :meth:`arun_script`."""
        return await self.store.arun_script(script, key, args)  # type: ignore[attr-defined]


class _Dynamo(LargeResultStore):
    """``DynamoDBRecords``: the wrapped store's table, items and client; records are read
    back and results packed as the wrapper does."""

    @property
    def table(self) -> str:
        """The wrapped store's table."""
        return str(self.store.table)  # type: ignore[attr-defined]

    @property
    def key_attr(self) -> str:
        """The wrapped store's partition key attribute."""
        return str(getattr(self.store, "key_attr", "id"))

    @property
    def sort_key_attr(self) -> str | None:
        """The wrapped store's sort key attribute, if any."""
        sort = getattr(self.store, "sort_key_attr", None)
        return None if sort is None else str(sort)

    @property
    def ttl_attribute(self) -> str:
        """The wrapped store's Time to Live attribute."""
        return str(getattr(self.store, "ttl_attribute", "expiration"))

    def item_key(self, key: str) -> dict[str, Any]:
        """The wrapped store's :meth:`item_key`."""
        item: dict[str, Any] = self.store.item_key(key)  # type: ignore[attr-defined]
        return item

    def record_from_item(self, item: Mapping[str, Any]) -> Record:
        """The wrapped store's record of ``item``, its result read back as :meth:`get`
        does (an offloaded one with a sync ``GetObject``: async code uses
        :meth:`arecord_from_item`)."""
        record: Record = self.store.record_from_item(item)  # type: ignore[attr-defined]
        if not record.result or record.result[0] != FRAME:
            return record
        resolved: Record = self._run(self._resolve(record))
        return resolved

    async def arecord_from_item(self, item: Mapping[str, Any]) -> Record:
        """Async :meth:`record_from_item`: the ``GetObject`` of an offloaded result on the
        event loop's aiobotocore client (or the boto3 one in a worker thread), never a
        blocking request on the loop. The async DynamoDB effects use it."""
        record: Record = self.store.record_from_item(item)  # type: ignore[attr-defined]
        if not record.result or record.result[0] != FRAME:
            return record
        resolved: Record = await self._arun(self._resolve(record))
        return resolved

    def completion_write(
        self, key: str, fingerprint: str, result: bytes, *, ttl: float, now: float
    ) -> dict[str, Any]:
        """The wrapped store's :meth:`completion_write` of ``result`` compressed (or
        escaped) as :meth:`complete` would keep it inline (a transaction never offloads:
        a result over the item size fails the transaction)."""
        write: dict[str, Any] = self.store.completion_write(  # type: ignore[attr-defined]
            key, fingerprint, self._pack(result), ttl=ttl, now=now
        )
        return write

    def call(self, method: str, request: Mapping[str, Any]) -> Any:
        """The wrapped store's :meth:`call`."""
        return self.store.call(method, request)  # type: ignore[attr-defined]

    async def acall(self, method: str, request: Mapping[str, Any]) -> Any:
        """The wrapped store's :meth:`acall`."""
        return await self.store.acall(method, request)  # type: ignore[attr-defined]


class _AutoCreate(LargeResultStore):
    """The wrapped store's ``auto_create`` switch and ``create_table``."""

    @property
    def auto_create(self) -> bool:
        """The wrapped store's: whether its table or file is created on first use (the
        ``idempotence`` read commands turn it off)."""
        return bool(self.store.auto_create)  # type: ignore[attr-defined]

    @auto_create.setter
    def auto_create(self, value: bool) -> None:
        self.store.auto_create = value  # type: ignore[attr-defined]


class _CreateTable(LargeResultStore):
    """The wrapped store's ``create_table``/``acreate_table``."""

    def create_table(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped store's ``create_table`` (same arguments)."""
        return self.store.create_table(*args, **kwargs)  # type: ignore[attr-defined]

    async def acreate_table(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped store's ``acreate_table``, or its ``create_table`` in a thread."""
        create = getattr(self.store, "acreate_table", None)
        if create is not None:
            return await create(*args, **kwargs)
        return await _to_thread(self.store.create_table, *args, **kwargs)  # type: ignore[attr-defined]


class _Clocked(LargeResultStore):
    """The wrapped store's ``clock``."""

    @property
    def clock(self) -> Callable[[], float]:
        """The wrapped store's clock."""
        clock: Callable[[], float] = self.store.clock  # type: ignore[attr-defined]
        return clock


def _mixins(store: Store) -> tuple[type[LargeResultStore], ...]:
    from .capabilities import (
        AtomicScripts,
        BatchClaims,
        DynamoDBRecords,
        Maintainable,
        SQLConnections,
    )

    found: list[type[LargeResultStore]] = []
    for capability, mixin in (
        (Maintainable, _Maintained),
        (BatchClaims, _Batches),
        (SQLConnections, _SQL),
        (AtomicScripts, _Scripts),
        (DynamoDBRecords, _Dynamo),
    ):
        if isinstance(store, capability):
            found.append(mixin)
    if hasattr(store, "auto_create"):
        found.append(_AutoCreate)
    if callable(getattr(store, "create_table", None)):
        found.append(_CreateTable)
    if callable(getattr(store, "clock", None)):
        found.append(_Clocked)
    return tuple(found)


_CLASSES: dict[tuple[type[LargeResultStore], ...], type[LargeResultStore]] = {}


def _wrapper_class(store: Store) -> type[LargeResultStore]:
    """The ``LargeResultStore`` subclass offering exactly ``store``'s capabilities."""
    mixins = _mixins(store)
    if not mixins:
        return LargeResultStore
    with _CLASSES_LOCK:
        cls = _CLASSES.get(mixins)
        if cls is None:
            cls = type(
                "LargeResultStore",
                (*mixins, LargeResultStore),
                {
                    "__module__": __name__,
                    "__qualname__": "LargeResultStore",
                    "__doc__": LargeResultStore.__doc__,
                },
            )
            _CLASSES[mixins] = cls
    return cls


_CLASSES_LOCK = threading.Lock()
