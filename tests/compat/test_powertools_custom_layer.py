"""A custom persistence layer written against Powertools' BasePersistenceLayer hooks
(``_get_record``/``_put_record``/``_update_record``/``_delete_record``) runs on
idempotence.compat.powertools with only the import changed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from idempotence.compat.powertools import (
    BasePersistenceLayer,
    DataRecord,
    IdempotencyConfig,
    idempotent_function,
)
from idempotence.compat.powertools.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyValidationError,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class DictPersistenceLayer(BasePersistenceLayer):
    """As a user would write it for Powertools: records in a dict."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        super().__init__()

    def _get_record(self, idempotency_key: str) -> DataRecord:
        item = self.items.get(idempotency_key)
        if item is None:
            raise IdempotencyItemNotFoundError
        return DataRecord(idempotency_key=idempotency_key, **item)

    def _put_record(self, data_record: DataRecord) -> None:
        now = int(dt.datetime.now().timestamp())
        old = self.items.get(data_record.idempotency_key)
        if old is not None and old["expiry_timestamp"] >= now:
            raise IdempotencyItemAlreadyExistsError
        self.items[data_record.idempotency_key] = {
            "status": data_record.status,
            "expiry_timestamp": data_record.expiry_timestamp,
            "in_progress_expiry_timestamp": data_record.in_progress_expiry_timestamp,
            "payload_hash": data_record.payload_hash,
        }

    def _update_record(self, data_record: DataRecord) -> None:
        self.items[data_record.idempotency_key].update(
            status=data_record.status,
            expiry_timestamp=data_record.expiry_timestamp,
            response_data=data_record.response_data,
            payload_hash=data_record.payload_hash,
        )

    def _delete_record(self, data_record: DataRecord) -> None:
        self.items.pop(data_record.idempotency_key, None)


def test_custom_layer_runs_once_and_replays() -> None:
    layer = DictPersistenceLayer()
    runs: list[Any] = []

    @idempotent_function(data_keyword_argument="order", persistence_store=layer)
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        runs.append(order)
        return {"charged": order["amount"]}

    assert charge(order={"id": 1, "amount": 3}) == {"charged": 3}
    assert charge(order={"id": 1, "amount": 3}) == {"charged": 3}
    assert len(runs) == 1
    (item,) = layer.items.values()
    assert item["status"] == "COMPLETED"
    assert item["response_data"] == '{"charged": 3}'


def test_custom_layer_in_progress_failure_and_validation() -> None:
    layer = DictPersistenceLayer()
    config = IdempotencyConfig(event_key_jmespath="id", payload_validation_jmespath="amount")
    attempts: list[int] = []

    @idempotent_function(data_keyword_argument="order", persistence_store=layer, config=config)
    def charge(order: dict[str, Any]) -> str:
        attempts.append(1)
        if order.get("nested"):
            with pytest.raises(IdempotencyAlreadyInProgressError):
                charge(order={"id": order["id"], "amount": order["amount"]})
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    with pytest.raises(RuntimeError):
        charge(order={"id": 2, "amount": 5})
    assert layer.items == {}  # a failed run deletes the record, as in Powertools
    assert charge(order={"id": 2, "amount": 5, "nested": True}) == "ok"
    with pytest.raises(IdempotencyValidationError):
        charge(order={"id": 2, "amount": 6})
    assert len(attempts) == 2
