from __future__ import annotations

import dataclasses
import decimal
import enum
import json
import sys
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idempotence import CorruptRecordError, JSONSerializer, UnencodableError
from idempotence._codec import MAX_DEPTH
from idempotence.http import HTTPResponse

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


@dataclasses.dataclass
class Tripwire:
    """An imported dataclass that no hint below declares: decoding must never build it."""

    built: ClassVar[int] = 0

    def __post_init__(self) -> None:
        type(self).built += 1


class Shade(enum.Enum):
    DARK = "dark"


class Priced(pydantic.BaseModel):
    line: Line
    shade: Shade


@pytest.mark.parametrize(
    "hint", [None, dict, Any, list[Line], "Tripwire"], ids=["none", "dict", "any", "other", "str"]
)
def test_a_loaded_class_the_hint_does_not_reach_is_never_built(hint: Any) -> None:
    data = codec.encode([Tripwire()])
    Tripwire.built = 0
    with pytest.raises(CorruptRecordError, match=r"return annotation.*replay_types="):
        codec.decode(data, hint)
    assert Tripwire.built == 0


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (Line("a", 1), Line),
        (Line("a", 1), Optional[Line]),  # noqa: UP045
        (Line("a", 1), Line | None),
        (Line("a", 1), Union[int, Line]),  # noqa: UP007
        ([Line("a", 1)], list[Line]),
        ({"k": (Line("a", 1),)}, dict[str, tuple[Line, ...]]),
        (Line("a", 1), Annotated[Line, "meta"]),
        (Shade.DARK, Literal[Shade.DARK]),
        (Order([Line("a", 1)], decimal.Decimal(1)), Order),  # Line through Order's fields
        (Line("a", 1), Priced),  # through a pydantic model's fields
        (Shade.DARK, Priced),
        (Priced(line=Line("a", 1), shade=Shade.DARK), list[Priced]),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_classes_are_found_through_the_hint(value: Any, hint: Any) -> None:
    data = codec.encode(value)
    codec.check_replayable(data, hint)
    assert codec.decode(data, hint) == value


@pytest.mark.parametrize(
    "name",
    ["nosuch_module_xyz:X", "os:system", "json:JSONDecoder", "subprocess:Popen", 5, ["a"]],
)
def test_a_record_never_imports_or_reads_the_module_it_names(name: Any) -> None:
    forged = json.dumps({"$dataclass": name, "v": {}}).encode()
    with pytest.raises(CorruptRecordError, match="replay_types="):
        codec.decode(forged, None)
    assert "nosuch_module_xyz" not in sys.modules


def test_check_replayable_refuses_what_decode_would_refuse() -> None:
    data = codec.encode({"lines": [Line("a", 1)], "when": decimal.Decimal(1)})
    with pytest.raises(UnencodableError, match=r"tests\.test_codec:Line.*replay_types="):
        codec.check_replayable(data, dict)
    codec.check_replayable(data, dict[str, list[Line]])
    codec.check_replayable(codec.encode({"$dataclass": "x:Y", "v": (1,)}), None)  # escaped


# -- depth: the encoder refuses what the decoder would refuse ----------------------------
def _deep_bytes(shape: str, n: int) -> bytes:
    """A record ``n`` levels deep, built as bytes (no Python value that deep is needed)."""
    opening, closing, leaf = {
        "list": (b"[", b"]", b"1"),
        "dict": (b'{"a":', b"}", b"1"),
        "tuple": (b'{"$tuple":[', b"]}", b"1"),
        "dict-pairs": (b'{"$dict":[[1,', b"]]}", b"1"),
        "dataclass": (b'{"$dataclass":"tests.test_codec:Line","v":{"sku":', b',"qty":1}}', b'"a"'),
        "model": (b'{"$model":"tests.test_codec:Priced","v":{"line":', b"}}", b"1"),
    }[shape]
    return opening * n + leaf + closing * n


@pytest.mark.parametrize("n", [201, 500, 1000, 100_000])
@pytest.mark.parametrize("shape", ["list", "dict", "tuple", "dict-pairs", "dataclass", "model"])
def test_records_nested_too_deep_are_corrupt_not_recursion_errors(shape: str, n: int) -> None:
    with pytest.raises(CorruptRecordError, match="nested more than 200 levels"):
        codec.decode(_deep_bytes(shape, n), Union[Line, Priced])  # noqa: UP007


def _nest(shape: str, n: int) -> Any:
    v: Any = float("inf") if shape == "inf" else 1
    for _ in range(n):
        if shape in ("list", "inf"):
            v = [v]
        elif shape == "tuple":
            v = (v,)
        elif shape == "int-keys":
            v = {1: v}
        elif shape == "dataclass":
            v = Line("a", v)
    return v


@pytest.mark.parametrize("shape", ["list", "inf", "tuple", "int-keys", "dataclass"])
def test_everything_the_encoder_accepts_decodes_and_nothing_deeper(shape: str) -> None:
    n = 1
    while n < 220 and _encodes(_nest(shape, n + 1)):
        n += 1
    deepest = codec.encode(_nest(shape, n))
    assert codec.decode(deepest, Line) == _nest(shape, n) or shape == "inf"
    assert _json_depth(json.loads(deepest)) <= MAX_DEPTH
    with pytest.raises(UnencodableError, match="nested more than 200 levels"):
        codec.encode(_nest(shape, n + 1))


def _encodes(value: Any) -> bool:
    try:
        codec.encode(value)
    except UnencodableError:
        return False
    return True


def _json_depth(v: Any) -> int:
    if isinstance(v, dict):
        v = list(v.values())
    if not isinstance(v, list):
        return 0
    return 1 + max((_json_depth(x) for x in v), default=0)


def test_a_deep_pydantic_model_is_refused_when_stored() -> None:
    class Tree(pydantic.BaseModel):
        children: list[Any]

    deep: Any = []
    for _ in range(250):
        deep = [deep]
    with pytest.raises(UnencodableError, match="nested more than 200 levels"):
        codec.encode(Tree(children=deep))


# -- HTTP records rebuild no classes, and deep ones are corrupt ----------------------------
def test_http_records_rebuild_no_class_and_refuse_deep_nesting() -> None:
    ok = HTTPResponse(201, [("a", "b")], b"x")
    assert HTTPResponse.decode(ok.encode()) == ok
    Tripwire.built = 0
    forged = (
        b'\x01V{"status":200,"headers":[],"body":{"$dataclass":"tests.test_codec:Tripwire","v":{}}}'
    )
    with pytest.raises(CorruptRecordError, match="replay_types="):
        HTTPResponse.decode(forged)
    assert Tripwire.built == 0
    for n in (500, 1000, 100_000):
        deep = b'\x01V{"status":200,"headers":' + b"[" * n + b"]" * n + b',"body":""}'
        with pytest.raises(CorruptRecordError, match="nested more than 200 levels"):
            HTTPResponse.decode(deep)


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
