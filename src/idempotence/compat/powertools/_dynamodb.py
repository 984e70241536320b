"""``DynamoDBPersistenceLayer``: a store over Powertools' DynamoDB item layout.

Item (attribute names configurable, as in Powertools)::

    id                      S  the key (or, with sort_key_attr, static_pk_value here and
                               the key in the sort key)
    status                  S  INPROGRESS | COMPLETED (COMPLETED_RAW: see below)
    expiration              N  end of retention, integer epoch seconds (also the TTL)
    in_progress_expiration  N  end of the lease, integer epoch milliseconds
    data                    S  the response as JSON text (completed records)
    validation              S  the payload hash (only with payload validation)
    idempotence_fence       N  our fence (Powertools ignores it; its claims drop it)
    idempotence_result      B  a result that is not JSON text (status COMPLETED_RAW, which
                               Powertools refuses with IdempotencyInvalidStatusError
                               instead of replaying something else)

Claims are one conditional ``UpdateItem`` whose condition is Powertools' own (no item,
``expiration`` passed, or in progress with ``in_progress_expiration`` passed; a lapsed
claim with the same validation hash when validation is on), so Powertools' ``PutItem``
claims and ours exclude each other. Completion, release and renewal are conditional on our
fence: a record a Powertools invocation claimed over ours has no fence, and our late
completion is refused (``LeaseLostError``) instead of overwriting it.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..._errors import CorruptRecordError, MissingDependencyError, StoreError
from ..._record import Claim, Record, Status
from ...stores import Clock, fresh_fence, system_clock
from ._persistence import VALUE_HEAD, BasePersistenceLayer

if TYPE_CHECKING:
    from botocore.config import Config

__all__ = ["DynamoDBPersistenceLayer"]

_IN, _DONE, _RAW = "INPROGRESS", "COMPLETED", "COMPLETED_RAW"


def _n(value: float | int) -> dict[str, str]:
    return {"N": str(value) if isinstance(value, int) else repr(float(value))}


def _code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


class DynamoDBPersistenceLayer(BasePersistenceLayer):
    """Powertools' ``DynamoDBPersistenceLayer`` (same arguments), as an
    :class:`idempotence.stores.Store` over the same items: records written by Powertools
    are replayed (completed) or respected (in progress), and ours are replayed by
    Powertools. ``fence_attr`` and ``raw_result_attr`` name the two attributes only this
    library reads; ``clock`` (epoch seconds) is for tests.

    The table is Powertools' (partition key ``id``, or ``key_attr`` + ``sort_key_attr``),
    with Time to Live on ``expiration``.
    """

    max_result_bytes: ClassVar[int] = 350 * 1024

    def __init__(
        self,
        table_name: str,
        key_attr: str = "id",
        static_pk_value: str | None = None,
        sort_key_attr: str | None = None,
        expiry_attr: str = "expiration",
        in_progress_expiry_attr: str = "in_progress_expiration",
        status_attr: str = "status",
        data_attr: str = "data",
        validation_key_attr: str = "validation",
        boto_config: Config | None = None,
        boto3_session: Any = None,
        boto3_client: Any = None,
        *,
        fence_attr: str = "idempotence_fence",
        raw_result_attr: str = "idempotence_result",
        clock: Clock | None = None,
    ) -> None:
        if sort_key_attr == key_attr:
            raise ValueError(
                f"key_attr [{key_attr}] and sort_key_attr [{sort_key_attr}] cannot be the same!"
            )
        if boto3_client is None:
            try:
                import boto3
            except ImportError as exc:
                raise MissingDependencyError(
                    "'boto3' is not installed, and DynamoDBPersistenceLayer needs it: "
                    "pip install 'idempotence[dynamodb]'"
                ) from exc
            session = boto3_session or boto3.session.Session()
            boto3_client = session.client("dynamodb", config=boto_config)
        if static_pk_value is None:
            static_pk_value = f"idempotency#{os.environ.get('AWS_LAMBDA_FUNCTION_NAME', '')}"
        self.client = boto3_client
        self.table_name = table_name
        self.key_attr = key_attr
        self.static_pk_value = static_pk_value
        self.sort_key_attr = sort_key_attr
        self.expiry_attr = expiry_attr
        self.in_progress_expiry_attr = in_progress_expiry_attr
        self.status_attr = status_attr
        self.data_attr = data_attr
        self.validation_key_attr = validation_key_attr
        self.fence_attr = fence_attr
        self.raw_result_attr = raw_result_attr
        self._clock = clock or system_clock
        self._lock = threading.Lock()
        super().__init__()

    def __repr__(self) -> str:
        return f"DynamoDBPersistenceLayer(table_name={self.table_name!r})"

    # -- layout ------------------------------------------------------------------------
    def _key(self, key: str) -> dict[str, Any]:
        if self.sort_key_attr:
            return {self.key_attr: {"S": self.static_pk_value}, self.sort_key_attr: {"S": key}}
        return {self.key_attr: {"S": key}}

    def _names(self) -> dict[str, str]:
        return {
            "#k": self.key_attr,
            "#s": self.status_attr,
            "#e": self.expiry_attr,
            "#ip": self.in_progress_expiry_attr,
            "#f": self.fence_attr,
        }

    def _record(self, key: str, item: Mapping[str, Any]) -> Record:
        try:
            raw_status = item[self.status_attr]["S"]
            expires_at = float(item[self.expiry_attr]["N"])
            ip = item.get(self.in_progress_expiry_attr)
            lease = float(ip["N"]) / 1000 if ip is not None else expires_at
            fence_item = item.get(self.fence_attr)
            fence = int(fence_item["N"]) if fence_item is not None else 0
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecordError(
                f"the idempotency item in {self.table_name} lacks Powertools' attributes "
                f"({type(exc).__name__}); delete it to let the function run again"
            ) from exc
        result: bytes | None = None
        if raw_status == _IN:
            status = Status.IN_PROGRESS
        elif raw_status in (_DONE, _RAW):
            status = Status.COMPLETED
            raw = item.get(self.raw_result_attr)
            data = item.get(self.data_attr)
            if raw_status == _RAW and raw is not None:
                result = bytes(raw["B"])
            elif data is not None and "S" in data:
                result = VALUE_HEAD + data["S"].encode("utf-8", "surrogatepass")
        else:
            raise CorruptRecordError(
                f"an idempotency item in {self.table_name} has an unknown status; delete it "
                "to let the function run again"
            )
        if self.payload_validation_enabled:
            fingerprint = item.get(self.validation_key_attr, {}).get("S", "")
        else:
            fingerprint = "-"
        return Record(key, status, fingerprint, fence, lease, expires_at, result)

    def _call(self, method: str, **request: Any) -> Any:
        return getattr(self.client, method)(TableName=self.table_name, **request)

    # -- operations --------------------------------------------------------------------
    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        now = self._clock()
        lease_end = now + lease
        names = self._names()
        values: dict[str, Any] = {
            ":in": {"S": _IN},
            ":now": _n(now),
            ":now_ms": _n(now * 1000),
            ":exp": _n(math.ceil(now + max(ttl, lease))),
            ":ip": _n(math.ceil(lease_end * 1000)),
            ":base": _n(fresh_fence(now) - 1),
            ":one": _n(1),
        }
        names["#d"], names["#r"], names["#v"] = (
            self.data_attr,
            self.raw_result_attr,
            self.validation_key_attr,
        )
        sets = "#s = :in, #e = :exp, #ip = :ip, #f = if_not_exists(#f, :base) + :one"
        removes = "#d, #r"
        lapsed = "#s = :in AND attribute_exists(#ip) AND #ip <= :now_ms"
        if self.payload_validation_enabled:
            sets += ", #v = :fp"
            values[":fp"] = {"S": fingerprint}
            lapsed += " AND #v = :fp"
        else:
            removes += ", #v"
        try:
            response = self._call(
                "update_item",
                Key=self._key(key),
                UpdateExpression=f"SET {sets} REMOVE {removes}",
                ConditionExpression=f"attribute_not_exists(#k) OR #e <= :now OR ({lapsed})",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except Exception as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            item = getattr(exc, "response", {}).get("Item")
            if item is None:  # deleted between the check and the answer: retry once
                raise StoreError(
                    "the idempotency item changed during the claim; retry the call"
                ) from exc
            return Claim(False, self._record(key, item), now)
        return Claim(True, self._record(key, response["Attributes"]), now)

    def _owned(self, extra: str = "") -> str:
        return f"#f = :fence AND #s = :in AND #e > :now{extra}"

    def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        now = self._clock()
        names = self._names()
        names["#d"], names["#r"] = self.data_attr, self.raw_result_attr
        values: dict[str, Any] = {
            ":fence": _n(fence),
            ":in": {"S": _IN},
            ":now": _n(now),
            ":exp": _n(math.ceil(now + ttl)),
        }
        text: str | None = None
        if result.startswith(VALUE_HEAD):
            try:
                text = result[len(VALUE_HEAD) :].decode("utf-8")
            except UnicodeDecodeError:
                text = None
        if text is not None:
            update = "SET #s = :done, #e = :exp, #d = :data REMOVE #r"
            values[":done"], values[":data"] = {"S": _DONE}, {"S": text}
        else:
            update = "SET #s = :done, #e = :exp, #r = :raw REMOVE #d"
            values[":done"], values[":raw"] = {"S": _RAW}, {"B": result}
        return self._conditional(key, update, self._owned(), names, values)

    def _conditional(
        self,
        key: str,
        update: str,
        condition: str,
        names: dict[str, str],
        values: dict[str, Any],
    ) -> bool:
        try:
            self._call(
                "update_item",
                Key=self._key(key),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames={
                    k: v for k, v in names.items() if k in update + condition
                },
                ExpressionAttributeValues=values,
            )
        except Exception as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def release(self, key: str, fence: int) -> bool:
        now = self._clock()
        values = {
            ":fence": _n(fence),
            ":in": {"S": _IN},
            ":now": _n(now),
            ":end": _n(math.floor(now)),
            ":end_ms": _n(math.floor(now * 1000)),
        }
        update = "SET #e = :end, #ip = :end_ms"
        return self._conditional(key, update, self._owned(), self._names(), values)

    def renew(self, key: str, fence: int, *, lease: float) -> bool:
        now = self._clock()
        end = math.ceil(now + lease)
        values = {
            ":fence": _n(fence),
            ":in": {"S": _IN},
            ":now": _n(now),
            ":ip": _n(math.ceil((now + lease) * 1000)),
            ":end": _n(end),
        }
        names = self._names()
        # Retention stays at least as long as the lease: set the lease alone when the
        # retention already covers it (the usual case), else both.
        if self._conditional(key, "SET #ip = :ip", self._owned(" AND #e >= :end"), names, values):
            return True
        return self._conditional(key, "SET #ip = :ip, #e = :end", self._owned(), names, values)

    def get(self, key: str) -> Record | None:
        response = self._call("get_item", Key=self._key(key), ConsistentRead=True)
        item = response.get("Item")
        if item is None:
            return None
        record = self._record(key, item)
        return None if record.is_expired(self._clock()) else record

    def delete(self, key: str) -> bool:
        response = self._call("delete_item", Key=self._key(key), ReturnValues="ALL_OLD")
        return bool(response.get("Attributes"))
