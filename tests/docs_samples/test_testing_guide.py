"""The code of docs/testing.md: how an application tests its idempotent code. The page
includes this file's sections, so they run here as written."""

from __future__ import annotations

import pytest

from idempotence import Idempotency
from idempotence.stores import MemoryStore, Store
from idempotence.testing import ManualClock, StoreContract


# --8<-- [start:unit]
def make_charge(idem: Idempotency, charged: list[int]):  # your code takes its Idempotency
    @idem(key="order_id")
    def charge(order: dict) -> str:
        charged.append(order["amount"])
        return f"ch_{order['order_id']}"

    return charge


def test_a_retry_charges_once() -> None:
    charged: list[int] = []
    charge = make_charge(Idempotency(MemoryStore()), charged)  # no server, no file
    assert charge({"order_id": 1, "amount": 5}) == charge({"order_id": 1, "amount": 5})
    assert charged == [5]


def test_retention_expires_without_sleeping() -> None:
    clock = ManualClock()
    charged: list[int] = []
    charge = make_charge(Idempotency(MemoryStore(clock=clock), ttl=60), charged)
    charge({"order_id": 1, "amount": 5})
    clock.advance(61)  # past the retention: the key is free again
    charge({"order_id": 1, "amount": 5})
    assert charged == [5, 5]


# --8<-- [end:unit]


# --8<-- [start:disabled]
def test_disabled_runs_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDEMPOTENCE_DISABLED", "1")  # read on every call
    charged: list[int] = []
    charge = make_charge(Idempotency(MemoryStore()), charged)
    with pytest.warns(RuntimeWarning, match="IDEMPOTENCE_DISABLED"):  # said once per function
        charge({"order_id": 1, "amount": 5})
    charge({"order_id": 1, "amount": 5})
    assert charged == [5, 5]


# --8<-- [end:disabled]


# --8<-- [start:contract]
class TestMyStore(StoreContract):
    """The conformance suite against a store (MemoryStore stands in for yours)."""

    @pytest.fixture
    def store(self, clock: ManualClock) -> Store:  # built with the suite's clock
        return MemoryStore(clock=clock)

    # A store shared between processes provides a URL for the cross-process test:
    #     @pytest.fixture
    #     def store_url(self) -> str:
    #         return "mystore://..."
    # one that lives in a single process (like MemoryStore) skips it:
    test_concurrent_claims_processes = None


# --8<-- [end:contract]
