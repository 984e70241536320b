"""``key_hash=``: the key is exactly ``namespace#key_hash(material)`` and the fingerprint
``key_hash(fingerprint material)`` (how another library's key format is kept)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from idempotence import Idempotency, IdempotencyConfig
from idempotence.stores import MemoryStore


def _md5(material: Any) -> str:
    return hashlib.md5(json.dumps(material, sort_keys=True).encode()).hexdigest()


def test_key_and_fingerprint_are_exactly_the_hash() -> None:
    idem = Idempotency(MemoryStore(), key_hash=_md5)
    calls: list[dict[str, Any]] = []

    @idem(key="order_id", fingerprint="amount", namespace="fn.mod.create")
    def create(order: dict[str, Any]) -> int:
        calls.append(order)
        return len(calls)

    order = {"order_id": "o-1", "amount": 3}
    assert create.key_for(order) == f"fn.mod.create#{_md5('o-1')}"
    assert create.fingerprint_for(order) == _md5(3)
    assert create(order) == create(dict(order)) == 1
    record = create.record_for(order)
    assert record is not None
    assert record.key == create.key_for(order)
    assert record.fingerprint == _md5(3)


def test_without_key_hash_keys_are_unchanged() -> None:
    idem = Idempotency(MemoryStore())

    @idem(key="order_id", namespace="fn.mod.create")
    def create(order: dict[str, Any]) -> None: ...

    key = create.key_for({"order_id": "o-1"})
    assert key.startswith("fn.mod.create#")
    assert key != f"fn.mod.create#{_md5('o-1')}"


def test_key_hash_refuses_scope_and_non_functions() -> None:
    with pytest.raises(TypeError, match="scope"):
        IdempotencyConfig(key_hash=_md5, scope="tenant-a")
    with pytest.raises(TypeError, match="key_hash must be a function"):
        IdempotencyConfig(key_hash="md5")  # type: ignore[arg-type]
