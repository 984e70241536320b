"""The persistence-layer base shared by the Powertools-compatible stores, and
``DataRecord`` (what a ``response_hook`` receives)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any, ClassVar

from ...stores import Store

if TYPE_CHECKING:
    from ..._record import Record
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
