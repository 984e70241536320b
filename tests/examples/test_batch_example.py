"""examples/batch/consumer.py (quoted by docs/batch.md) on a realistic SQS event."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EVENT = json.loads((ROOT / "tests" / "aws_lambda" / "events" / "sqs.json").read_text())


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    monkeypatch.setenv("IDEMPOTENCE_STORE", "memory://")
    spec = importlib.util.spec_from_file_location(
        "example_batch_consumer", ROOT / "examples" / "batch" / "consumer.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_redelivered_batch_runs_each_message_once(consumer: types.ModuleType) -> None:
    event: dict[str, Any] = copy.deepcopy(EVENT)
    assert consumer.handler(event, None) == {"batchItemFailures": []}
    redelivered = copy.deepcopy(EVENT)
    for record in redelivered["Records"]:
        record["receiptHandle"] = "new-" + record["receiptHandle"]
        record["attributes"]["ApproximateReceiveCount"] = "2"
    assert consumer.handler(redelivered, None) == {"batchItemFailures": []}
    assert consumer.shipped == ["ord-1001", "ord-1002"]


def test_only_the_failing_message_is_reported(consumer: types.ModuleType) -> None:
    event: dict[str, Any] = copy.deepcopy(EVENT)
    event["Records"][0]["body"] = json.dumps({"amount": 1})
    failed = consumer.handler(event, None)["batchItemFailures"]
    assert failed == [{"itemIdentifier": event["Records"][0]["messageId"]}]
    assert consumer.shipped == ["ord-1002"]
