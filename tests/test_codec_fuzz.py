"""Fuzzing record decoding: whatever bytes a store hands back, decoding a value, a stored
error or an HTTP response yields a value or :class:`CorruptRecordError` - never another
exception, never a class the function did not declare."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any, ClassVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idempotence import (
    CorruptRecordError,
    JSONSerializer,
    ResultNotStoredError,
    StoredErrorReplay,
)
from idempotence._record import Record, Status
from idempotence.engine import replay_record
from idempotence.http import HTTPResponse

codec = JSONSerializer()


@dataclasses.dataclass
class Declared:
    """The one class the hint below declares."""

    a: int = 0
    b: Any = None


@dataclasses.dataclass
class Undeclared:
    """Imported, but never declared: building it would be the bug."""

    built: ClassVar[int] = 0
    a: int = 0

    def __post_init__(self) -> None:
        type(self).built += 1


class Declared2(Exception):
    pass


_TAGS = [
    "$tuple", "$dict", "$set", "$frozenset", "$float", "$enum", "$dataclass", "$model",
    "$bytes", "$bytearray", "$datetime", "$date", "$time", "$timedelta", "$decimal", "$uuid",
    "$wat", "$",
]  # fmt: skip
_NAMES = [
    "tests.test_codec_fuzz:Declared", "tests.test_codec_fuzz:Undeclared", "os:system",
    "builtins:int", "nosuch:X", "idempotence:Status", "",
]  # fmt: skip
_scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from([*_NAMES, "inf", "nan", "AAAA", "2026-01-01", "1.5", "a" * 40])
)
_json = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=3) | st.sampled_from(["v", "a", "b"]), inner, max_size=3)
        | st.builds(lambda t, body: {t: body}, st.sampled_from(_TAGS), inner)
        | st.builds(
            lambda t, n, v: {t: n, "v": v},
            st.sampled_from(["$dataclass", "$enum", "$model"]),
            st.sampled_from(_NAMES) | inner,
            inner,
        )
        | st.builds(  # a well-formed class tag: only Declared may come out of it
            lambda n, v: {"$dataclass": n, "v": v},
            st.sampled_from(_NAMES),
            st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2),
        )
    ),
    max_leaves=12,
)


def _bytes_of(tree: Any) -> bytes:
    return json.dumps(tree, separators=(",", ":"), allow_nan=False).encode()


def _record(data: bytes) -> Record:
    return Record("k", Status.COMPLETED, "fp", 1, 0.0, 1.0, data)


def _check(data: bytes) -> None:
    Undeclared.built = 0
    with contextlib.suppress(CorruptRecordError):
        codec.decode(data, Declared)
    replay_errors = (CorruptRecordError, StoredErrorReplay, ResultNotStoredError, Declared2)
    for envelope in (b"\x01V", b"\x01E", b"\x01N", b"\x01", b""):
        with contextlib.suppress(*replay_errors):
            replay_record(_record(envelope + data), codec, Declared, None, (Declared2,))
    with contextlib.suppress(CorruptRecordError):
        HTTPResponse.decode(b"\x01V" + data)
    assert Undeclared.built == 0


_FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_to_a_value_or_corrupt_record(data: bytes) -> None:
    _check(data)


@_FAST
@given(_json)
def test_arbitrary_tagged_json_decodes_to_a_value_or_corrupt_record(tree: Any) -> None:
    _check(_bytes_of(tree))


@_FAST
@given(_json, st.sampled_from(["Declared2", "Undeclared", "ValueError"]))
def test_arbitrary_stored_errors_replay_as_errors_or_corrupt_record(args: Any, name: str) -> None:
    head = _bytes_of({"type": f"tests.test_codec_fuzz:{name}", "message": "m"})
    _check(head + b"\n" + _bytes_of(args))


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=150, max_value=3000), st.sampled_from(["[", '{"a":', '{"$tuple":[']))
def test_deep_records_decode_or_are_corrupt(n: int, opening: str) -> None:
    closing = {"[": "]", '{"a":': "}", '{"$tuple":[': "]}"}[opening]
    _check((opening * n + "1" + closing * n).encode())
