"""DynamoDB effects, over the :class:`~idempotence.stores.capabilities.DynamoDBRecords`
capability (and, on the user's own items, a plain boto3 / aiobotocore client).

- :func:`dynamodb_transaction`: the user's writes and the completed record in one
  ``TransactWriteItems``.
- :class:`DynamoDBStates`: the :class:`~idempotence.effects.StateGuard` backend (states as
  items of the store's table).
- :func:`dynamodb_transition` and friends: compare-and-set of an attribute of a user item.

A request program is a generator yielding ``(method, request)`` pairs (or a
:class:`Sleep`, or a :class:`ReadRecord`) and receiving each response; :func:`drive` /
:func:`adrive` run it through the store's ``call`` / ``acall``, so the logic exists once
for sync and async.

Twins kept: each public function and its ``a``-twin (``dynamodb_transaction`` /
``adynamodb_transaction``...) repeat only their signatures and argument checks; the work is
the one request program above, and a shared ``**kwargs`` signature would lose the documented
parameters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from .._codec import JSONSerializer, Serializer
from .._config import seconds
from .._keys import digest
from .._record import Claim
from ..engine import adrive as adrive_steps
from ..engine import drive as drive_steps
from ..engine import replay_record
from ..stores.capabilities import DynamoDBRecords
from ._outcome import NO_FINGERPRINT, TransactionOutcome, check_existing, encoder
from ._states import Backend, State, text

__all__ = [
    "DynamoDBStates",
    "adynamodb_transaction",
    "adynamodb_transition",
    "dynamodb_transaction",
    "dynamodb_transition",
    "dynamodb_transition_update",
]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Sleep:
    """A pause of a request program (backoff between attempts)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """The record an item holds (``store.record_from_item``): a request, because reading
    it back may be one (a ``LargeResultStore``'s offloaded result is an S3 ``GetObject``,
    awaited through its ``arecord_from_item`` in async code)."""

    item: Mapping[str, Any]


Request = tuple[str, dict[str, Any]]
Program = Generator[Request | Sleep | ReadRecord, Any, _T]


def drive(store: DynamoDBRecords, steps: Program[_T]) -> _T:
    """Run ``steps`` with ``store.call``; a failing request is thrown into them."""

    def step(request: Request | Sleep | ReadRecord) -> Any:
        if isinstance(request, Sleep):
            time.sleep(request.seconds)
            return None
        if isinstance(request, ReadRecord):
            return store.record_from_item(request.item)
        return store.call(*request)

    return drive_steps(steps, step, catch=Exception)


async def adrive(store: DynamoDBRecords, steps: Program[_T]) -> _T:
    """Run ``steps`` with ``store.acall`` (the same steps as :func:`drive`); a record is
    read with the store's ``arecord_from_item`` when it has one (the capability does not
    require it: ``record_from_item`` of a plain store does no I/O)."""

    async def step(request: Request | Sleep | ReadRecord) -> Any:
        if isinstance(request, Sleep):
            await asyncio.sleep(request.seconds)
            return None
        if isinstance(request, ReadRecord):
            read = getattr(store, "arecord_from_item", None)
            if read is not None:
                return await read(request.item)
            return store.record_from_item(request.item)
        return await store.acall(*request)

    return await adrive_steps(steps, step, catch=Exception)


def is_condition_failure(exc: BaseException) -> bool:
    """botocore's ``ConditionalCheckFailedException`` (sync or async client)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    return bool(response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


def _require(store: Any) -> DynamoDBRecords:
    if not isinstance(store, DynamoDBRecords):
        raise TypeError(
            "dynamodb_transaction needs a store with the DynamoDBRecords capability "
            f"(idempotence.stores.capabilities), e.g. DynamoDBStore, not "
            f"{type(store).__qualname__}"
        )
    return store


# -- one TransactWriteItems ------------------------------------------------------------------
_MAX_ITEMS = 100
_CONFLICT_ATTEMPTS = 5


def _transaction_steps(
    store: DynamoDBRecords,
    key: str,
    writes: Sequence[Mapping[str, Any]],
    result: Any,
    fingerprint: str,
    ttl: float,
    serializer: Serializer,
    result_type: Any,
) -> Program[TransactionOutcome[Any]]:
    if len(writes) >= _MAX_ITEMS:
        raise ValueError(
            f"TransactWriteItems takes {_MAX_ITEMS} items including the record: "
            f"give at most {_MAX_ITEMS - 1} writes"
        )
    # A class ``result_type`` does not name could never be replayed: refused before writing.
    data = encoder(serializer, lambda: result_type)(result)
    delay = 0.05
    for attempt in range(_CONFLICT_ATTEMPTS):
        now = store.clock()
        record_write = store.completion_write(key, fingerprint, data, ttl=ttl, now=now)
        try:
            yield "transact_write_items", {"TransactItems": [*writes, record_write]}
        except Exception as exc:
            reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
            codes = [str(r.get("Code")) for r in reasons]
            if len(reasons) == len(writes) + 1 and codes[-1] == "ConditionalCheckFailed":
                item = reasons[-1].get("Item")
                if not item:  # an endpoint that does not return it: read it
                    response = yield (
                        "get_item",
                        {
                            "TableName": store.table,
                            "Key": store.item_key(key),
                            "ConsistentRead": True,
                        },
                    )
                    item = response.get("Item")
                if not item:
                    continue  # it expired and was deleted meanwhile: try again
                record = yield ReadRecord(item)
                check_existing(Claim(acquired=False, record=record, now=now), key, fingerprint)
                return TransactionOutcome(
                    True, replay_record(record, serializer, result_type), record
                )
            if "TransactionConflict" in codes and attempt + 1 < _CONFLICT_ATTEMPTS:
                yield Sleep(delay)
                delay *= 2
                continue
            raise
        return TransactionOutcome(False, result, None)
    raise RuntimeError(f"transaction on {key!r} did not settle after {_CONFLICT_ATTEMPTS} tries")


def _args(
    key: str, payload: Any, ttl: float, serializer: Serializer | None
) -> tuple[str, float, Serializer]:
    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string")
    fingerprint = NO_FINGERPRINT if payload is None else digest(payload)
    return fingerprint, seconds(ttl, "ttl"), serializer or JSONSerializer()


def dynamodb_transaction(
    store: DynamoDBRecords,
    key: str,
    writes: Sequence[Mapping[str, Any]],
    *,
    result: _T = None,  # type: ignore[assignment]
    payload: Any = None,
    ttl: float = 24 * 3600.0,
    serializer: Serializer | None = None,
    result_type: Any = None,
) -> TransactionOutcome[_T]:
    """Commit ``writes`` (``TransactWriteItems`` entries: ``{"Put": ...}``, ``{"Update":
    ...}``, ``{"Delete": ...}``, ``{"ConditionCheck": ...}``, at most 99) and the completed
    record of ``key`` with ``result`` in ``store``'s table as one ``TransactWriteItems``,
    or nothing.

    The record's write is conditional (absent, past retention, or a lapsed claim): if the
    key was completed before, DynamoDB cancels the whole transaction and this returns
    ``TransactionOutcome(replayed=True, result=<stored result>)`` from the cancellation
    reason's ``Item`` (no second read). Reusing the key with another ``payload`` raises
    :class:`~idempotence.KeyReuseError`; a live claim of the normal API
    :class:`~idempotence.AlreadyInProgressError`. Cancellation for other reasons (your
    writes' own conditions) re-raises botocore's ``TransactionCanceledException``;
    ``TransactionConflict`` is retried a few times. The record is the one
    :class:`~idempotence.stores.DynamoDBStore` writes, visible through ``store.get``.
    Compute ``result`` before calling: it is committed with the writes. Replays rebuild
    only the classes ``result_type`` names: a ``result`` holding another class raises
    :class:`~idempotence.UnencodableError` before anything is written. ``store`` is any
    store with the :class:`~idempotence.stores.capabilities.DynamoDBRecords` capability
    (``TypeError`` otherwise).
    """
    fingerprint, keep, ser = _args(key, payload, ttl, serializer)
    db = _require(store)
    return drive(
        db, _transaction_steps(db, key, writes, result, fingerprint, keep, ser, result_type)
    )


async def adynamodb_transaction(
    store: DynamoDBRecords,
    key: str,
    writes: Sequence[Mapping[str, Any]],
    *,
    result: _T = None,  # type: ignore[assignment]
    payload: Any = None,
    ttl: float = 24 * 3600.0,
    serializer: Serializer | None = None,
    result_type: Any = None,
) -> TransactionOutcome[_T]:
    """Async :func:`dynamodb_transaction`."""
    fingerprint, keep, ser = _args(key, payload, ttl, serializer)
    db = _require(store)
    steps = _transaction_steps(db, key, writes, result, fingerprint, keep, ser, result_type)
    return await adrive(db, steps)


# -- compare-and-set of one attribute ----------------------------------------------------------
def _attribute_value(value: Any) -> dict[str, Any]:
    """A key value in DynamoDB's typed form; typed values (``{"S": ...}``) pass as given."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bool):
        raise TypeError("a DynamoDB key cannot be a boolean")
    if isinstance(value, (int, float, Decimal)):
        return {"N": str(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"B": bytes(value)}
    raise TypeError(f"cannot use {type(value).__qualname__} as a DynamoDB key value")


def cas_request(
    table: str, key: Mapping[str, Any], attr: str, expected: str | None, new: str | None
) -> Request:
    """``(method, kwargs)`` of the conditional request moving ``attr`` of the item ``key``
    from ``expected`` to ``new`` (``None``: attribute absent / remove the whole item)."""
    if expected is None and new is None:
        raise ValueError("a transition needs a state on at least one side")
    request: dict[str, Any] = {
        "TableName": table,
        "Key": {name: _attribute_value(value) for name, value in key.items()},
        "ExpressionAttributeNames": {"#state": attr},
    }
    values: dict[str, Any] = {}
    if expected is None:
        request["ConditionExpression"] = "attribute_not_exists(#state)"
    else:
        request["ConditionExpression"] = "#state = :expected"
        values[":expected"] = {"S": expected}
    if new is None:
        method = "delete_item"
    else:
        method = "update_item"
        request["UpdateExpression"] = "SET #state = :new"
        values[":new"] = {"S": new}
    if values:
        request["ExpressionAttributeValues"] = values
    return method, request


class DynamoDBStates(Backend):
    """States as items of the store's table (or ``table``) whose partition key is
    ``state:{entity}`` (same key schema as the store; the sort key, if any, holds the
    store's ``sort_key_value``), with one attribute ``state``. No ``expiration``: they are
    kept until deleted."""

    ATTR = "state"

    def __init__(self, store: DynamoDBRecords, prefix: str, table: str | None) -> None:
        self.store = store
        self.prefix = prefix
        self.table = table or store.table

    def _key(self, entity: str) -> dict[str, Any]:
        return self.store.item_key(self.prefix + entity)

    def cas(self, entity: str, expected: str | None, new: str | None) -> Program[bool]:
        request = cas_request(self.table, self._key(entity), self.ATTR, expected, new)
        try:
            yield request
        except Exception as exc:
            if is_condition_failure(exc):
                return False
            raise
        return True

    def read(self, entity: str) -> Program[str | None]:
        response = yield (
            "get_item",
            {"TableName": self.table, "Key": self._key(entity), "ConsistentRead": True},
        )
        value = response.get("Item", {}).get(self.ATTR, {}).get("S")
        return None if value is None else str(value)

    def write(self, entity: str, state: str) -> Program[None]:
        item = {**self._key(entity), self.ATTR: {"S": state}}
        yield "put_item", {"TableName": self.table, "Item": item}

    def remove(self, entity: str) -> Program[bool]:
        response = yield (
            "delete_item",
            {"TableName": self.table, "Key": self._key(entity), "ReturnValues": "ALL_OLD"},
        )
        return bool(response.get("Attributes"))

    def run(self, steps: Generator[Any, Any, _T]) -> _T:
        return drive(self.store, steps)

    async def arun(self, steps: Generator[Any, Any, _T]) -> _T:
        return await adrive(self.store, steps)


def dynamodb_transition_update(
    table: str, key: Mapping[str, Any], attr: str, from_state: State | None, to_state: State
) -> dict[str, Any]:
    """The ``TransactWriteItems`` entry (``{"Update": {...}}``) of the transition, to commit
    it together with other writes (see :func:`~idempotence.effects.dynamodb_transaction`)."""
    _, request = cas_request(table, key, attr, text(from_state), text(to_state))
    return {"Update": request}


def dynamodb_transition(
    client: Any,
    table: str,
    key: Mapping[str, Any],
    attr: str,
    from_state: State | None,
    to_state: State | None,
) -> bool:
    """Move attribute ``attr`` of the item ``key`` in the user's ``table`` from
    ``from_state`` to ``to_state`` with one conditional request (``UpdateItem`` with
    ``ConditionExpression #attr = :from``). Returns whether it moved.

    ``client`` is a boto3 DynamoDB client. ``key`` maps key attribute names to values, plain
    (``str`` -> S, numbers -> N, bytes -> B) or typed (``{"S": "o-1"}``). ``from_state=None``
    requires the attribute to be absent (``UpdateItem`` creates the item if it does not
    exist); ``to_state=None`` deletes the item if ``attr`` equals ``from_state``. Other
    errors (throttling, missing table) propagate as botocore raises them.
    """
    method, request = cas_request(table, key, attr, text(from_state), text(to_state))
    try:
        getattr(client, method)(**request)
    except Exception as exc:
        if is_condition_failure(exc):
            return False
        raise
    return True


async def adynamodb_transition(
    client: Any,
    table: str,
    key: Mapping[str, Any],
    attr: str,
    from_state: State | None,
    to_state: State | None,
) -> bool:
    """Async :func:`dynamodb_transition` with an aiobotocore DynamoDB client."""
    method, request = cas_request(table, key, attr, text(from_state), text(to_state))
    try:
        await getattr(client, method)(**request)
    except Exception as exc:
        if is_condition_failure(exc):
            return False
        raise
    return True
