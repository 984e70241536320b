"""``idempotence.emf``: one CloudWatch Embedded Metric Format line per call, in the shape the
EMF specification requires (``_aws.Timestamp``, ``CloudWatchMetrics`` directives whose
dimension and metric names are members of the root), with no key or payload value."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from idempotence import Idempotency, KeyReuseError, emf
from idempotence.stores import MemoryStore
from tests.aws_lambda.events import FakeContext, load


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    emf.enable(namespace="Shop", stream=stream)
    yield stream
    emf.disable()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def check_emf(document: dict[str, Any]) -> None:
    """The specification's rules for one document."""
    meta = document["_aws"]
    assert isinstance(meta["Timestamp"], int)
    assert meta["Timestamp"] > 1_600_000_000_000
    for directive in meta["CloudWatchMetrics"]:
        assert isinstance(directive["Namespace"], str)
        assert directive["Namespace"]
        for dimension_set in directive["Dimensions"]:
            assert 1 <= len(dimension_set) <= 30
            for name in dimension_set:
                assert isinstance(document[name], str)  # a dimension value is a string
        for metric in directive["Metrics"]:
            assert set(metric) <= {"Name", "Unit", "StorageResolution"}
            assert isinstance(document[metric["Name"]], int | float)


def test_one_line_per_call_in_the_emf_shape(out: io.StringIO) -> None:
    @Idempotency(MemoryStore())(key="card", namespace="shop.pay")
    def pay(order: dict[str, Any]) -> str:
        return "paid"

    pay({"card": "visa-secret"})
    pay({"card": "visa-secret"})
    with pytest.raises(KeyReuseError):
        pay({"card": "visa-secret", "amount": 3})
    executed, replayed, reuse = documents = lines(out)
    for document in documents:
        check_emf(document)
    assert executed["_aws"]["CloudWatchMetrics"] == [
        {
            "Namespace": "Shop",
            "Dimensions": [["KeyNamespace", "Outcome"]],
            "Metrics": [
                {"Name": "Calls", "Unit": "Count"},
                {"Name": "Duration", "Unit": "Milliseconds"},
                {"Name": "StoreDuration", "Unit": "Milliseconds"},
            ],
        }
    ]
    assert {k: executed[k] for k in ("KeyNamespace", "Outcome", "Store", "Calls")} == {
        "KeyNamespace": "shop.pay",
        "Outcome": "executed",
        "Store": "memory",
        "Calls": 1,
    }
    assert replayed["Outcome"] == "replayed"
    assert replayed["ReplayedFrom"] == "store"
    assert reuse["Outcome"] == "key_reuse"
    assert reuse["Error"] == "KeyReuseError"
    assert "visa-secret" not in out.getvalue()


def test_custom_dimensions_and_properties() -> None:
    stream = io.StringIO()
    emf.enable(
        dimensions=[["Service", "Outcome"], ["Store"]],
        properties={"Service": "orders"},
        stream=stream,
    )
    try:

        @Idempotency(MemoryStore())
        def f(x: int) -> int:
            return x

        f(1)
    finally:
        emf.disable()
    (document,) = lines(stream)
    check_emf(document)
    directive = document["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "Idempotence"
    assert directive["Dimensions"] == [["Service", "Outcome"], ["Store"]]
    assert document["Service"] == "orders"


def test_unknown_dimension_is_refused_at_enable() -> None:
    with pytest.raises(ValueError, match="Tenant"):
        emf.enable(dimensions=[["Tenant"]])
    with pytest.raises(ValueError, match="non-empty"):
        emf.enable(dimensions=[[]])


def test_a_lambda_invocation_prints_emf_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    idem = Idempotency(MemoryStore())

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
        return {"processed": len(event["Records"])}

    emf.enable()
    try:
        handler(load("sqs"), FakeContext())
        handler(load("sqs"), FakeContext())
    finally:
        emf.disable()
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["Outcome"] for d in documents] == ["executed", "replayed"]
    for document in documents:
        check_emf(document)
        assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Idempotence"
