from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import hashlib
import types
import uuid
from typing import Any

import pytest

from idempotence import InvalidKeyError
from idempotence._keys import MAX_DEPTH, canonical_json, compile_selector, digest, is_missing


def test_canonical_json_is_order_and_whitespace_free() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": "é"}]}) == (
        '{"a":[1,{"c":"é","d":2}],"b":1}'.encode()
    )


def test_digest_is_sha256_not_md5() -> None:
    assert digest({"a": 1}) == hashlib.sha256(b'{"a":1}').hexdigest()[:32]


def test_rich_types_have_a_stable_form() -> None:
    value = {
        "at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        "amount": decimal.Decimal("1.10"),
        "id": uuid.UUID(int=1),
        "tags": {"b", "a"},
        "raw": b"\x00",
    }
    assert canonical_json(value) == (
        b'{"amount":"1.10","at":"2026-01-01T00:00:00+00:00",'
        b'"id":"00000000-0000-0000-0000-000000000001","raw":"AA==","tags":["a","b"]}'
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), object(), {1: float("nan")}])
def test_non_canonical_material_is_invalid(bad: object) -> None:
    with pytest.raises(InvalidKeyError, match="key=/fingerprint="):
        canonical_json(bad)


def test_missing_material() -> None:
    for missing in (None, "", [None, ""]):
        assert is_missing(missing)
    for present in (0, False, [None, 1]):
        assert not is_missing(present)


def test_jmespath_json_functions() -> None:
    select = compile_selector("json(body).order.id", what="key")
    assert select({"body": '{"order": {"id": 7}}'}) == 7
    with pytest.raises(InvalidKeyError):
        select({"body": "not json"})


# -- hostile or careless key material -------------------------------------------------------
def _nested(levels: int) -> list[Any]:
    root: list[Any] = []
    cur = root
    for _ in range(levels):
        nxt: list[Any] = []
        cur.append(nxt)
        cur = nxt
    return root


def test_nesting_beyond_the_limit_is_invalid_not_recursion_error() -> None:
    assert canonical_json(_nested(MAX_DEPTH - 1))  # within the limit: fine
    for deep in (_nested(MAX_DEPTH + 1), _nested(5000), {"a": _nested(MAX_DEPTH)}):
        with pytest.raises(InvalidKeyError, match="nested deeper than"):
            canonical_json(deep)
        with pytest.raises(InvalidKeyError):
            digest(deep)


def test_empty_key_check_on_a_deep_list_is_invalid_not_recursion_error() -> None:
    with pytest.raises(InvalidKeyError, match="nested deeper than"):
        is_missing(_nested(10_000))
    assert is_missing(_nested(MAX_DEPTH - 1))  # lists of nothing: missing


def test_int_and_str_dict_keys_do_not_collide() -> None:
    assert canonical_json({1: "a"}) != canonical_json({"1": "a"})
    assert digest({1: "a"}) != digest({"1": "a"})
    assert digest({"x": {1: "a"}}) != digest({"x": {"1": "a"}})
    assert digest({True: "a"}) != digest({"true": "a"})
    # Still one stable form: insertion order does not matter.
    assert digest({2: "b", 1: "a"}) == digest({1: "a", 2: "b"})
    assert digest({1: "a", "1": "b"}) == digest({"1": "b", 1: "a"})


def test_json_functions_keep_the_precision_of_the_text() -> None:
    select = compile_selector("json(body).amount", what="key")
    near = select({"body": '{"amount": 1.0000000000000001}'})
    exact = select({"body": '{"amount": 1.0}'})
    assert digest(near) != digest(exact)
    for fn in ("powertools_json(body).amount", "base64_json(b64).amount"):
        sel = compile_selector(fn, what="key")
        a = sel(
            {
                "body": '{"amount": 1.0000000000000001}',
                "b64": "eyJhbW91bnQiOjEuMDAwMDAwMDAwMDAwMDAwMX0=",
            }
        )
        b = sel({"body": '{"amount": 1.0}', "b64": "eyJhbW91bnQiOjEuMH0="})
        assert digest(a) != digest(b)
    # Ordinary numbers are the floats they always were (keys made before are unchanged).
    assert select({"body": '{"amount": 12.5}'}) == 12.5
    assert type(select({"body": '{"amount": 12.5}'})) is float
    assert select({"body": '{"amount": 1e400}'}) is not None  # no inf, no error
    # Another spelling of the same value is the same key.
    assert digest(select({"body": '{"amount": 1.50}'})) == digest(
        select({"body": '{"amount": 1.5}'})
    )


def test_float_payloads_round_trip() -> None:
    assert digest(0.1 + 0.2) != digest(0.3)
    assert canonical_json(1.0000000000000002) == b"1.0000000000000002"


@pytest.mark.parametrize("empty", [None, "", [], {}, [None, ""], [[], [{}]]])
def test_empty_selections_are_missing(empty: Any) -> None:
    assert is_missing(empty)


def test_non_dict_mappings_canonicalize() -> None:
    proxy = types.MappingProxyType({"b": 1, "a": [types.MappingProxyType({"c": 2})]})
    assert canonical_json(proxy) == b'{"a":[{"c":2}],"b":1}'
    assert compile_selector("a[0].c", what="key")(proxy) == 2
    assert compile_selector("b", what="key")(proxy) == 1


def test_powertools_event_data_classes_canonicalize() -> None:
    data_classes = pytest.importorskip("aws_lambda_powertools.utilities.data_classes")
    event = data_classes.SQSEvent({"Records": [{"messageId": "m-1", "body": "{}"}]})
    assert canonical_json(event) == canonical_json(
        {"Records": [{"messageId": "m-1", "body": "{}"}]}
    )
    assert compile_selector("Records[0].messageId", what="key")(event) == "m-1"


@dataclasses.dataclass
class Order:
    id: int
    client: object = dataclasses.field(default_factory=object)  # no canonical form


def test_key_from_a_dataclass_ignores_fields_it_does_not_select() -> None:
    assert compile_selector("id", what="key")(Order(7)) == 7
    assert compile_selector("[id]", what="key")(Order(7)) == [7]


def test_key_from_a_dataclass_nested_in_a_dict() -> None:
    assert compile_selector("order.id", what="key")({"order": Order(1)}) == 1
    assert compile_selector("orders[0].id", what="key")({"orders": [Order(2)]}) == 2
    assert compile_selector("order.id", what="key")({"order": "not an object"}) is None


@pytest.mark.parametrize("fn", ["json", "powertools_json"])
def test_json_functions_on_deep_text_are_invalid_not_recursion_error(fn: str) -> None:
    select = compile_selector(f"{fn}(body)", what="key")
    with pytest.raises(InvalidKeyError):
        select({"body": "[" * 100_000 + "]" * 100_000})
    b64 = compile_selector("base64_json(body)", what="key")
    with pytest.raises(InvalidKeyError):
        b64({"body": base64.b64encode(b"[" * 100_000 + b"]" * 100_000).decode()})


def test_key_expression_errors_do_not_echo_values() -> None:
    card = "4111111111111111"
    for expr in ("abs(card)", "base64_json(card)", "keys(card)", "starts_with(card, `1`)"):
        try:
            select = compile_selector(expr, what="key")
        except ValueError:
            continue
        with pytest.raises(InvalidKeyError) as info:
            select({"card": card})
        assert card not in str(info.value)
        assert expr in str(info.value)
