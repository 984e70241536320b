"""The real Powertools package and idempotence.compat.powertools on one Redis (db 15,
keys under a function name unique to each test): replay both ways, in-progress exclusion,
take-over of lapsed claims under Powertools' ``{key}:lock``, and a mixed fleet."""

from __future__ import annotations

import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aws_lambda_powertools.utilities import idempotency as pt
from aws_lambda_powertools.utilities.idempotency import exceptions as pt_errors
from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
    RedisCachePersistenceLayer as PtRedisLayer,
)

from idempotence import AlreadyInProgressError
from idempotence.compat import powertools as ours
from tests.conftest import REDIS_URL

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("function_name"),
]


class Context:
    def __init__(self, remaining_ms: int = 30_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def _event(order: str, amount: int = 1) -> dict[str, Any]:
    return {"body": {"order_id": order, "amount": amount}}


class Fleet:
    def __init__(self, client: Any, body: Any, validation: str = "") -> None:
        self.runs: list[Any] = []

        def handler(event: dict[str, Any], context: Any) -> Any:
            self.runs.append(event)
            return body(event, context)

        self.handler = handler
        self.pt_layer = PtRedisLayer(client=client)
        self.our_layer = ours.RedisCachePersistenceLayer(client=client)
        self.pt_config = pt.IdempotencyConfig(
            event_key_jmespath="body.order_id", payload_validation_jmespath=validation
        )
        our_config = ours.IdempotencyConfig(
            event_key_jmespath="body.order_id", payload_validation_jmespath=validation
        )
        self.pt = pt.idempotent(persistence_store=self.pt_layer, config=self.pt_config)(handler)
        self.ours = ours.idempotent(persistence_store=self.our_layer, config=our_config)(handler)

    def key(self, event: Any) -> str:
        self.pt_layer.configure(
            self.pt_config, f"{self.handler.__module__}.{self.handler.__qualname__}"
        )
        key = self.pt_layer._get_hashed_idempotency_key(event)
        assert key is not None
        return key


def test_powertools_writes_ours_replays(redis_client: Any) -> None:
    fleet = Fleet(redis_client, lambda e, c: {"statusCode": 200, "n": [1, None, "x"]})
    first = fleet.pt(_event("r-1"), Context())
    assert fleet.ours(_event("r-1"), Context()) == first == {"statusCode": 200, "n": [1, None, "x"]}
    assert len(fleet.runs) == 1


def test_ours_writes_powertools_replays(redis_client: Any) -> None:
    fleet = Fleet(redis_client, lambda e, c: {"statusCode": 201})
    first = fleet.ours(_event("r-2"), Context())
    assert fleet.pt(_event("r-2"), Context()) == first == {"statusCode": 201}
    assert len(fleet.runs) == 1
    import json

    stored = json.loads(redis_client.get(fleet.key(_event("r-2"))))
    assert stored["status"] == "COMPLETED"
    assert stored["data"] == '{"statusCode": 201}'
    assert isinstance(stored["expiration"], int)
    assert isinstance(stored["idempotence_fence"], int)


def test_claims_exclude_each_other(redis_client: Any) -> None:
    seen: list[BaseException] = []

    def body(event: Any, context: Any) -> Any:
        if event["body"]["amount"] == 1:
            with pytest.raises(ours.IdempotencyAlreadyInProgressError) as mine:
                fleet.ours(_event(event["body"]["order_id"], 2), Context())
            seen.append(mine.value)
        elif event["body"]["amount"] == 3:
            with pytest.raises(pt_errors.IdempotencyAlreadyInProgressError) as theirs:
                fleet.pt(_event(event["body"]["order_id"], 2), Context())
            seen.append(theirs.value)
        return "done"

    fleet = Fleet(redis_client, body)
    assert fleet.pt(_event("r-3", 1), Context()) == "done"  # Powertools runs, ours refused
    assert fleet.ours(_event("r-4", 3), Context()) == "done"  # ours runs, Powertools refused
    assert len(seen) == 2
    assert len(fleet.runs) == 2


def test_lapsed_powertools_claim_is_taken_over_and_locked(redis_client: Any) -> None:
    fleet = Fleet(redis_client, lambda e, c: {"winner": "ours"})
    event = _event("r-5")
    key = fleet.key(event)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fleet.pt_layer.save_inprogress(data=event, remaining_time_in_millis=1)
    time.sleep(0.01)
    assert fleet.ours(event, Context()) == {"winner": "ours"}
    assert redis_client.get(f"{key}:lock") == b"idempotence"  # Powertools' take-over lock
    assert 0 < redis_client.ttl(f"{key}:lock") <= 10
    assert fleet.pt(event, Context()) == {"winner": "ours"}
    assert len(fleet.runs) == 1


def test_powertools_takeover_lock_blocks_ours(redis_client: Any) -> None:
    fleet = Fleet(redis_client, lambda e, c: "ran")
    event = _event("r-6")
    key = fleet.key(event)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fleet.pt_layer.save_inprogress(data=event, remaining_time_in_millis=1)
    time.sleep(0.01)
    redis_client.set(f"{key}:lock", "True", ex=10)  # a Powertools take-over in flight
    with pytest.raises(ours.IdempotencyAlreadyInProgressError) as info:
        fleet.ours(event, Context())
    assert 0 < info.value.retry_after <= 10
    assert fleet.runs == []


def test_powertools_completion_without_validation_hash_still_replays(redis_client: Any) -> None:
    # Powertools' Redis completion drops the validation hash (Powertools itself then
    # refuses its own replay); ours replays it, having nothing to compare.
    fleet = Fleet(redis_client, lambda e, c: {"charged": 5}, validation="body.amount")
    fleet.pt(_event("r-7", 5), Context())
    assert fleet.ours(_event("r-7", 5), Context()) == {"charged": 5}
    assert len(fleet.runs) == 1


def test_validation_of_our_records_by_both(redis_client: Any) -> None:
    fleet = Fleet(redis_client, lambda e, c: {"charged": 5}, validation="body.amount")
    fleet.ours(_event("r-8", 5), Context())
    assert fleet.pt(_event("r-8", 5), Context()) == {"charged": 5}
    with pytest.raises(pt_errors.IdempotencyValidationError):
        fleet.pt(_event("r-8", 6), Context())
    with pytest.raises(ours.IdempotencyValidationError):
        fleet.ours(_event("r-8", 6), Context())
    assert len(fleet.runs) == 1


def test_mixed_fleet_runs_once(function_name: str) -> None:
    import redis

    start = threading.Barrier(8)
    runs: list[int] = []

    def handler(event: dict[str, Any], context: Any) -> Any:
        runs.append(1)
        time.sleep(0.3)
        return {"done": event["body"]["order_id"]}

    def instance(i: int) -> Any:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            layer: Any = (
                PtRedisLayer(client=client) if i % 2 else ours.CachePersistenceLayer(client=client)
            )
            lib: Any = pt if i % 2 else ours
            config = lib.IdempotencyConfig(event_key_jmespath="body.order_id")
            decorated = lib.idempotent(persistence_store=layer, config=config)(handler)
            start.wait()
            try:
                return decorated(_event("r-9"), Context())
            except (pt_errors.IdempotencyAlreadyInProgressError, AlreadyInProgressError) as exc:
                return type(exc).__name__
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(instance, range(8)))
    assert len(runs) == 1
    assert all(o == {"done": "r-9"} or "InProgress" in str(o) for o in outcomes)
    start = threading.Barrier(8)
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(instance, range(8))) == [{"done": "r-9"}] * 8
    assert len(runs) == 1


@pytest.mark.parametrize("how", ["url", "host"])
def test_connection_options(how: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(REDIS_URL)
    if how == "url":
        layer = ours.CachePersistenceLayer(url=REDIS_URL)
    else:
        layer = ours.CachePersistenceLayer(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db_index=int(parts.path.strip("/") or 0),
            ssl=False,
        )
    runs: list[int] = []

    @ours.idempotent_function(data_keyword_argument="order", persistence_store=layer)
    def charge(order: dict[str, Any]) -> int:
        runs.append(1)
        return 7

    try:
        assert charge(order={"id": how}) == charge(order={"id": how}) == 7
        assert runs == [1]
    finally:
        layer.close()


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ours.IdempotencyPersistenceConfigError):
        ours.CachePersistenceLayer(mode="sentinel", client=object())  # type: ignore[arg-type]
