"""examples/observability/powertools_metrics.py (quoted by docs/observability.md): the
observer's metrics reach Powertools' EMF output, one document per invocation."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from idempotence import observe
from tests.aws_lambda.events import FakeContext

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    monkeypatch.setenv("IDEMPOTENCE_STORE", "memory://")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Orders")
    path = ROOT / "examples" / "observability" / "powertools_metrics.py"
    spec = importlib.util.spec_from_file_location("example_powertools_metrics", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    observe.unsubscribe(module.to_powertools)
    module.metrics.clear_metrics()
    sys.modules.pop(spec.name, None)


def test_powertools_metrics_count_outcomes(
    example: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    first = example.handler({"order_id": "o-1", "amount": 5}, FakeContext())
    again = example.handler({"order_id": "o-1", "amount": 5}, FakeContext())
    assert first == again == {"order_id": "o-1", "status": "created"}
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(documents) == 2  # one EMF document per invocation
    executed, replayed = documents
    assert executed["IdempotencyExecuted"] == [1.0]
    assert replayed["IdempotencyReplayed"] == [1.0]
    assert "IdempotencyReplayed" not in executed
    directive = replayed["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "Orders"
    names = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert names == {"IdempotencyReplayed": "Count", "IdempotencyStoreTime": "Milliseconds"}
    assert replayed["IdempotencyStoreTime"][0] >= 0
    assert "o-1" not in json.dumps(documents)  # no payload value in the metrics
