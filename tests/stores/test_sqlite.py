from __future__ import annotations

from pathlib import Path

import pytest

from idempotence.stores import SQLiteStore, store_from_url
from idempotence.testing import ManualClock, StoreContract


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store(self, clock: ManualClock, tmp_path: Path) -> SQLiteStore:
        return SQLiteStore(tmp_path / "idem.db", clock=clock)

    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'procs.db'}"


def test_url_forms(tmp_path: Path) -> None:
    store = store_from_url(f"sqlite:///{tmp_path}/x.db?table=my_records&timeout=5")
    assert isinstance(store, SQLiteStore)
    assert (store.path, store.table, store.timeout) == (f"{tmp_path}/x.db", "my_records", 5.0)
    with pytest.raises(ValueError, match="memory://"):
        store_from_url("sqlite://:memory:")


def test_purge_deletes_only_expired_rows(tmp_path: Path) -> None:
    clock = ManualClock()
    store = SQLiteStore(tmp_path / "p.db", clock=clock)
    fence = store.claim("old", "fp", lease=10, ttl=100).record.fence
    store.complete("old", fence, b"r", ttl=100)
    clock.advance(50)
    store.claim("new", "fp", lease=10, ttl=100)
    clock.advance(60)
    assert store.purge() == 1
    assert store.get("new") is not None
    assert store.delete("new")
    assert not store.delete("old")
