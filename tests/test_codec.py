from __future__ import annotations

import dataclasses
import decimal
from typing import Any, Optional

import pytest

from idempotence import CorruptRecordError, JSONSerializer, UnencodableError

codec = JSONSerializer()


@dataclasses.dataclass
class Line:
    sku: str
    qty: int


@dataclasses.dataclass
class Order:
    lines: list[Line]
    total: decimal.Decimal
    note: Optional[str] = None  # noqa: UP045 - the typing form must resolve too


def test_nested_dataclasses_round_trip_through_field_annotations() -> None:
    order = Order([Line("a", 1)], decimal.Decimal("2.50"))
    assert codec.decode(codec.encode(order), Order) == order
    assert codec.decode(codec.encode([order]), list[Order]) == [order]
    assert codec.decode(codec.encode(order), Optional[Order]) == order  # noqa: UP045


def test_classes_not_reachable_from_the_hint_are_found_only_if_already_imported() -> None:
    data = codec.encode(Line("a", 1))
    assert codec.decode(data, None) == Line("a", 1)  # this module is imported
    forged = data.replace(b"tests.test_codec:Line", b"not_imported_module_xyz:Evil")
    with pytest.raises(CorruptRecordError, match="Annotate"):
        codec.decode(forged, None)


def test_a_record_cannot_name_a_non_dataclass() -> None:
    forged = b'{"$dataclass":"subprocess:Popen","v":{"args":"true"}}'
    with pytest.raises(CorruptRecordError):
        codec.decode(forged, None)


@pytest.mark.parametrize(
    "value",
    [object(), {1: object()}, lambda: 1, type("IntSub", (int,), {})(3)],
    ids=["object", "nested", "lambda", "int-subclass"],
)
def test_unencodable_values_raise_unencodable(value: Any) -> None:
    with pytest.raises(UnencodableError):
        codec.encode(value)


def test_deep_nesting_is_refused_not_crashing() -> None:
    deep: Any = []
    for _ in range(500):
        deep = [deep]
    with pytest.raises(UnencodableError, match="deep"):
        codec.encode(deep)


def test_dollar_keys_and_non_string_keys_are_escaped() -> None:
    value = {"$tuple": [1], 1: "one", (1, 2): "pair"}
    assert codec.decode(codec.encode(value), None) == value


def test_nan_and_negative_zero() -> None:
    out = codec.decode(codec.encode([float("nan"), -0.0]), None)
    assert out[0] != out[0]
    assert str(out[1]) == "-0.0"
