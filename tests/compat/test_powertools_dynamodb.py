"""The real Powertools package and idempotence.compat.powertools on one moto DynamoDB
table: each replays the other's results, respects the other's live claims, takes over
expired ones, and a mixed fleet runs a key once."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aws_lambda_powertools.utilities import idempotency as pt
from aws_lambda_powertools.utilities.idempotency import exceptions as pt_errors

from idempotence import AlreadyInProgressError, LeaseLostError
from idempotence.compat import powertools as ours
from tests.compat.conftest import make_client

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Context:
    """A Lambda context with the remaining time Powertools reads."""

    function_name = "fn"
    aws_request_id = "req"

    def __init__(self, remaining_ms: int = 30_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


class Fleet:
    """One handler body decorated by Powertools and by us, same table and config."""

    def __init__(
        self,
        ddb: Any,
        table: str,
        body: Callable[[dict[str, Any], Any], Any],
        **layer: Any,
    ) -> None:
        self.runs: list[dict[str, Any]] = []
        self.body = body

        def handler(event: dict[str, Any], context: Any) -> Any:
            self.runs.append(event)
            return self.body(event, context)

        self.pt_layer = pt.DynamoDBPersistenceLayer(table_name=table, boto3_client=ddb, **layer)
        self.our_layer = ours.DynamoDBPersistenceLayer(table_name=table, boto3_client=ddb, **layer)
        self.pt_config = pt.IdempotencyConfig(event_key_jmespath="body.order_id")
        self.our_config = ours.IdempotencyConfig(event_key_jmespath="body.order_id")
        self.pt = pt.idempotent(persistence_store=self.pt_layer, config=self.pt_config)(handler)
        self.ours = ours.idempotent(persistence_store=self.our_layer, config=self.our_config)(
            handler
        )
        self.handler = handler


def _event(order: str, amount: int = 1) -> dict[str, Any]:
    return {"body": {"order_id": order, "amount": amount}, "requestContext": {"requestId": "r"}}


@pytest.mark.usefixtures("function_name")
@pytest.mark.parametrize("layout", ["simple", "composite", "custom_names"])
def test_powertools_writes_ours_replays(ddb: Any, layout: str, request: Any) -> None:
    table, layer = _layout(layout, request)
    fleet = Fleet(
        ddb, table, lambda e, c: {"statusCode": 200, "amount": e["body"]["amount"]}, **layer
    )
    first = fleet.pt(_event("o-1"), Context())
    again = fleet.ours(_event("o-1"), Context())
    assert again == first == {"statusCode": 200, "amount": 1}
    assert len(fleet.runs) == 1


@pytest.mark.usefixtures("function_name")
@pytest.mark.parametrize("layout", ["simple", "composite", "custom_names"])
def test_ours_writes_powertools_replays(ddb: Any, layout: str, request: Any) -> None:
    table, layer = _layout(layout, request)
    fleet = Fleet(ddb, table, lambda e, c: {"statusCode": 201, "items": [1, 2]}, **layer)
    first = fleet.ours(_event("o-2"), Context())
    again = fleet.pt(_event("o-2"), Context())
    assert again == first == {"statusCode": 201, "items": [1, 2]}
    assert len(fleet.runs) == 1
    # The item is Powertools' layout (plus our fence), under Powertools' own key.
    item = _item(ddb, table, fleet, layer, _event("o-2"))
    assert item[layer.get("status_attr", "status")] == {"S": "COMPLETED"}
    assert item[layer.get("data_attr", "data")] == {"S": '{"items": [1, 2], "statusCode": 201}'}
    assert "idempotence_fence" in item
    assert layer.get("expiry_attr", "expiration") in item
    assert layer.get("in_progress_expiry_attr", "in_progress_expiration") in item


def _layout(layout: str, request: Any) -> tuple[str, dict[str, Any]]:
    if layout == "simple":
        return request.getfixturevalue("pt_table"), {}
    if layout == "composite":
        return request.getfixturevalue("pt_composite_table"), {
            "key_attr": "pk",
            "sort_key_attr": "sk",
        }
    return request.getfixturevalue("pt_composite_table"), {
        "key_attr": "pk",
        "sort_key_attr": "sk",
        "static_pk_value": "idempotency#custom",
        "expiry_attr": "exp",
        "in_progress_expiry_attr": "lease_ms",
        "status_attr": "st",
        "data_attr": "response",
        "validation_key_attr": "hash",
    }


def _item(ddb: Any, table: str, fleet: Fleet, layer: dict[str, Any], event: Any) -> dict[str, Any]:
    key = fleet.pt_layer._get_hashed_idempotency_key(event)  # Powertools' own derivation
    response = ddb.get_item(TableName=table, Key=fleet.pt_layer._get_key(key), ConsistentRead=True)
    return dict(response["Item"])


@pytest.mark.usefixtures("function_name")
def test_powertools_claim_blocks_ours(ddb: Any, pt_table: str) -> None:
    seen: list[BaseException] = []

    def body(event: Any, context: Any) -> Any:
        if event["body"]["amount"] == 1:  # the Powertools run: a duplicate arrives meanwhile
            with pytest.raises(ours.IdempotencyAlreadyInProgressError) as info:
                fleet.ours(_event("o-3", amount=2), Context())
            seen.append(info.value)
        return {"ok": True}

    fleet = Fleet(ddb, pt_table, body)
    fleet.pt_config = pt.IdempotencyConfig(event_key_jmespath="body.order_id")
    assert fleet.pt(_event("o-3"), Context()) == {"ok": True}
    assert isinstance(seen[0], AlreadyInProgressError)
    assert seen[0].retry_after > 0
    assert fleet.ours(_event("o-3", amount=2), Context()) == {"ok": True}  # now a replay
    assert len(fleet.runs) == 1


@pytest.mark.usefixtures("function_name")
def test_our_claim_blocks_powertools(ddb: Any, pt_table: str) -> None:
    seen: list[BaseException] = []

    def body(event: Any, context: Any) -> Any:
        if event["body"]["amount"] == 1:
            with pytest.raises(pt_errors.IdempotencyAlreadyInProgressError) as info:
                fleet.pt(_event("o-4", amount=2), Context())
            seen.append(info.value)
        return {"ok": 1}

    fleet = Fleet(ddb, pt_table, body)
    assert fleet.ours(_event("o-4"), Context()) == {"ok": 1}
    assert seen
    assert fleet.pt(_event("o-4", amount=2), Context()) == {"ok": 1}
    assert len(fleet.runs) == 1


@pytest.mark.usefixtures("function_name")
def test_expired_powertools_claim_is_taken_over(ddb: Any, pt_table: str) -> None:
    fleet = Fleet(ddb, pt_table, lambda e, c: {"run": len(fleet.runs)})
    event = _event("o-5")
    # A Powertools invocation claimed the key and died: its in-progress expiry (remaining
    # time of its invocation) has passed, its record expiry has not.
    fleet.pt_layer.configure(
        fleet.pt_config, f"{fleet.handler.__module__}.{fleet.handler.__qualname__}"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fleet.pt_layer.save_inprogress(data=event, remaining_time_in_millis=1)
    time.sleep(0.01)
    assert fleet.ours(event, Context()) == {"run": 1}
    assert fleet.pt(event, Context()) == {"run": 1}  # Powertools replays our completion
    assert len(fleet.runs) == 1


@pytest.mark.usefixtures("function_name")
def test_powertools_claim_without_context_holds_until_expiry(ddb: Any, pt_table: str) -> None:
    fleet = Fleet(ddb, pt_table, lambda e, c: "ran")
    event = _event("o-6")
    fleet.pt_layer.configure(
        fleet.pt_config, f"{fleet.handler.__module__}.{fleet.handler.__qualname__}"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fleet.pt_layer.save_inprogress(data=event)  # no in_progress_expiration written
    with pytest.raises(ours.IdempotencyAlreadyInProgressError) as info:
        fleet.ours(event, Context())
    assert info.value.retry_after > 3000  # held until the record's expiry (1 h)
    assert fleet.runs == []


@pytest.mark.usefixtures("function_name")
def test_powertools_takeover_of_our_lapsed_claim_fences_us_out(ddb: Any, pt_table: str) -> None:
    # Our invocation's lease lapses while it runs (paused, no heartbeat); a Powertools
    # invocation takes the key over with its put_item (dropping our fence) and completes.
    # Our late completion is refused instead of overwriting Powertools' record.
    layer = ours.DynamoDBPersistenceLayer(table_name=pt_table, boto3_client=ddb)
    claim = layer.claim("k-fence", "-", lease=0.01, ttl=60)
    assert claim.acquired
    time.sleep(0.02)
    pt_layer = pt.DynamoDBPersistenceLayer(table_name=pt_table, boto3_client=ddb)
    pt_layer.configure(pt.IdempotencyConfig())
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

    pt_layer._put_record(
        DataRecord("k-fence", status="INPROGRESS", expiry_timestamp=int(time.time()) + 60)
    )
    assert not layer.complete("k-fence", claim.record.fence, b"\x01V1", ttl=60)
    record = layer.get("k-fence")
    assert record is not None
    assert record.fence == 0
    assert record.result is None


@pytest.mark.usefixtures("function_name")
@pytest.mark.parametrize("writer", ["powertools", "ours"])
def test_payload_validation_across_libraries(ddb: Any, pt_table: str, writer: str) -> None:
    fleet = Fleet(ddb, pt_table, lambda e, c: {"charged": e["body"]["amount"]})
    for attr in ("pt_config", "our_config"):
        module = pt if attr == "pt_config" else ours
        setattr(
            fleet,
            attr,
            module.IdempotencyConfig(
                event_key_jmespath="body.order_id", payload_validation_jmespath="body.amount"
            ),
        )
    fleet.pt = pt.idempotent(persistence_store=fleet.pt_layer, config=fleet.pt_config)(
        fleet.handler
    )
    fleet.ours = ours.idempotent(persistence_store=fleet.our_layer, config=fleet.our_config)(
        fleet.handler
    )
    first, second = (fleet.pt, fleet.ours) if writer == "powertools" else (fleet.ours, fleet.pt)
    first(_event("o-7", amount=5), Context())
    assert second(_event("o-7", amount=5), Context()) == {"charged": 5}  # same payload
    error = (
        ours.IdempotencyValidationError
        if writer == "powertools"
        else pt_errors.IdempotencyValidationError
    )
    with pytest.raises(error):
        second(_event("o-7", amount=6), Context())
    assert len(fleet.runs) == 1


@pytest.mark.usefixtures("function_name")
def test_mixed_fleet_runs_once(dynamodb_endpoint: str, pt_table: str) -> None:
    # Eight instances, half Powertools and half ours, each with its own client, receive
    # the same event at once (moto serialises requests, as DynamoDB's conditional writes
    # are atomic per item). One runs; the others are refused or replay.
    start = threading.Barrier(8)
    runs: list[int] = []

    def handler(event: dict[str, Any], context: Any) -> Any:
        runs.append(1)
        time.sleep(0.3)
        return {"done": event["body"]["order_id"]}

    def instance(i: int) -> Any:
        client = make_client(dynamodb_endpoint)
        lib: Any = pt if i % 2 else ours
        layer = lib.DynamoDBPersistenceLayer(table_name=pt_table, boto3_client=client)
        config = lib.IdempotencyConfig(event_key_jmespath="body.order_id")
        decorated = lib.idempotent(persistence_store=layer, config=config)(handler)
        start.wait()
        try:
            return decorated(_event("o-8"), Context())
        except (pt_errors.IdempotencyAlreadyInProgressError, AlreadyInProgressError) as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(instance, range(8)))
    assert len(runs) == 1
    assert outcomes.count({"done": "o-8"}) >= 1
    assert all(o == {"done": "o-8"} or "InProgress" in str(o) for o in outcomes)
    # Afterwards every instance of either library replays.
    with ThreadPoolExecutor(8) as pool:
        start = threading.Barrier(8)
        assert list(pool.map(instance, range(8))) == [{"done": "o-8"}] * 8
    assert len(runs) == 1


@pytest.mark.usefixtures("function_name")
def test_handler_exception_frees_the_key_for_powertools(ddb: Any, pt_table: str) -> None:
    attempts: list[int] = []

    def body(event: Any, context: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("downstream failed")
        return {"attempt": len(attempts)}

    fleet = Fleet(ddb, pt_table, body)
    with pytest.raises(RuntimeError):
        fleet.ours(_event("o-9"), Context())
    time.sleep(1.01)  # Powertools' expiry test is in whole seconds (expiration < now)
    assert fleet.pt(_event("o-9"), Context()) == {"attempt": 2}
    assert fleet.ours(_event("o-9"), Context()) == {"attempt": 2}


def test_lease_lost_is_ours(ddb: Any, pt_table: str) -> None:
    assert issubclass(LeaseLostError, Exception)  # raised as is: Powertools has no twin
