"""child_key, current_key and the public API of idempotence.effects."""

from __future__ import annotations

import subprocess
import sys

import pytest

import idempotence.effects
from idempotence.effects import child_key, current_key


def test_stable_distinct_and_valid() -> None:
    parent = "orders.create#0123456789abcdef"
    key = child_key(parent, "stripe-charge")
    assert key == child_key(parent, "stripe-charge")
    assert key.startswith("stripe-charge-")
    others = {
        child_key(parent, "stripe-refund"),
        child_key(parent + "x", "stripe-charge"),
        child_key(parent, "stripe charge"),  # reduces to the same label, different hash
        child_key(parent, "stripe_charge"),
    }
    assert key not in others
    assert len(others) == 4
    weird = child_key("p" * 5000, "ünïcode / name\n" * 20)
    assert len(weird) <= 255
    assert weird.isascii()
    assert weird.isprintable()


def test_stable_across_processes() -> None:
    code = "from idempotence.effects import child_key; print(child_key('a#1', 'email'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == child_key("a#1", "email")


def test_rejects_empty() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        child_key("", "x")
    with pytest.raises(ValueError, match="non-empty"):
        child_key("k", "")


def test_current_key_outside() -> None:
    with pytest.raises(LookupError, match="idempotent function"):
        current_key()


def test_public_api() -> None:
    assert sorted(idempotence.effects.__all__) == [
        "Guarded",
        "StateConflictError",
        "StateGuard",
        "Transaction",
        "TransactionOutcome",
        "TransactionalIdempotency",
        "adynamodb_transaction",
        "adynamodb_transition",
        "asql_transition",
        "child_key",
        "current_key",
        "dynamodb_transaction",
        "dynamodb_transition",
        "dynamodb_transition_update",
        "sql_transition",
        "transactional",
    ]
    for name in idempotence.effects.__all__:
        assert getattr(idempotence.effects, name).__doc__, name
