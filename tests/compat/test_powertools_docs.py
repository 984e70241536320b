"""Powertools' documentation examples (tests/compat/powertools_docs/) run unchanged but
for the import: each is loaded twice, as written and with
``aws_lambda_powertools.utilities.idempotency`` replaced by
``idempotence.compat.powertools``, against one moto table found through the environment
(``IDEMPOTENCY_TABLE``, ``AWS_ENDPOINT_URL_DYNAMODB``) as in a deployed function. Each
example's result carries a fresh uuid, so equal answers across the two libraries prove a
replay, not a second run."""

from __future__ import annotations

import dataclasses
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.idempotency import exceptions as pt_errors

from idempotence.compat import powertools as ours
from tests.compat.conftest import _create

DOCS = Path(__file__).parent / "powertools_docs"
OLD, NEW = "aws_lambda_powertools.utilities.idempotency", "idempotence.compat.powertools"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Context:
    function_name = "docs"
    aws_request_id = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def load(name: str, variant: str) -> Any:
    """The example module, as written (``powertools``) or with the import changed."""
    path = DOCS / f"{name}.py"
    source = path.read_text()
    assert OLD in source
    if variant == "ours":
        source = source.replace(OLD, NEW)
        assert OLD not in source
    module_name = f"tests.compat.powertools_docs.{name}"  # one name: the same keys
    module = types.ModuleType(module_name)
    module.__file__ = str(path)
    saved = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(source, str(path), "exec", dont_inherit=True), module.__dict__)
    finally:
        if saved is None:
            sys.modules.pop(module_name, None)
        else:
            sys.modules[module_name] = saved
    return module


def plain(value: Any) -> Any:
    """A result as data (the two loads define distinct but equal classes)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ("dataclass", type(value).__name__, dataclasses.asdict(value))
    if hasattr(value, "model_dump"):
        return ("model", type(value).__name__, value.model_dump())
    return value


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, dynamodb_endpoint: str, ddb: Any, function_name: str
) -> Any:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint)

    def use_table(keys: list[tuple[str, str]]) -> str:
        table = _create(ddb, keys)
        monkeypatch.setenv("IDEMPOTENCY_TABLE", table)
        return table

    return use_table


CASES = {
    "getting_started": ({"user_id": "u-1", "product_id": "p-1"}, [("id", "HASH")]),
    "function_dataclass": ({}, [("id", "HASH")]),
    "function_pydantic": ({}, [("id", "HASH")]),
    "custom_key_prefix": ({"order": 7}, [("id", "HASH")]),
    "composite_key": ({"body": {"user_id": "u-9"}}, [("id", "HASH"), ("sort_key", "RANGE")]),
}


@pytest.mark.parametrize("first", ["ours", "powertools"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs_unchanged_and_shares_records(env: Any, name: str, first: str) -> None:
    event, keys = CASES[name]
    env(keys)
    second = "powertools" if first == "ours" else "ours"
    a, b = load(name, first), load(name, second)
    result = a.lambda_handler(dict(event), Context())
    assert plain(b.lambda_handler(dict(event), Context())) == plain(result)  # a replay
    assert plain(a.lambda_handler(dict(event), Context())) == plain(result)
    if name.startswith("function_"):
        ours_module = a if first == "ours" else b
        replayed = ours_module.lambda_handler({}, Context())
        assert type(replayed) is ours_module.OrderOutput  # rebuilt by the output serializer


def test_custom_key_prefix_is_the_key(env: Any, ddb: Any) -> None:
    table = env([("id", "HASH")])
    load("custom_key_prefix", "ours").lambda_handler({"order": 1}, Context())
    items = ddb.scan(TableName=table)["Items"]
    assert len(items) == 1
    assert items[0]["id"]["S"].startswith("my_custom_prefix#")


def test_composite_key_layout(env: Any, ddb: Any, function_name: str) -> None:
    table = env([("id", "HASH"), ("sort_key", "RANGE")])
    load("composite_key", "ours").lambda_handler({"body": {"user_id": "u"}}, Context())
    (item,) = ddb.scan(TableName=table)["Items"]
    assert item["id"] == {"S": f"idempotency#{function_name}"}
    assert item["sort_key"]["S"].startswith(f"{function_name}.tests.compat.powertools_docs")


@pytest.mark.parametrize("first", ["ours", "powertools"])
def test_payload_validation_example(env: Any, first: str) -> None:
    env([("id", "HASH")])
    mine, theirs = load("payload_validation", "ours"), load("payload_validation", "powertools")
    event = {"user_id": "u", "product_id": "p", "charge_type": "subscription", "amount": 10}
    a, b = (mine, theirs) if first == "ours" else (theirs, mine)
    result = a.lambda_handler(dict(event), Context())
    assert b.lambda_handler(dict(event), Context()) == result
    changed = {**event, "amount": 11}
    with pytest.raises(ours.IdempotencyValidationError):
        mine.lambda_handler(changed, Context())
    with pytest.raises(pt_errors.IdempotencyValidationError):
        theirs.lambda_handler(changed, Context())
