from __future__ import annotations

import pytest

from idempotence.stores import MemoryStore
from idempotence.testing import ManualClock, StoreContract


class TestMemoryStore(StoreContract):
    test_concurrent_claims_processes = None  # one process by design

    @pytest.fixture
    def store(self, clock: ManualClock) -> MemoryStore:
        return MemoryStore(clock=clock)
