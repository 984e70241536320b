"""Amazon DynamoDB store: one item per key, every operation one conditional request.

The table needs a string partition key (``id`` by default) and, for DynamoDB to delete
old items itself, Time to Live enabled on ``expiration``. :meth:`DynamoDBStore.create_table`
creates such a table; :data:`CLOUDFORMATION_TEMPLATE` is the same table for SAM /
CloudFormation.

Item layout (one item per idempotency key)::

    id                partition key (S): the idempotency key
    <sort_key_attr>   optional sort key (S): the constant ``sort_key_value``
    status            S   IN_PROGRESS | COMPLETED
    fingerprint       S
    fence             N   a new item's is the client clock in ms (``fresh_fence``); grows by
                          one on every take-over (never reset, even after the item is deleted)
    lease_expires_at  N   float epoch seconds
    expires_at        N   float epoch seconds: end of logical retention (enforced on read)
    expiration        N   integer epoch seconds: the DynamoDB TTL attribute (physical deletion)
    result            B   encoded result, zlib-compressed when ``result_encoding`` = "zlib"
    result_encoding   S   present only when ``result`` is compressed
    claim_id          S   random id of the claim or completion that last wrote the item
                          (makes a retried request recognise its own earlier success)

Time: DynamoDB has no server clock, so the client clock (``clock``, default
``time.time``) decides whether a lease or retention is live. It never decides safety: only
the holder of the current fence can complete, release or renew, so a skewed clock can at
worst let a successor take over early, and the late owner then gets ``False`` (the core
raises ``LeaseLostError``) instead of overwriting the successor.

One file (over 400 lines): the request programs, the item codec and the table management
serve only :class:`DynamoDBStore`; split, they would be private imports between the modules
of one store.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import re
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import (
    AsyncGenerator,
    Callable,
    Coroutine,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar
from urllib.parse import unquote, urlsplit

from .._drive import adrive, drive
from .._errors import CorruptRecordError, ResultTooLargeError, StoreError
from .._lazy import require
from .._record import Claim, Record, Status
from ._base import Clock, decide_claim, forget_closed_loops, fresh_fence, system_clock
from ._maintenance import (
    DEFAULT_BATCH,
    CountedByScan,
    Progress,
    StoreStats,
    batches,
    matches,
    matching,
    stats_of,
)
from ._operations import OperationStore
from ._registry import merge_option, url_query

if TYPE_CHECKING:
    from aiobotocore.session import AioSession
    from botocore.config import Config
    from mypy_boto3_dynamodb.client import DynamoDBClient

__all__ = ["CLOUDFORMATION_TEMPLATE", "DynamoDBStore", "ResultTooLargeError"]

_T = TypeVar("_T")

#: DynamoDB's item size limit (names and values of every attribute, key included).
MAX_ITEM_BYTES: Final = 400 * 1024
#: Results at least this long are zlib-compressed (when that makes them smaller).
COMPRESS_THRESHOLD: Final = 1024
#: Room kept in an item for the fingerprint (a hash, normally well under 100 bytes).
_FINGERPRINT_ALLOWANCE: Final = 512

_STATUS, _FINGERPRINT, _FENCE = "status", "fingerprint", "fence"
_LEASE, _EXPIRES, _EXPIRATION = "lease_expires_at", "expires_at", "expiration"
_RESULT, _ENCODING, _CLAIM_ID = "result", "result_encoding", "claim_id"
_ATTRIBUTES: Final = (
    _STATUS, _FINGERPRINT, _FENCE, _LEASE, _EXPIRES, _EXPIRATION, _RESULT, _ENCODING, _CLAIM_ID,
)  # fmt: skip
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_PLACEHOLDER = re.compile(r"[#:][A-Za-z_][A-Za-z0-9_]*")


@functools.lru_cache(maxsize=64)
def _placeholders(update: str, condition: str) -> frozenset[str]:
    """The ``#name``/``:value`` placeholders two expressions use. The expressions are a few
    constants, so each is scanned once, not on every request."""
    return frozenset(_PLACEHOLDER.findall(f"{update} {condition}"))


CLOUDFORMATION_TEMPLATE: Final = """\
# SAM / CloudFormation: the table DynamoDBStore("idempotency") expects.
IdempotencyTable:
  Type: AWS::DynamoDB::Table
  Properties:
    TableName: idempotency
    BillingMode: PAY_PER_REQUEST
    AttributeDefinitions:
      - AttributeName: id
        AttributeType: S
    KeySchema:
      - AttributeName: id
        KeyType: HASH
    TimeToLiveSpecification:
      AttributeName: expiration
      Enabled: true
# The function needs dynamodb:GetItem, dynamodb:UpdateItem and dynamodb:DeleteItem on the
# table (SAM: Policies: [DynamoDBCrudPolicy: {TableName: !Ref IdempotencyTable}]) and the
# table name, e.g. Environment: {Variables: {IDEMPOTENCY_TABLE: !Ref IdempotencyTable}}.
"""


#: The fence update of a claim: a new item's fence is ``:fresh`` + 1 = ``fresh_fence(now)``
#: (see :func:`fresh_values`), a take-over's the item's + 1.
CLAIM_FENCE: Final = "#fence = if_not_exists(#fence, :fresh) + :one"


def fresh_values(now: float) -> dict[str, dict[str, str]]:
    """The values of :data:`CLAIM_FENCE` at ``now`` (the client clock)."""
    return {":fresh": {"N": str(fresh_fence(now) - 1)}, ":one": {"N": "1"}}


#: The claim condition (shared with the transactional API in :mod:`idempotence.effects`):
#: absent, OR past retention, OR an in-progress lease lapsed with our fingerprint.
CLAIM_CONDITION: Final = (
    "attribute_not_exists(#pk)"
    " OR (#expires <= :now AND (#status <> :in_progress OR #lease <= :now))"
    " OR (#status = :in_progress AND #lease <= :now AND #fingerprint = :fingerprint)"
)


# -- the request programs shared by the sync and async methods ----------------------------
@dataclass(frozen=True)
class _Call:
    """One DynamoDB API call: ``client.<method>(**kwargs)``."""

    method: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class _Sleep:
    seconds: float


# An operation is a generator that yields calls (and sleeps), receives each response (or
# has the call's exception thrown in) and returns the outcome. `_run` drives it with the
# boto3 client, `_arun` with the aiobotocore one: the logic exists once.
_Steps = Generator[_Call | _Sleep, Any, _T]


def _one(call: _Call) -> _Steps[Any]:
    """The steps of a single request: its response."""
    return (yield call)


#: Marker of a write whose transaction was cancelled for another item: send it again.
_AGAIN: Final = object()
#: Transactions one batch operation may take before giving up (each settles at least the
#: items whose condition failed; more rounds only under races).
_BATCH_ROUNDS: Final = 5
_TRANSACT_ITEMS: Final = 100
_TRANSACT_BYTES: Final = 4 * 1024 * 1024 - 64 * 1024  # the 4 MB cap, with room for overhead


def _chunks(writes: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Indexes of ``writes`` grouped into transactions of at most 100 items and ~4 MB."""
    chunks: list[list[int]] = [[]]
    size = 0
    for i, write in enumerate(writes):
        values = next(iter(write.values())).get("ExpressionAttributeValues", {})
        weight = 1024 + sum(len(v.get("B", b"")) for v in values.values())
        if chunks[-1] and (len(chunks[-1]) >= _TRANSACT_ITEMS or size + weight > _TRANSACT_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += weight
    return [chunk for chunk in chunks if chunk]


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)  # botocore ClientError, sync or async
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _is_conditional_failure(exc: BaseException) -> bool:
    return _error_code(exc) == "ConditionalCheckFailedException"


def _is_item_too_large(exc: BaseException) -> bool:
    return _error_code(exc) == "ValidationException" and "exceeded the maximum allowed size" in (
        str(exc)
    )


def _num(value: float) -> dict[str, str]:
    return {"N": repr(float(value))}


def _encode(result: bytes) -> tuple[bytes, str | None]:
    if len(result) >= COMPRESS_THRESHOLD:
        packed = zlib.compress(result, 6)
        if len(packed) < len(result):
            return packed, "zlib"
    return bytes(result), None


async def _close_with_loop(stack: AsyncExitStack) -> AsyncGenerator[None, None]:
    """Held suspended while a loop's client is open. ``asyncio.run`` closes every async
    generator of its loop before closing the loop (``shutdown_asyncgens``), which runs the
    ``finally`` here: the client dies with its loop even if ``aclose`` is never called."""
    try:
        yield
    finally:
        await stack.aclose()


async def open_aio_client(
    session: Any, service: str, **options: Any
) -> tuple[Any, AsyncGenerator[None, None]]:
    """An aiobotocore client of ``service`` made by ``session`` with ``options``, and the
    suspended :func:`_close_with_loop` that closes it with the running loop."""
    stack = AsyncExitStack()
    client = await stack.enter_async_context(session.create_client(service, **options))
    keeper = _close_with_loop(stack)
    await keeper.__anext__()  # registers with the running loop's async-generator hooks
    return client, keeper


async def loop_client(
    lock: threading.Lock,
    clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any],
    opener: Callable[[], Coroutine[Any, Any, tuple[Any, AsyncGenerator[None, None]]]],
) -> Any:
    """The running loop's client: ``clients`` maps each loop to the task opening its client
    with ``opener`` (started once per loop, under ``lock``; closed loops are forgotten). A
    failed opening is forgotten, so the next call tries again."""
    loop = asyncio.get_running_loop()
    with lock:
        forget_closed_loops(clients)
        task = clients.get(loop)
        if task is None:
            task = loop.create_task(opener())
            clients[loop] = task
    try:
        client, _ = await asyncio.shield(task)
    except BaseException:
        if task.done():  # opening failed: forget it so the next call tries again
            with lock:
                if clients.get(loop) is task:
                    del clients[loop]
        raise
    return client


def _check_attributes(key_attr: str, sort_key_attr: str | None) -> None:
    for attr in (key_attr, sort_key_attr):
        if attr is not None and (not attr or attr in _ATTRIBUTES):
            raise ValueError(f"key attribute {attr!r} is empty or clashes with a record field")
    if sort_key_attr is not None and sort_key_attr == key_attr:
        raise ValueError("sort_key_attr must differ from key_attr")


class DynamoDBStore(CountedByScan, OperationStore):
    """Records in a DynamoDB table, one item per key (see the module docstring for the
    layout). Needs ``pip install 'idempotence[dynamodb]'`` (boto3); the async methods
    also need aiobotocore: ``pip install 'idempotence[dynamodb-async]'``.

    ``table``
        Table name. The table must exist (see :meth:`create_table`).
    ``region``, ``endpoint_url``
        Passed to the clients; ``None`` uses boto's defaults (``AWS_REGION``...).
    ``client``
        A ready boto3 DynamoDB client for the sync methods. The async methods then run it
        in a worker thread (so its credentials and configuration apply everywhere) instead
        of opening an aiobotocore client; the store never closes a client it was given.
    ``key_attr``
        Name of the partition key attribute, which holds the idempotency key.
    ``sort_key_attr``, ``sort_key_value``
        For a table with a composite primary key (single-table designs): the sort key
        attribute's name, and the constant it holds in every idempotency item (default
        ``"idempotency"``). The partition key still holds the idempotency key, so records
        spread over partitions and never share an item collection with each other.
    ``clock``
        Seconds since the epoch; decides liveness of leases and retention (not safety).
    ``boto_config``
        A ``botocore.config.Config`` merged over the defaults, which fail fast when
        DynamoDB is unreachable: 2 s connect timeout, 5 s read timeout, 2 attempts in all
        (``retries={"total_max_attempts": 2, "mode": "standard"}``; a ``retries`` given in
        ``boto_config`` replaces it whole).

    Every operation is one request: ``claim`` an ``UpdateItem`` that both creates/takes over
    the item and bumps the fence, returning the existing item on failure
    (``ReturnValuesOnConditionCheckFailure=ALL_OLD``); ``complete``/``release``/``renew``
    an ``UpdateItem`` conditional on the fence; ``get`` a strongly consistent ``GetItem``;
    ``delete`` a ``DeleteItem``.

    Async: one aiobotocore client per running event loop, opened on first use and closed by
    :meth:`aclose` or, at the latest, when ``asyncio.run`` shuts its loop down, so a store
    object can serve one ``asyncio.run`` per Lambda invocation without touching a dead loop.

    Results: ``max_result_bytes`` (4 MiB) bounds the *uncompressed* result. Results of 1 KiB
    or more are zlib-compressed; if the compressed result still does not fit in a 400 KB
    item, :meth:`complete` raises :class:`ResultTooLargeError` (a
    :class:`~idempotence.ResultNotStoredError`) without sending anything.
    """

    max_result_bytes: ClassVar[int] = 4 * 1024 * 1024
    uses_client_clock: ClassVar[bool] = True
    #: The attribute the table's Time to Live must be enabled on (epoch seconds).
    ttl_attribute: ClassVar[str] = _EXPIRATION
    #: Seconds the physical TTL (``expiration``) outlives the logical retention, so a fence
    #: survives a while after the record stops being readable.
    expiration_grace: ClassVar[int] = 3600

    def __init__(
        self,
        table: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        client: DynamoDBClient | None = None,
        key_attr: str = "id",
        sort_key_attr: str | None = None,
        sort_key_value: str = "idempotency",
        clock: Clock | None = None,
        boto_config: Config | None = None,
    ) -> None:
        if table.lower().startswith("dynamodb:"):
            # A URL given where the table name is expected: read it as from_url does.
            parsed = self.parse_url(table)
            table = parsed["table"]
            region = merge_option("region", region, None, parsed["region"])
            endpoint_url = merge_option("endpoint_url", endpoint_url, None, parsed["endpoint_url"])
            key_attr = merge_option("key_attr", key_attr, "id", parsed["key_attr"])
            sort_key_attr = merge_option(
                "sort_key_attr", sort_key_attr, None, parsed["sort_key_attr"]
            )
            sort_key_value = merge_option(
                "sort_key_value", sort_key_value, "idempotency", parsed["sort_key_value"]
            )
        if not _TABLE_NAME.match(table):
            raise ValueError(f"invalid DynamoDB table name {table!r}: 3-255 of [A-Za-z0-9_.-]")
        _check_attributes(key_attr, sort_key_attr)
        self.table = table
        self.region = region
        self.endpoint_url = endpoint_url
        self.key_attr = key_attr
        self.sort_key_attr = sort_key_attr
        self.sort_key_value = sort_key_value
        self.clock: Clock = clock or system_clock
        self.boto_config = boto_config
        self._given_client = client
        self._client: Any = None
        self._client_pid = 0
        self._session: AioSession | None = None
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._names = {
            "#pk": key_attr,
            "#status": _STATUS,
            "#fingerprint": _FINGERPRINT,
            "#fence": _FENCE,
            "#lease": _LEASE,
            "#expires": _EXPIRES,
            "#expiration": _EXPIRATION,
            "#result": _RESULT,
            "#encoding": _ENCODING,
            "#claim": _CLAIM_ID,
        }

    @classmethod
    def parse_url(cls, url: str) -> dict[str, Any]:
        """The constructor arguments of ``dynamodb://TABLE`` (or ``dynamodb:///TABLE``, the
        same table), checked without connecting. Options: ``region``, ``endpoint_url``,
        ``key_attr``, ``sort_key_attr``, ``sort_key_value`` (values URL-encoded); any other
        is refused with ``ValueError``."""
        parts = urlsplit(url)
        table = unquote(parts.netloc + parts.path)
        table = table[1:] if not parts.netloc and table.startswith("/") else table
        table = table.rstrip("/")
        if not _TABLE_NAME.match(table):
            raise ValueError(
                f"invalid DynamoDB table name {table!r} in the store URL: 3-255 of "
                "[A-Za-z0-9_.-], e.g. dynamodb://my-table?region=eu-west-1"
            )
        known = ("endpoint_url", "key_attr", "region", "sort_key_attr", "sort_key_value")
        query = url_query(url, known)
        kwargs: dict[str, Any] = {
            "table": table,
            "region": query.get("region"),
            "endpoint_url": query.get("endpoint_url"),
            "key_attr": query.get("key_attr", "id"),
            "sort_key_attr": query.get("sort_key_attr"),
            "sort_key_value": query.get("sort_key_value", "idempotency"),
        }
        _check_attributes(kwargs["key_attr"], kwargs["sort_key_attr"])
        return kwargs

    @classmethod
    def from_url(cls, url: str) -> DynamoDBStore:
        """The store of a ``dynamodb://`` URL (see :meth:`parse_url`)."""
        return cls(**cls.parse_url(url))

    def __repr__(self) -> str:
        return f"DynamoDBStore(table={self.table!r}, region={self.region!r})"

    # -- clients ------------------------------------------------------------------------
    def _config(self, *, aio: bool = False) -> Any:
        """The fail-fast defaults with ``boto_config`` merged over them (an ``AioConfig``
        for the aiobotocore client)."""
        if aio:
            config_class = require("aiobotocore.config", "dynamodb-async").AioConfig
        else:
            config_class = require("botocore.config", "dynamodb").Config
        config = config_class(
            connect_timeout=2,
            read_timeout=5,
            # botocore's `max_attempts` counts *retries* (2 would be 3 attempts, ~15 s of
            # read timeouts on a stalled network); `total_max_attempts` counts attempts.
            retries={"total_max_attempts": 2, "mode": "standard"},
            max_pool_connections=32,
        )
        return config.merge(self.boto_config) if self.boto_config is not None else config

    def _sync_client(self) -> Any:
        if self._given_client is not None:
            return self._given_client
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                boto3 = require("boto3", "dynamodb")
                session = boto3.session.Session()  # own session: nothing shared, fork-safe
                self._client = session.client(
                    "dynamodb",
                    region_name=self.region,
                    endpoint_url=self.endpoint_url,
                    config=self._config(),
                )
                self._client_pid = os.getpid()
            return self._client

    async def _open_async_client(self) -> tuple[Any, AsyncGenerator[None, None]]:
        with self._lock:
            if self._session is None:
                self._session = require("aiobotocore.session", "dynamodb-async").get_session()
            session = self._session
        return await open_aio_client(
            session,
            "dynamodb",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            config=self._config(aio=True),
        )

    async def _async_client(self) -> Any:
        return await loop_client(self._lock, self._async_clients, self._open_async_client)

    def close(self) -> None:
        """Close the boto3 client this store opened (not a client it was given). Async
        clients belong to their event loops: :meth:`aclose` closes the running loop's."""
        with self._lock:
            client, self._client = self._client, None
            forget_closed_loops(self._async_clients)
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the aiobotocore client of the running loop, and the boto3 client."""
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
        self.close()

    # -- drivers ------------------------------------------------------------------------
    def _run(self, steps: _Steps[_T]) -> _T:
        client = self._sync_client()

        def step(request: Any) -> Any:
            if isinstance(request, _Sleep):
                time.sleep(request.seconds)
                return None
            try:
                return getattr(client, request.method)(**request.kwargs)
            except Exception as exc:  # thrown into the steps, translated
                raise self._translate(exc)  # noqa: B904 - the cause is set where it differs

        return drive(steps, step, catch=Exception)

    async def _arun(self, steps: _Steps[_T]) -> _T:
        if self._given_client is not None:
            return await asyncio.to_thread(self._run, steps)
        client = await self._async_client()

        async def step(request: Any) -> Any:
            if isinstance(request, _Sleep):
                await asyncio.sleep(request.seconds)
                return None
            try:
                return await getattr(client, request.method)(**request.kwargs)
            except Exception as exc:
                raise self._translate(exc)  # noqa: B904 - as in _run

        return await adrive(steps, step, catch=Exception)

    def _translate(self, exc: Exception) -> Exception:
        if _error_code(exc) == "ResourceNotFoundException":
            missing = StoreError(
                f"DynamoDB table {self.table!r} not found (region {self.region or 'default'}"
                f"{', endpoint ' + self.endpoint_url if self.endpoint_url else ''}): create "
                "it with DynamoDBStore(...).create_table() or the template in "
                "idempotence.stores._dynamodb.CLOUDFORMATION_TEMPLATE, or fix the name."
            )
            missing.__cause__ = exc
            return missing
        return exc

    # -- requests and items -------------------------------------------------------------
    def _key(self, key: str) -> dict[str, Any]:
        item_key: dict[str, Any] = {self.key_attr: {"S": key}}
        if self.sort_key_attr is not None:
            item_key[self.sort_key_attr] = {"S": self.sort_key_value}
        return item_key

    def _update(
        self, key: str, update: str, condition: str, values: dict[str, Any], **extra: Any
    ) -> _Call:
        used = _placeholders(update, condition)
        return _Call(
            "update_item",
            {
                "TableName": self.table,
                "Key": self._key(key),
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {p: n for p, n in self._names.items() if p in used},
                "ExpressionAttributeValues": {p: v for p, v in values.items() if p in used},
                **extra,
            },
        )

    def _record(self, item: Mapping[str, Any]) -> Record:
        """An item as a Record. An in-progress record stays readable while its lease is live
        (``expires_at`` = max(expires_at, lease_expires_at)): ``renew`` extends the lease
        without rewriting retention, as DynamoDB updates have no ``max``."""
        try:
            status = Status(item[_STATUS]["S"])
            lease = float(item[_LEASE]["N"])
            expires = float(item[_EXPIRES]["N"])
            result: bytes | None = None
            if status is Status.COMPLETED and _RESULT in item:
                result = bytes(item[_RESULT]["B"])
                encoding = item.get(_ENCODING, {}).get("S")
                if encoding == "zlib":
                    result = zlib.decompress(result)
                elif encoding is not None:
                    raise ValueError(f"unknown result_encoding {encoding!r}")
            return Record(
                key=str(item[self.key_attr]["S"]),
                status=status,
                fingerprint=str(item[_FINGERPRINT]["S"]),
                fence=int(Decimal(item[_FENCE]["N"])),
                lease_expires_at=lease,
                expires_at=max(expires, lease) if status is Status.IN_PROGRESS else expires,
                result=result,
            )
        except (KeyError, TypeError, ValueError, ArithmeticError, zlib.error) as exc:
            raise CorruptRecordError(
                f"DynamoDB item in table {self.table!r} is not an idempotency record "
                f"({type(exc).__name__}: {exc}); delete the key or check key_attr/table"
            ) from exc

    def _expiration(self, until: float) -> dict[str, str]:
        return {"N": str(math.ceil(until) + self.expiration_grace)}

    # -- capability: DynamoDBRecords (idempotence.stores.capabilities) -------------------
    def item_key(self, key: str) -> dict[str, Any]:
        """The typed primary key of the item holding ``key`` (the sort key, if the table
        has one, holds ``sort_key_value``). See
        :class:`~idempotence.stores.capabilities.DynamoDBRecords`."""
        return self._key(key)

    def record_from_item(self, item: Mapping[str, Any]) -> Record:
        """The record an item holds; :class:`~idempotence.CorruptRecordError` if none."""
        return self._record(item)

    def completion_write(
        self, key: str, fingerprint: str, result: bytes, *, ttl: float, now: float
    ) -> dict[str, Any]:
        """The ``TransactWriteItems`` entry completing ``key`` with ``result`` if it may be
        claimed at ``now`` (the claim's condition; the fence moves as a claim's would)."""
        stored, encoding = _encode(result)
        values: dict[str, Any] = {
            ":completed": {"S": Status.COMPLETED.value},
            ":in_progress": {"S": Status.IN_PROGRESS.value},
            ":fingerprint": {"S": fingerprint},
            **fresh_values(now),
            ":now": _num(now),
            ":expires_at": _num(now + ttl),
            ":expiration": self._expiration(now + ttl),
            ":result": {"B": stored},
        }
        update = (
            "SET #status = :completed, #fingerprint = :fingerprint, "
            f"{CLAIM_FENCE}, #lease = :now, "
            "#expires = :expires_at, #expiration = :expiration, #result = :result"
        )
        if encoding:
            update += ", #encoding = :encoding REMOVE #claim"
            values[":encoding"] = {"S": encoding}
        else:
            update += " REMOVE #encoding, #claim"
        call = self._update(
            key, update, CLAIM_CONDITION, values, ReturnValuesOnConditionCheckFailure="ALL_OLD"
        )
        return {"Update": call.kwargs}

    def call(self, method: str, request: Mapping[str, Any]) -> Any:
        """``client.<method>(**request)`` on the store's boto3 client; its response."""
        return self._run(_one(_Call(method, dict(request))))

    async def acall(self, method: str, request: Mapping[str, Any]) -> Any:
        """Async :meth:`call` (aiobotocore, or the given sync client in a thread)."""
        return await self._arun(_one(_Call(method, dict(request))))

    # -- capability: Maintainable (idempotence.stores.capabilities) ----------------------
    def _scan_items(
        self, namespace: str | None, status: Status | None, batch_size: int
    ) -> Iterator[dict[str, Any]]:
        """The table's items (``Scan`` pages of at most ``batch_size``, filtered on the
        server by namespace prefix, status and sort key value)."""
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        conditions: list[str] = []
        if namespace is not None:
            names["#k"] = self.key_attr
            values[":head"] = {"S": namespace + "#"}
            conditions.append("begins_with(#k, :head)")
        if status is not None:
            names["#st"] = _STATUS
            values[":st"] = {"S": status.value}
            conditions.append("#st = :st")
        if self.sort_key_attr is not None:
            names["#sk"] = self.sort_key_attr
            values[":sk"] = {"S": self.sort_key_value}
            conditions.append("#sk = :sk")
        request: dict[str, Any] = {"TableName": self.table, "Limit": batch_size}
        if conditions:
            request.update(
                FilterExpression=" AND ".join(conditions),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        while True:
            page = self.call("scan", request)
            yield from page.get("Items", [])
            start = page.get("LastEvaluatedKey")
            if not start:
                return
            request["ExclusiveStartKey"] = start

    def _records(
        self, namespace: str | None, status: Status | None, batch_size: int
    ) -> Iterator[Record]:
        for item in self._scan_items(namespace, status, batch_size):
            try:
                yield self._record(item)
            except CorruptRecordError:
                continue  # not a record: another user of the table (effects state items)

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
        """The matching records: a paginated ``Scan`` (namespace and status filtered on the
        server). Items past their ``expiration`` that DynamoDB's TTL has not deleted yet are
        included. See :class:`~idempotence.stores.capabilities.Maintainable`."""
        now = self.clock()
        yield from matching(
            self._records(namespace, status, batch_size),
            now,
            namespace,
            status,
            older_than,
            expired,
            limit,
        )

    def purge(
        self,
        *,
        namespace: str | None = None,
        expired: bool = True,
        batch_size: int = DEFAULT_BATCH,
        progress: Progress | None = None,
    ) -> int:
        """Delete the matching records, found by a paginated ``Scan``. With
        ``expired=False`` they go 25 per ``BatchWriteItem`` (unprocessed items are sent
        again). With ``expired`` (the default) each deletion must still find the record
        purgeable, so a record claimed again since the scan is kept: 25 conditional
        deletes per ``TransactWriteItems``, and item by item for a batch whose transaction
        is cancelled. DynamoDB's TTL deletes expired items by itself (within days), so this
        is only needed to reclaim space sooner. Returns how many were deleted."""
        now = self.clock()
        total = 0
        chosen = (
            self.item_key(r.key)
            for r in self._records(namespace, None, batch_size)
            if matches(r, now, namespace=namespace, expired=expired)
        )
        for keys in batches(chosen, 25):
            deleted = self._delete_conditionally(keys, now) if expired else self._delete(keys)
            total += deleted
            if deleted and progress is not None:
                progress(deleted)
        return total

    def _delete(self, keys: list[dict[str, Any]]) -> int:
        requests = [{"DeleteRequest": {"Key": key}} for key in keys]
        for attempt in range(10):
            reply = self.call("batch_write_item", {"RequestItems": {self.table: requests}})
            requests = reply.get("UnprocessedItems", {}).get(self.table, [])
            if not requests:
                return len(keys)
            time.sleep(min(2.0, 0.05 * 2**attempt))
        raise StoreError(
            f"DynamoDB kept {len(requests)} deletions unprocessed (throttled): retry the purge"
        )

    def _delete_conditionally(self, keys: list[dict[str, Any]], now: float) -> int:
        condition = {
            "ConditionExpression": "#e <= :now AND #l <= :now",
            "ExpressionAttributeNames": {"#e": _EXPIRES, "#l": _LEASE},
            "ExpressionAttributeValues": {":now": _num(now)},
        }
        writes = [{"Delete": {"TableName": self.table, "Key": k, **condition}} for k in keys]
        try:
            self.call("transact_write_items", {"TransactItems": writes})
            return len(keys)
        except Exception as exc:
            if _error_code(exc) != "TransactionCanceledException":
                raise
        deleted = 0
        for write in writes:  # some changed since the scan: keep those
            try:
                self.call("delete_item", write["Delete"])
                deleted += 1
            except Exception as exc:
                if not _is_conditional_failure(exc):
                    raise
        return deleted

    def stats(self) -> StoreStats:
        """Counts by status and namespace (one scan)."""
        return stats_of(self.scan(), self.clock())

    # Owned: the caller's fence, in progress, and not past retention (effective retention of
    # an in-progress item is the later of expires_at and the lease).
    _OWNED = "#fence = :fence AND #status = :in_progress AND (#expires > :now OR #lease > :now)"

    def _claim_op(self, key: str, fingerprint: str, lease: float, ttl: float) -> _Steps[Claim]:
        now = self.clock()
        expires_at = now + max(ttl, lease)
        claim_id = uuid.uuid4().hex
        call = self._update(
            key,
            "SET #status = :in_progress, #fingerprint = :fingerprint, "
            f"{CLAIM_FENCE}, #lease = :lease_until, "
            "#expires = :expires_at, #expiration = :expiration, #claim = :claim_id "
            "REMOVE #result, #encoding",
            CLAIM_CONDITION,
            {
                ":in_progress": {"S": Status.IN_PROGRESS.value},
                ":fingerprint": {"S": fingerprint},
                **fresh_values(now),
                ":lease_until": _num(now + lease),
                ":expires_at": _num(expires_at),
                ":expiration": self._expiration(expires_at),
                ":claim_id": {"S": claim_id},
                ":now": _num(now),
            },
            ReturnValues="ALL_NEW",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        try:
            response = yield call
        except Exception as exc:
            if not _is_conditional_failure(exc):
                raise
            item = getattr(exc, "response", {}).get("Item")
            if not item:
                raise StoreError(
                    f"claim of {key!r} failed its condition but the endpoint did not return "
                    "the existing item (ReturnValuesOnConditionCheckFailure=ALL_OLD); use "
                    "DynamoDB or an emulator that supports it"
                ) from exc
            # Our own claim can be the existing item when a timed-out request was retried.
            mine = item.get(_CLAIM_ID, {}).get("S") == claim_id
            return Claim(acquired=mine, record=self._record(item), now=now)
        return Claim(acquired=True, record=self._record(response["Attributes"]), now=now)

    def _owned_steps(
        self,
        key: str,
        fence: int,
        update: str,
        values: dict[str, Any],
        now: float,
        landed: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> _Steps[bool]:
        """Apply ``update`` if ``fence`` owns ``key``. ``landed(item)`` tells, from the item
        that failed the condition, whether it is this very write, applied by an earlier
        attempt of the same request (botocore retries a request that timed out)."""
        values = {
            **values,
            ":fence": {"N": str(int(fence))},
            ":in_progress": {"S": Status.IN_PROGRESS.value},
            ":now": _num(now),
        }
        extra = {"ReturnValuesOnConditionCheckFailure": "ALL_OLD"} if landed else {}
        try:
            yield self._update(key, update, self._OWNED, values, **extra)
        except Exception as exc:
            if _is_conditional_failure(exc):
                item = getattr(exc, "response", {}).get("Item")
                return bool(landed is not None and item and landed(item))
            if _is_item_too_large(exc):
                raise ResultTooLargeError(
                    f"DynamoDB refused the record of {key!r}: {exc}. The result (with the "
                    "key and fingerprint) does not fit in one 400 KB item. Return a smaller "
                    "result, keep large payloads elsewhere (e.g. S3) and return a reference, "
                    "or use a store without this limit (Redis, PostgreSQL).",
                    key=key,
                ) from exc
            raise
        return True

    def _complete_op(self, key: str, fence: int, result: bytes, ttl: float) -> _Steps[bool]:
        now = self.clock()
        stored, encoding = _encode(result)
        size = self._item_size(key, stored, encoding)
        if size > MAX_ITEM_BYTES:
            compressed = f", {len(stored)} compressed" if encoding else ""
            raise ResultTooLargeError(
                f"the result of {key!r} is {len(result)} bytes{compressed}: the record would "
                f"be about {size} bytes, over DynamoDB's 400 KB item limit. Return a smaller "
                "result, keep large payloads elsewhere (e.g. S3) and return a reference, or "
                "use a store without this limit (Redis, PostgreSQL).",
                key=key,
            )
        request_id = uuid.uuid4().hex  # tells a retry of this request from another call
        update = "SET #status = :completed, #result = :result, #expires = :expires_at, "
        update += "#expiration = :expiration, #claim = :request_id"
        update += ", #encoding = :encoding" if encoding else " REMOVE #encoding"
        return (
            yield from self._owned_steps(
                key,
                fence,
                update,
                {
                    ":completed": {"S": Status.COMPLETED.value},
                    ":result": {"B": stored},
                    ":encoding": {"S": encoding or ""},
                    ":expires_at": _num(now + ttl),
                    ":expiration": self._expiration(now + ttl),
                    ":request_id": {"S": request_id},
                },
                now,
                landed=lambda item: item.get(_CLAIM_ID, {}).get("S") == request_id,
            )
        )

    def _item_size(self, key: str, stored: bytes, encoding: str | None) -> int:
        """An upper bound of the completed item's size as DynamoDB counts it."""
        size = len(self.key_attr) + len(key.encode())
        if self.sort_key_attr is not None:
            size += len(self.sort_key_attr) + len(self.sort_key_value.encode())
        size += sum(len(name) for name in _ATTRIBUTES) + 4 * 21  # four numbers, <= 21 each
        size += len(Status.COMPLETED.value) + 32 + len(encoding or "") + _FINGERPRINT_ALLOWANCE
        return size + len(stored)

    def _release_op(self, key: str, fence: int) -> _Steps[bool]:
        # Keep the item and its fence (and its physical TTL): ending retention and lease
        # makes it read as absent, and the next claim takes it over with fence + 1.
        now = self.clock()
        return self._owned_steps(key, fence, "SET #expires = :now, #lease = :now", {}, now)

    def _renew_op(self, key: str, fence: int, lease: float) -> _Steps[bool]:
        # `expiration` must stay past the lease and never shrink, but an update has no max():
        # adding the lease duration keeps it past the new lease (a renewal only succeeds
        # before the old effective retention, which `expiration` already exceeds).
        now = self.clock()
        return self._owned_steps(
            key,
            fence,
            "SET #lease = :lease_until, #expiration = #expiration + :lease_seconds",
            {":lease_until": _num(now + lease), ":lease_seconds": {"N": str(math.ceil(lease))}},
            now,
        )

    def _get_op(self, key: str) -> _Steps[Record | None]:
        response = yield _Call(
            "get_item", {"TableName": self.table, "Key": self._key(key), "ConsistentRead": True}
        )
        item = response.get("Item")
        if not item:
            return None
        record = self._record(item)
        return None if record.is_expired(self.clock()) else record

    def _delete_op(self, key: str) -> _Steps[bool]:
        response = yield _Call(
            "delete_item",
            {"TableName": self.table, "Key": self._key(key), "ReturnValues": "ALL_OLD"},
        )
        return bool(response.get("Attributes"))

    # -- capability: BatchClaims (idempotence.stores.capabilities) ----------------------
    def _transact(self, writes: Sequence[dict[str, Any]]) -> _Steps[list[Any]]:
        """Apply ``writes`` (``TransactWriteItems`` entries on distinct items) in as few
        transactions as the limits allow (100 items, 4 MB). Per write: ``None`` (applied),
        the item whose condition failed (``ALL_OLD``; ``{}`` if the endpoint returned
        none), or :data:`_AGAIN` (its transaction was cancelled by another item's failure
        or a conflict: not applied, send it again)."""
        out: list[Any] = [None] * len(writes)
        for chunk in _chunks(writes):
            request = {
                "TransactItems": [writes[i] for i in chunk],
                # a retried request (botocore retries timeouts) is applied once
                "ClientRequestToken": uuid.uuid4().hex,
            }
            try:
                yield _Call("transact_write_items", request)
            except Exception as exc:
                if _error_code(exc) != "TransactionCanceledException":
                    raise
                reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
                if len(reasons) != len(chunk):
                    raise StoreError(
                        "DynamoDB cancelled a batch transaction without a reason per item; "
                        "use DynamoDB or an emulator that returns CancellationReasons"
                    ) from exc
                for i, reason in zip(chunk, reasons, strict=True):
                    code = reason.get("Code")
                    if code == "ConditionalCheckFailed":
                        out[i] = reason.get("Item") or {}
                    elif code in (None, "None", "TransactionConflict"):
                        out[i] = _AGAIN
                    else:
                        raise StoreError(
                            f"DynamoDB cancelled a batch transaction: {code} "
                            f"({reason.get('Message', '')})"
                        ) from exc
        return out

    def _claim_write(
        self, item: tuple[str, str, float, float], existing: Record | None, now: float, won: Record
    ) -> dict[str, Any]:
        """The transaction entry writing the claim ``won`` of ``item``: on condition the key
        is absent (``existing`` is ``None``) or still the record ``existing`` (same fence)
        and claimable, so the fence it writes is known without reading it back."""
        key, fingerprint, _lease, _ttl = item
        if existing is None:
            condition = "attribute_not_exists(#pk)"
        else:
            condition = f"#fence = :old_fence AND ({CLAIM_CONDITION})"
        call = self._update(
            key,
            "SET #status = :in_progress, #fingerprint = :fingerprint, #fence = :fence, "
            "#lease = :lease_until, #expires = :expires_at, #expiration = :expiration "
            "REMOVE #result, #encoding, #claim",
            condition,
            {
                ":in_progress": {"S": Status.IN_PROGRESS.value},
                ":fingerprint": {"S": fingerprint},
                ":fence": {"N": str(won.fence)},
                ":old_fence": {"N": str(existing.fence if existing is not None else 0)},
                ":lease_until": _num(won.lease_expires_at),
                ":expires_at": _num(won.expires_at),
                ":expiration": self._expiration(won.expires_at),
                ":now": _num(now),
            },
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        return {"Update": call.kwargs}

    def _claim_many_steps(
        self, items: Sequence[tuple[str, str, float, float]]
    ) -> _Steps[list[Claim]]:
        """One transaction claims every absent key. Where it is cancelled, each conflicting
        item comes back (``ALL_OLD``): a record that cannot be claimed is that item's
        answer; one that can (past retention, or a lapsed lease with the same fingerprint)
        is taken over in the next transaction, on condition its fence has not moved, with
        the rest. So a fresh batch costs one request, a redelivered one one, a mixed one
        two (more only under races)."""
        now = self.clock()
        out: list[Claim | None] = [None] * len(items)
        existing: list[Record | None] = [None] * len(items)
        for _ in range(_BATCH_ROUNDS):
            todo = [i for i, claim in enumerate(out) if claim is None]
            if not todo:
                break
            wins = {}
            writes = []
            for i in todo:
                key, fingerprint, lease, ttl = items[i]
                decided = decide_claim(existing[i], key, fingerprint, now=now, lease=lease, ttl=ttl)
                wins[i] = decided.record
                writes.append(self._claim_write(items[i], existing[i], now, decided.record))
            answers = yield from self._transact(writes)
            for i, answer in zip(todo, answers, strict=True):
                if answer is None:
                    out[i] = Claim(acquired=True, record=wins[i], now=now)
                elif answer is _AGAIN:
                    continue
                elif not answer:
                    raise StoreError(
                        "a batch claim failed its condition but the endpoint did not return "
                        "the existing item (ReturnValuesOnConditionCheckFailure=ALL_OLD); use "
                        "DynamoDB or an emulator that supports it"
                    )
                else:
                    record = self._record(answer)
                    key, fingerprint, lease, ttl = items[i]
                    again = decide_claim(record, key, fingerprint, now=now, lease=lease, ttl=ttl)
                    if again.acquired:  # claimable: take it over in the next round
                        existing[i] = record
                    else:
                        out[i] = Claim(acquired=False, record=record, now=now)
        if any(claim is None for claim in out):
            raise StoreError("a batch claim did not settle (keys contended); retry")
        return [claim for claim in out if claim is not None]

    def _owned_many_steps(
        self, items: Sequence[tuple[str, int]], writes: Sequence[dict[str, Any] | Exception]
    ) -> _Steps[list[Any]]:
        """Apply fence-conditional ``writes`` (one per ``(key, fence)``; an exception in a
        write's place is that item's answer) in transactions: per item ``True`` (applied),
        ``False`` (its fence no longer owns the key) or the exception."""
        out: list[Any] = [w if isinstance(w, Exception) else None for w in writes]
        for _ in range(_BATCH_ROUNDS):
            todo = [i for i, value in enumerate(out) if value is None]
            if not todo:
                return out
            answers = yield from self._transact([writes[i] for i in todo])  # type: ignore[misc]
            for i, answer in zip(todo, answers, strict=True):
                if answer is not _AGAIN:
                    out[i] = answer is None
        raise StoreError("a batch of completions did not settle (keys contended); retry")

    def _owned_write(
        self, key: str, fence: int, update: str, values: dict[str, Any], now: float
    ) -> dict[str, Any]:
        values = {
            **values,
            ":fence": {"N": str(int(fence))},
            ":in_progress": {"S": Status.IN_PROGRESS.value},
            ":now": _num(now),
        }
        return {"Update": self._update(key, update, self._OWNED, values).kwargs}

    def _complete_many_steps(
        self, items: Sequence[tuple[str, int, bytes, float]]
    ) -> _Steps[list[Any]]:
        now = self.clock()
        writes: list[dict[str, Any] | Exception] = []
        for key, fence, result, ttl in items:
            stored, encoding = _encode(result)
            size = self._item_size(key, stored, encoding)
            if size > MAX_ITEM_BYTES:
                writes.append(
                    ResultTooLargeError(
                        f"the result of {key!r} is {len(result)} bytes: the record would be "
                        f"about {size} bytes, over DynamoDB's 400 KB item limit. Return a "
                        "smaller result, keep large payloads elsewhere (e.g. S3) and return a "
                        "reference, or use a store without this limit (Redis, PostgreSQL).",
                        key=key,
                    )
                )
                continue
            update = "SET #status = :completed, #result = :result, #expires = :expires_at, "
            update += "#expiration = :expiration"
            update += (
                ", #encoding = :encoding REMOVE #claim" if encoding else " REMOVE #encoding, #claim"
            )
            values = {
                ":completed": {"S": Status.COMPLETED.value},
                ":result": {"B": stored},
                ":encoding": {"S": encoding or ""},
                ":expires_at": _num(now + ttl),
                ":expiration": self._expiration(now + ttl),
            }
            writes.append(self._owned_write(key, fence, update, values, now))
        pairs = [(key, fence) for key, fence, _, _ in items]
        return (yield from self._owned_many_steps(pairs, writes))

    def _release_many_steps(self, items: Sequence[tuple[str, int]]) -> _Steps[list[Any]]:
        now = self.clock()
        update = "SET #expires = :now, #lease = :now"
        writes: list[dict[str, Any] | Exception] = [
            self._owned_write(key, fence, update, {}, now) for key, fence in items
        ]
        return (yield from self._owned_many_steps(items, writes))

    def claim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Claim]:
        """Claim every ``(key, fingerprint, lease, ttl)`` with ``TransactWriteItems`` (see
        :meth:`_claim_many_steps`; :class:`~idempotence.stores.capabilities.BatchClaims`).
        A transactional write consumes twice the write capacity of a plain one."""
        return self._run(self._claim_many_steps(items))

    def complete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[Any]:
        """Complete every ``(key, fence, result, ttl)`` in one transaction (per 100 items
        or 4 MB; again for the rest when one item's fence lost its key). A result over
        the 400 KB item limit gets :class:`~idempotence.ResultTooLargeError` in its place."""
        return self._run(self._complete_many_steps(items))

    def release_many(self, items: Sequence[tuple[str, int]]) -> list[Any]:
        """Release every ``(key, fence)`` in one transaction (as :meth:`complete_many`)."""
        return self._run(self._release_many_steps(items))

    async def aclaim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Claim]:
        """Async :meth:`claim_many`."""
        return await self._arun(self._claim_many_steps(items))

    async def acomplete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[Any]:
        """Async :meth:`complete_many`."""
        return await self._arun(self._complete_many_steps(items))

    async def arelease_many(self, items: Sequence[tuple[str, int]]) -> list[Any]:
        """Async :meth:`release_many`."""
        return await self._arun(self._release_many_steps(items))

    # -- operations: OperationStore pairs the steps with _run/_arun -----------------------
    def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        """Store ``result`` (zlib-compressed from 1 KiB) and mark the record completed, if
        ``fence`` still owns it. Raises :class:`ResultTooLargeError`, writing nothing, when
        the item would exceed DynamoDB's 400 KB limit."""
        return super().complete(key, fence, result, ttl=ttl)

    # -- table --------------------------------------------------------------------------
    def create_table(
        self,
        *,
        billing_mode: str = "PAY_PER_REQUEST",
        read_capacity: int = 5,
        write_capacity: int = 5,
        timeout: float = 300.0,
    ) -> bool:
        """Create the table (key schema from ``key_attr``/``sort_key_attr``) and enable TTL
        on ``expiration``; wait until the table is active. Idempotent: an existing table is
        checked (key schema, TTL) and TTL enabled if it is not. Returns whether the table
        was created. Capacities apply to ``billing_mode="PROVISIONED"`` only."""
        return self._run(
            self._create_table_steps(billing_mode, read_capacity, write_capacity, timeout)
        )

    async def acreate_table(
        self,
        *,
        billing_mode: str = "PAY_PER_REQUEST",
        read_capacity: int = 5,
        write_capacity: int = 5,
        timeout: float = 300.0,
    ) -> bool:
        """Async :meth:`create_table`."""
        return await self._arun(
            self._create_table_steps(billing_mode, read_capacity, write_capacity, timeout)
        )

    def _create_table_steps(
        self, billing_mode: str, read_capacity: int, write_capacity: int, timeout: float
    ) -> _Steps[bool]:
        schema = [{"AttributeName": self.key_attr, "KeyType": "HASH"}]
        if self.sort_key_attr is not None:
            schema.append({"AttributeName": self.sort_key_attr, "KeyType": "RANGE"})
        request: dict[str, Any] = {
            "TableName": self.table,
            "KeySchema": schema,
            "AttributeDefinitions": [
                {"AttributeName": k["AttributeName"], "AttributeType": "S"} for k in schema
            ],
            "BillingMode": billing_mode,
        }
        if billing_mode == "PROVISIONED":
            request["ProvisionedThroughput"] = {
                "ReadCapacityUnits": read_capacity,
                "WriteCapacityUnits": write_capacity,
            }
        created = True
        try:
            yield _Call("create_table", request)
        except Exception as exc:
            if _error_code(exc) != "ResourceInUseException":
                raise
            created = False
        deadline = time.monotonic() + timeout
        while True:
            table = (yield _Call("describe_table", {"TableName": self.table}))["Table"]
            if not created and table.get("KeySchema") != schema:
                raise StoreError(
                    f"table {self.table!r} exists with key schema {table.get('KeySchema')}, "
                    f"not {schema}: pass matching key_attr/sort_key_attr or another table"
                )
            if table.get("TableStatus") == "ACTIVE":
                break
            if time.monotonic() > deadline:
                raise StoreError(f"table {self.table!r} not active after {timeout:.0f} s")
            yield _Sleep(1.0)
        ttl = (yield _Call("describe_time_to_live", {"TableName": self.table})).get(
            "TimeToLiveDescription", {}
        )
        if ttl.get("TimeToLiveStatus") in {"ENABLED", "ENABLING"}:
            if ttl.get("AttributeName") != _EXPIRATION:
                raise StoreError(
                    f"table {self.table!r} has TTL on {ttl.get('AttributeName')!r}; this store "
                    f"needs it on {_EXPIRATION!r} (a table has one TTL attribute)"
                )
        else:
            yield _Call(
                "update_time_to_live",
                {
                    "TableName": self.table,
                    "TimeToLiveSpecification": {"Enabled": True, "AttributeName": _EXPIRATION},
                },
            )
        return created
