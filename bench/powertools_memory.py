"""An in-memory persistence layer for Powertools' idempotency utility, so the two libraries
can be compared on per-call overhead without any I/O (Powertools ships no such layer)."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.base import (
    BasePersistenceLayer,
    DataRecord,
)


class MemoryPersistenceLayer(BasePersistenceLayer):  # type: ignore[misc]
    """Same conditions as Powertools' DynamoDB layer, over a dict behind a lock."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, DataRecord] = {}
        self.lock = threading.Lock()

    def _get_record(self, idempotency_key: str) -> DataRecord:
        with self.lock:
            record = self.records.get(idempotency_key)
        if record is None:
            raise IdempotencyItemNotFoundError
        return record

    def _put_record(self, data_record: DataRecord) -> None:
        now = dt.datetime.now().timestamp()
        with self.lock:
            old = self.records.get(data_record.idempotency_key)
            if old is not None:
                lapsed = (
                    old.status == "INPROGRESS"
                    and old.in_progress_expiry_timestamp is not None
                    and old.in_progress_expiry_timestamp < now * 1000
                )
                if not (old.expiry_timestamp < now or lapsed):
                    raise IdempotencyItemAlreadyExistsError(old_data_record=old)
            self.records[data_record.idempotency_key] = data_record

    def _update_record(self, data_record: DataRecord) -> None:
        with self.lock:
            self.records[data_record.idempotency_key] = data_record

    def _delete_record(self, data_record: DataRecord) -> None:
        with self.lock:
            self.records.pop(data_record.idempotency_key, None)

    def clear(self) -> Any:
        with self.lock:
            self.records.clear()
