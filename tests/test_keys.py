from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import uuid

import pytest

from idempotence import InvalidKeyError
from idempotence._keys import canonical_json, compile_selector, digest, is_missing


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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), object(), {1: 1, "a": 2}])
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
