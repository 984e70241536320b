"""The drop-in surface of idempotence.compat.powertools: Powertools' names and signatures,
its keys for every option that shapes them (hash function, custom JMESPath functions,
powertools_base64_gzip, event data classes), its defaults, and this library's engine
behaviour where it deliberately differs (falsy replays, async functions)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import inspect
import json
import warnings
from typing import Any

import jmespath.functions
import pytest
from aws_lambda_powertools.utilities import idempotency as pt
from aws_lambda_powertools.utilities.data_classes import SQSEvent
from aws_lambda_powertools.utilities.idempotency import exceptions as pt_exceptions
from aws_lambda_powertools.utilities.idempotency.persistence import redis as pt_redis
from aws_lambda_powertools.utilities.idempotency.serialization import (
    custom_dict as pt_custom_dict,
)
from aws_lambda_powertools.utilities.idempotency.serialization import (
    dataclass as pt_dataclass,
)
from aws_lambda_powertools.utilities.idempotency.serialization import no_op as pt_no_op
from aws_lambda_powertools.utilities.idempotency.serialization import (
    pydantic as pt_pydantic,
)

import idempotence
from idempotence.compat import powertools as ours
from idempotence.compat.powertools import exceptions as our_exceptions

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.usefixtures("function_name"),
]


class Context:
    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def _params(fn: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize(
    ("theirs", "mine"),
    [
        (pt.IdempotencyConfig, ours.IdempotencyConfig),
        (pt.DynamoDBPersistenceLayer, ours.DynamoDBPersistenceLayer),
        (pt.idempotent_function, ours.idempotent_function),
        (pt_redis.CachePersistenceLayer.__init__, ours.CachePersistenceLayer.__init__),
        (pt_dataclass.DataclassSerializer, ours.DataclassSerializer),
        (pt_pydantic.PydanticSerializer, ours.PydanticSerializer),
        (pt_custom_dict.CustomDictSerializer, ours.CustomDictSerializer),
        (pt_no_op.NoOpSerializer, ours.NoOpSerializer),
    ],
)
def test_signatures_match_powertools(theirs: Any, mine: Any) -> None:
    expected = _params(theirs)
    # Ours may add keyword-only options after Powertools' own (fence_attr, clock...).
    assert _params(mine)[: len(expected)] == expected
    extra = _params(mine)[len(expected) :]
    assert all(kind is inspect.Parameter.KEYWORD_ONLY for _, kind, _ in extra)


def test_every_powertools_name_is_exported() -> None:
    names = set(pt.__all__) | {
        name for name in dir(pt_exceptions) if name.startswith("Idempotency")
    }
    names |= {"RedisCachePersistenceLayer", "CachePersistenceLayer", "DataclassSerializer",
              "PydanticSerializer", "CustomDictSerializer", "NoOpSerializer"}  # fmt: skip
    assert sorted(n for n in names if not hasattr(ours, n)) == []
    assert ours.RedisCachePersistenceLayer is ours.CachePersistenceLayer


def test_exceptions_catchable_under_both_names() -> None:
    assert issubclass(ours.IdempotencyAlreadyInProgressError, idempotence.AlreadyInProgressError)
    assert issubclass(ours.IdempotencyValidationError, idempotence.KeyReuseError)
    assert issubclass(ours.IdempotencyKeyError, idempotence.MissingKeyError)
    assert issubclass(ours.IdempotencyPersistenceLayerError, idempotence.StoreError)
    for name in dir(our_exceptions):
        if name.startswith("Idempotency"):
            assert issubclass(getattr(our_exceptions, name), idempotence.IdempotencyError)
    error = ours.IdempotencyPersistenceLayerError("Failed to save", ValueError("x"))
    assert "Failed to save" in str(error)


class Pair:
    """One function decorated by Powertools and by us on one table."""

    def __init__(self, ddb: Any, table: str, fn: Any, **config: Any) -> None:
        self.runs: list[Any] = []

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.runs.append(1)
            return fn(*args, **kwargs)

        counted.__qualname__ = fn.__qualname__
        counted.__module__ = fn.__module__
        self.pt_layer = pt.DynamoDBPersistenceLayer(table_name=table, boto3_client=ddb)
        self.layer = ours.DynamoDBPersistenceLayer(table_name=table, boto3_client=ddb)
        self.pt = pt.idempotent_function(
            data_keyword_argument="data",
            persistence_store=self.pt_layer,
            config=pt.IdempotencyConfig(**config),
        )(counted)
        self.ours = ours.idempotent_function(
            data_keyword_argument="data",
            persistence_store=self.layer,
            config=ours.IdempotencyConfig(**config),
        )(counted)


def _echo(data: Any) -> Any:
    return {"seen": True}


@pytest.mark.parametrize("hash_function", ["md5", "sha256", "sha1"])
def test_hash_function_gives_powertools_keys(ddb: Any, pt_table: str, hash_function: str) -> None:
    pair = Pair(ddb, pt_table, _echo, hash_function=hash_function, event_key_jmespath="id")
    data = {"id": f"h-{hash_function}", "n": 1.5}
    pair.pt(data=data)
    assert pair.ours(data=data) == {"seen": True}
    assert len(pair.runs) == 1


def _cloudwatch_logs_event(message: str) -> dict[str, Any]:
    logs = {"messageType": "DATA_MESSAGE", "logEvents": [{"id": "e1", "message": message}]}
    data = base64.b64encode(gzip.compress(json.dumps(logs).encode())).decode()
    return {"awslogs": {"data": data}}


def test_powertools_base64_gzip_key(ddb: Any, pt_table: str) -> None:
    # CloudWatch Logs subscription: the key is inside base64(gzip(JSON)).
    expression = "powertools_json(powertools_base64_gzip(awslogs.data)).logEvents[0].id"
    pair = Pair(ddb, pt_table, _echo, event_key_jmespath=expression)
    pair.pt(data=_cloudwatch_logs_event("first"))
    # Same log event id, another message: the same key (a replay).
    assert pair.ours(data=_cloudwatch_logs_event("second")) == {"seen": True}
    assert len(pair.runs) == 1


class _Upper(jmespath.functions.Functions):
    @jmespath.functions.signature({"types": ["string"]})
    def _func_upper(self, value: str) -> str:
        return value.upper()


def test_custom_jmespath_functions_replace_the_builtins(ddb: Any, pt_table: str) -> None:
    options = {"custom_functions": _Upper()}
    pair = Pair(ddb, pt_table, _echo, event_key_jmespath="upper(id)", jmespath_options=options)
    pair.pt(data={"id": "abc"})
    assert pair.ours(data={"id": "ABC"}) == {"seen": True}  # upper() gives one key
    assert len(pair.runs) == 1
    only_custom = ours.idempotent_function(
        data_keyword_argument="data",
        persistence_store=pair.layer,
        config=ours.IdempotencyConfig(
            event_key_jmespath="powertools_json(body)", jmespath_options=options
        ),
    )(_echo)
    with pytest.raises(idempotence.InvalidKeyError) as info:
        only_custom(data={"body": '{"secret": 1}'})
    assert "secret" not in str(info.value)  # never quotes the payload


def test_event_data_class_payload_gives_powertools_key(ddb: Any, pt_table: str) -> None:
    raw = {"Records": [{"messageId": "m-1", "body": '{"order": 1}', "attributes": {}}]}
    pair = Pair(ddb, pt_table, _echo, event_key_jmespath="Records[0].messageId")
    pair.pt(data=SQSEvent(raw))
    assert pair.ours(data=SQSEvent(raw)) == {"seen": True}
    assert pair.ours(data=raw) == {"seen": True}  # the raw event is the same key
    assert len(pair.runs) == 1


def test_missing_key_warns_and_runs_without_a_record(ddb: Any, pt_table: str) -> None:
    pair = Pair(ddb, pt_table, _echo, event_key_jmespath="id")
    with pytest.warns(UserWarning, match="No idempotency key value found"):
        pair.ours(data={"other": 1})
    pair.ours(data={"other": 1})
    assert len(pair.runs) == 2
    strict = ours.idempotent_function(
        data_keyword_argument="data",
        persistence_store=pair.layer,
        config=ours.IdempotencyConfig(event_key_jmespath="id", raise_on_no_idempotency_key=True),
    )(_echo)
    with pytest.raises(ours.IdempotencyKeyError):
        strict(data={"id": None})


def test_data_keyword_argument_must_be_passed_by_keyword(ddb: Any, pt_table: str) -> None:
    pair = Pair(ddb, pt_table, _echo)
    with pytest.raises(RuntimeError, match="Unable to extract 'data'"):
        pair.ours({"id": 1})


def test_disabled_by_environment(ddb: Any, pt_table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pair = Pair(ddb, pt_table, _echo)
    monkeypatch.setenv("POWERTOOLS_IDEMPOTENCY_DISABLED", "true")
    with pytest.warns(UserWarning, match="Disabling idempotency"):
        pair.ours(data={"id": 1})
    pair.ours(data={"id": 1})
    assert len(pair.runs) == 2
    monkeypatch.delenv("POWERTOOLS_IDEMPOTENCY_DISABLED")
    pair.ours(data={"id": 1})
    pair.ours(data={"id": 1})
    assert len(pair.runs) == 3


@pytest.mark.parametrize("falsy", [0, "", [], {}, False])
def test_falsy_results_replay_as_themselves(ddb: Any, pt_table: str, falsy: Any) -> None:
    # Powertools replays a falsy response as None; ours replays what the function returned.
    pair = Pair(ddb, pt_table, lambda data: falsy)
    assert pair.ours(data={"id": repr(falsy)}) == falsy
    replay = pair.ours(data={"id": repr(falsy)})
    assert replay == falsy
    assert type(replay) is type(falsy)
    assert pair.pt(data={"id": repr(falsy)}) is None  # Powertools' own behaviour
    assert len(pair.runs) == 1


def test_async_functions(ddb: Any, pt_table: str) -> None:
    runs: list[int] = []
    layer = ours.DynamoDBPersistenceLayer(table_name=pt_table, boto3_client=ddb)

    @ours.idempotent_function(data_keyword_argument="order", persistence_store=layer)
    async def charge(order: dict[str, Any]) -> dict[str, Any]:
        runs.append(1)
        await asyncio.sleep(0)
        return {"charged": order["id"]}

    @ours.idempotent(persistence_store=layer)
    async def handler(event: dict[str, Any], context: Any) -> str:
        runs.append(1)
        return "ok"

    async def main() -> None:
        assert await charge(order={"id": 1}) == {"charged": 1}
        assert await charge(order={"id": 1}) == {"charged": 1}
        assert await handler({"x": 1}, Context()) == "ok"
        assert await handler({"x": 1}, Context()) == "ok"

    asyncio.run(main())
    assert len(runs) == 2


def test_response_hook_gets_a_data_record(ddb: Any, pt_table: str) -> None:
    seen: list[Any] = []

    def hook(response: Any, record: Any) -> Any:
        seen.append(record)
        return {**response, "x-idempotent-replay": True}

    pair = Pair(ddb, pt_table, _echo, response_hook=hook)
    assert pair.ours(data={"id": "hook"}) == {"seen": True}
    assert pair.ours(data={"id": "hook"}) == {"seen": True, "x-idempotent-replay": True}
    (record,) = seen
    assert isinstance(record, ours.DataRecord)
    assert record.status == "COMPLETED"
    assert record.response_json_as_dict() == {"seen": True}
    assert record.idempotency_key.endswith(pair.pt_layer._generate_hash({"id": "hook"}))


def test_local_cache_answers_without_the_table(ddb: Any, pt_table: str) -> None:
    pair = Pair(ddb, pt_table, _echo, use_local_cache=True, local_cache_max_items=4)
    pair.ours(data={"id": "cached"})
    requests: list[str] = []
    ddb.meta.events.register("before-send.dynamodb", lambda request, **kw: requests.append("x"))
    try:
        assert pair.ours(data={"id": "cached"}) == {"seen": True}
    finally:
        ddb.meta.events.unregister("before-send.dynamodb")
    assert requests == []
    assert len(pair.runs) == 1


def test_default_expiry_is_one_hour(ddb: Any, pt_table: str) -> None:
    import time

    pair = Pair(ddb, pt_table, _echo)
    pair.ours(data={"id": "ttl"})
    pair.pt_layer.configure(pt.IdempotencyConfig(), f"{_echo.__module__}.{_echo.__qualname__}")
    key = pair.pt_layer._get_hashed_idempotency_key({"id": "ttl"})
    item = ddb.get_item(TableName=pt_table, Key={"id": {"S": key}})["Item"]
    assert abs(int(item["expiration"]["N"]) - (time.time() + 3600)) < 5
    assert "validation" not in item  # validation only when configured


def test_string_return_annotation_is_resolved(ddb: Any, pt_table: str) -> None:
    # This module has ``from __future__ import annotations``: the annotation is a string.
    import dataclasses

    layer = ours.DynamoDBPersistenceLayer(table_name=pt_table, boto3_client=ddb)

    @ours.idempotent_function(
        data_keyword_argument="order",
        persistence_store=layer,
        output_serializer=ours.DataclassSerializer,
    )
    def make(order: dict[str, Any]) -> Receipt:
        return Receipt(order["id"])

    assert make(order={"id": 5}) == make(order={"id": 5}) == Receipt(5)
    assert dataclasses.is_dataclass(Receipt)


import dataclasses as _dc  # noqa: E402


@_dc.dataclass
class Receipt:
    id: int


def test_powertools_import_names_are_not_needed() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import idempotence.compat.powertools.persistence.redis  # noqa: F401


def test_lease_is_sixty_seconds_whatever_the_context(ddb: Any, pt_table: str) -> None:
    import time

    class ShortContext:
        def get_remaining_time_in_millis(self) -> int:
            return 1_000

    layer = ours.DynamoDBPersistenceLayer(table_name=pt_table, boto3_client=ddb)
    seen: list[dict[str, Any]] = []

    @ours.idempotent(persistence_store=layer)
    def handler(event: dict[str, Any], context: Any) -> str:
        seen.extend(ddb.scan(TableName=pt_table, ConsistentRead=True)["Items"])
        return "ok"

    handler({"lease": "probe"}, ShortContext())
    import os

    mine = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
    (item,) = [
        i for i in seen if i["id"]["S"].startswith(mine) and i["status"]["S"] == "INPROGRESS"
    ]
    lease_end = int(item["in_progress_expiration"]["N"]) / 1000
    assert 55 < lease_end - time.time() <= 60


def test_unencodable_response_is_not_run_again(ddb: Any, pt_table: str) -> None:
    pair = Pair(ddb, pt_table, lambda data: {"when": object()})
    with pytest.raises(idempotence.ResultNotStoredError):
        pair.ours(data={"id": "unencodable"})
    with pytest.raises(idempotence.ResultNotStoredError):
        pair.ours(data={"id": "unencodable"})
    assert len(pair.runs) == 1


def test_key_prefix_must_be_printable_ascii(ddb: Any, pt_table: str) -> None:
    layer = ours.DynamoDBPersistenceLayer(table_name=pt_table, boto3_client=ddb)

    @ours.idempotent_function(
        data_keyword_argument="data", persistence_store=layer, key_prefix="pédido"
    )
    def f(data: Any) -> int:
        return 1

    with pytest.raises(idempotence.InvalidKeyError, match="printable ASCII"):
        f(data={"id": 1})


def test_every_powertools_module_path_has_a_twin() -> None:
    import importlib
    import pkgutil
    import typing

    import aws_lambda_powertools.utilities.idempotency as root

    internal = {"base", "persistence.cache"}  # Powertools' handler internals, not API
    checked = 0
    missing: list[str] = []
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{root.__name__}."):
        name = info.name.removeprefix(f"{root.__name__}.")
        if name in internal:
            continue
        theirs = importlib.import_module(info.name)
        mine = importlib.import_module(f"idempotence.compat.powertools.{name}")
        public = [
            name
            for name, value in vars(theirs).items()
            if not name.startswith("_")
            and getattr(value, "__module__", "") == theirs.__name__  # defined there
            and name not in ("logger", "IdempotencyHandler")  # Powertools internals
            and not isinstance(value, typing.TypeVar)
        ]
        missing.extend(f"{name}.{n}" for n in public if not hasattr(mine, n))
        checked += 1
    assert missing == []
    assert checked >= 12
