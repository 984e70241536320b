from __future__ import annotations

import dataclasses
import decimal
import json
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- property: every encodable value comes back equal and of the same types ---------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats(allow_nan=False)
    | st.text(st.characters(exclude_categories=("Cs",)))  # lone surrogates: refused (below)
    | st.sampled_from(["$tuple", "$", "$$x", "", 'é\n"\\'])
    | st.binary(max_size=20)
    | st.builds(decimal.Decimal, st.decimals(allow_nan=False, allow_infinity=False))
)
_hashable = st.recursive(
    _scalars.filter(lambda v: not isinstance(v, decimal.Decimal) or v.is_finite()),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=5,
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        | st.dictionaries(_hashable, inner, max_size=3)
        | st.sets(_hashable, max_size=3)
        | st.frozensets(_hashable, max_size=3)
        | st.builds(Line, st.text(max_size=5), st.integers())
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same type at every level (``1 == 1.0 == True`` does not pass)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return same(list(a), list(b)) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and a == 0.0:
        return str(a) == str(b)  # -0.0 stays -0.0
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_any_encodable_value_round_trips_with_its_types(value: Any) -> None:
    data = codec.encode(value)
    json.loads(data)  # what is stored is plain, valid JSON text
    assert same(codec.decode(data, Line), value)


def test_text_that_is_not_unicode_and_oversized_ints_are_refused() -> None:
    with pytest.raises(UnencodableError, match="not valid Unicode"):
        codec.encode({"name": "caf\ud800"})
    with pytest.raises(UnencodableError, match="cannot be written as JSON"):
        codec.encode([10**5000])
