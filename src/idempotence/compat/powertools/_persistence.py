"""The persistence-layer base shared by the Powertools-compatible stores, and
``DataRecord`` (what a ``response_hook`` receives)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import time
from typing import TYPE_CHECKING, Any, ClassVar

from ..._record import Claim, Record, Status
from ...stores import Store

if TYPE_CHECKING:
    from ._config import IdempotencyConfig

__all__ = ["STATUS_CONSTANTS", "BasePersistenceLayer", "DataRecord"]

STATUS_CONSTANTS = {"INPROGRESS": "INPROGRESS", "COMPLETED": "COMPLETED", "EXPIRED": "EXPIRED"}

#: The head of a stored value result (``idempotence``'s record envelope: format version 1,
#: kind ``V``). A Powertools record's ``data`` is the body behind it.
VALUE_HEAD = b"\x01V"


class DataRecord:
    """A record as Powertools presents it (``response_hook``'s second argument): the key,
    status, expiry (epoch seconds), in-progress expiry (epoch ms), response JSON text and
    validation hash."""

    def __init__(
        self,
        idempotency_key: str,
        status: str = "",
        expiry_timestamp: int | None = None,
        in_progress_expiry_timestamp: int | None = None,
        response_data: str = "",
        payload_hash: str = "",
        sort_key: str | None = None,
    ) -> None:
        self.idempotency_key = idempotency_key
        self.payload_hash = payload_hash
        self.expiry_timestamp = expiry_timestamp
        self.in_progress_expiry_timestamp = in_progress_expiry_timestamp
        self._status = status
        self.response_data = response_data
        self.sort_key = sort_key

    @classmethod
    def from_record(cls, record: Record) -> DataRecord:
        """The Powertools view of one of this library's records."""
        data = record.result or b""
        text = data[2:].decode("utf-8", "replace") if data.startswith(VALUE_HEAD) else ""
        return cls(
            idempotency_key=record.key,
            status="COMPLETED" if record.status.value == "COMPLETED" else "INPROGRESS",
            expiry_timestamp=int(record.expires_at),
            in_progress_expiry_timestamp=int(record.lease_expires_at * 1000),
            response_data=text,
            payload_hash="" if record.fingerprint == "-" else record.fingerprint,
        )

    @property
    def is_expired(self) -> bool:
        """Whether the expiry has passed (Powertools' rule: whole seconds, strictly after)."""
        return bool(
            self.expiry_timestamp and int(dt.datetime.now().timestamp()) > self.expiry_timestamp
        )

    @property
    def status(self) -> str:
        """``INPROGRESS``, ``COMPLETED`` or ``EXPIRED``."""
        return STATUS_CONSTANTS["EXPIRED"] if self.is_expired else self._status

    def response_json_as_dict(self) -> Any:
        """The stored response, parsed (``None`` when there is none)."""
        return json.loads(self.response_data) if self.response_data else None

    def get_expiration_datetime(self) -> dt.datetime | None:
        """The expiry as a naive local datetime, or ``None``."""
        if self.expiry_timestamp:
            return dt.datetime.fromtimestamp(int(self.expiry_timestamp))
        return None


class BasePersistenceLayer(Store):
    """Base of the Powertools-compatible persistence layers: an
    :class:`idempotence.stores.Store` that keeps Powertools' record layout, plus
    Powertools' ``configure`` (called by the decorators with the function's config).

    ``payload_validation_enabled`` (set by ``configure`` from
    ``payload_validation_jmespath``) decides whether the record's validation hash is the
    fingerprint (on) or ignored (off, as Powertools ignores it), like Powertools, one
    configuration per layer object.

    A custom layer written for Powertools (``_get_record``, ``_put_record``,
    ``_update_record``, ``_delete_record`` over :class:`DataRecord`) works unchanged
    on top of this class, with Powertools' guarantees rather than this library's: its
    records carry no fence (a late completion is not refused), a lease cannot be renewed
    (the claim holds for the 60 s lease, or as its ``_put_record`` decides) and a failed
    run deletes the record. The built-in layers override every operation instead.
    """

    #: Powertools layers round expiry to whole seconds: the engine uses the client clock.
    uses_client_clock: ClassVar[bool] = True

    def __init__(self) -> None:
        self.function_name = ""
        self.configured = False
        self.event_key_jmespath = ""
        self.payload_validation_enabled = False
        self.raise_on_no_idempotency_key = False
        self.expires_after_seconds = 60 * 60
        self.use_local_cache = False
        self.hash_function: Any = hashlib.md5
        self._hashes: dict[str, str] = {}  # custom layers: validation hash per claimed key

    def configure(
        self,
        config: IdempotencyConfig,
        function_name: str | None = None,
        key_prefix: str | None = None,
    ) -> None:
        """Take the settings of ``config`` (the first configuration wins, as in Powertools;
        the function name is recomputed on every call)."""
        name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or "test-func"
        self.function_name = key_prefix or f"{name}.{function_name or ''}"
        if self.configured:
            return
        self.configured = True
        self.event_key_jmespath = config.event_key_jmespath
        self.payload_validation_enabled = bool(config.payload_validation_jmespath)
        self.raise_on_no_idempotency_key = config.raise_on_no_idempotency_key
        self.expires_after_seconds = config.expires_after_seconds
        self.use_local_cache = config.use_local_cache
        self.hash_function = getattr(hashlib, config.hash_function)

    # -- Powertools' custom-layer hooks (the built-in layers do not use them) ----------
    def _get_record(self, idempotency_key: str) -> DataRecord:
        """The stored record; raise ``IdempotencyItemNotFoundError`` when there is none."""
        raise NotImplementedError("a custom persistence layer implements _get_record")

    def _put_record(self, data_record: DataRecord) -> None:
        """Store an in-progress record unless a live one exists; raise
        ``IdempotencyItemAlreadyExistsError`` (optionally with ``old_data_record``)."""
        raise NotImplementedError("a custom persistence layer implements _put_record")

    def _update_record(self, data_record: DataRecord) -> None:
        """Store the completed record."""
        raise NotImplementedError("a custom persistence layer implements _update_record")

    def _delete_record(self, data_record: DataRecord) -> None:
        """Remove the record."""
        raise NotImplementedError("a custom persistence layer implements _delete_record")

    # -- the Store contract over those hooks ---------------------------------------------
    def _as_record(self, data: DataRecord, claimant: str | None = None) -> Record:
        expires = float(data.expiry_timestamp or time.time() + self.expires_after_seconds)
        ip = data.in_progress_expiry_timestamp
        status = Status.IN_PROGRESS if data._status == "INPROGRESS" else Status.COMPLETED
        text = data.response_data
        result = VALUE_HEAD + text.encode("utf-8") if status is Status.COMPLETED else None
        if result is not None and not text:
            result = VALUE_HEAD + b"null"
        fingerprint = "-"
        if self.payload_validation_enabled:
            fingerprint = data.payload_hash or claimant or ""
        lease = float(ip) / 1000 if ip is not None else expires
        return Record(data.idempotency_key, status, fingerprint, 1, lease, expires, result)

    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        now = time.time()
        record = DataRecord(
            key,
            status="INPROGRESS",
            expiry_timestamp=math.ceil(now + max(ttl, lease)),
            in_progress_expiry_timestamp=math.ceil((now + lease) * 1000),
            payload_hash=fingerprint if self.payload_validation_enabled else "",
        )
        try:
            self._put_record(record)
            self._hashes[key] = record.payload_hash
        except Exception as exc:
            if type(exc).__name__ != "IdempotencyItemAlreadyExistsError":
                raise
            old = getattr(exc, "old_data_record", None) or self._get_record(key)
            return Claim(False, self._as_record(old), now)
        return Claim(True, self._as_record(record), now)

    def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        body = result[len(VALUE_HEAD) :] if result.startswith(VALUE_HEAD) else None
        if body is None:
            from ..._errors import ResultTooLargeError

            raise ResultTooLargeError("a custom persistence layer keeps JSON responses only")
        self._update_record(
            DataRecord(
                key,
                status="COMPLETED",
                expiry_timestamp=math.ceil(time.time() + ttl),
                response_data=body.decode("utf-8"),
                payload_hash=self._hashes.pop(key, ""),
            )
        )
        return True

    def release(self, key: str, fence: int) -> bool:
        self._delete_record(DataRecord(key))
        return True

    def renew(self, key: str, fence: int, *, lease: float) -> bool:
        return True  # Powertools' layers have no renewal: the claim keeps its expiry

    def get(self, key: str) -> Record | None:
        try:
            data = self._get_record(key)
        except Exception as exc:
            if type(exc).__name__ == "IdempotencyItemNotFoundError":
                return None
            raise
        record = self._as_record(data)
        return None if record.is_expired(time.time()) else record

    def delete(self, key: str) -> bool:
        self._delete_record(DataRecord(key))
        return True
