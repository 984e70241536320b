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


def _purge_work(tmp_path: Path, records: int) -> int:
    """SQLite VM steps (in hundreds) a purge(batch_size=10) of ``records`` rows, one in
    ten expired and spread over the key range, takes: a count of work, not a timing."""
    clock = ManualClock()
    store = SQLiteStore(tmp_path / f"w{records}.db", clock=clock)
    now = clock()
    rows = [
        (f"ns#{i * 7919 % records:08d}", "COMPLETED", "fp", i + 1, now - 1,
         now - 1 if i % 10 == 0 else now + 3600, b"r")
        for i in range(records)
    ]  # fmt: skip
    steps = [0]
    with store.sql_connection() as conn:
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO {store.table} VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")

        def step() -> int:
            steps[0] += 1
            return 0

        conn.set_progress_handler(step, 100)
        assert store.purge(batch_size=10) == records // 10
        conn.set_progress_handler(None, 0)
    assert store.count() == records - records // 10
    assert store.count(expired=True) == 0
    return steps[0]


def test_purge_reads_the_table_once_however_many_batches(tmp_path: Path) -> None:
    """Keyset batches: four times the records (and batches) is about four times the work,
    not sixteen (each batch rescanning past the rows the earlier ones kept)."""
    small, large = _purge_work(tmp_path, 2000), _purge_work(tmp_path, 8000)
    assert large / small < 6, (small, large)
