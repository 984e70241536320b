"""Stateful property test: every store behaves like the reference model, step by step.

Hypothesis drives random sequences of claim / complete / release / renew / get / delete
and clock advances (a :class:`ManualClock` injected into the store) over a few keys and two
fingerprints, through the sync methods or the async twins, and compares every outcome
(``acquired``, every field of the returned record, ``now``, the booleans) with a reference:
a dict of records updated by :func:`decide_claim` and the fence rules of
``docs/protocol.md#fencing``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from idempotence._record import Claim, Record, Status
from idempotence.stores import MemoryStore, SQLiteStore
from idempotence.stores._base import Store, decide_claim
from idempotence.testing import ManualClock, StoreDriver
from tests.conftest import (
    MYSQL_URL,
    POSTGRES_URL,
    REDIS_URL,
    mysql_admin_or_unavailable,
    postgres_admin_or_unavailable,
    redis_client_or_unavailable,
)
from tests.moto_server import dynamodb_endpoint  # noqa: F401 - the session fixture

KEYS = 3
FINGERPRINTS = ("fp-a", "fp-b")
LEASES = (10.0, 30.0)
TTLS = (5.0, 100.0)
ADVANCES = (1.0, 5.0, 0.0, 9.5, 10.0, 29.0, 30.0, 31.0, 60.0, 150.0)
RESULTS = (b"", b"r1", b"\x00\xffbinary", b"x" * 2000)  # 2000: DynamoDB compresses it


class Reference:
    """The contract as a dict: records kept with their fence (retention checked on read)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.records: dict[str, Record] = {}

    def claim(self, key: str, fingerprint: str, lease: float, ttl: float) -> Claim:
        outcome = decide_claim(
            self.records.get(key), key, fingerprint, now=self.clock(), lease=lease, ttl=ttl
        )
        if outcome.acquired:
            self.records[key] = outcome.record
        return outcome

    def _owned(self, key: str, fence: int) -> Record | None:
        record = self.records.get(key)
        if (
            record is None
            or record.fence != fence
            or record.status is not Status.IN_PROGRESS
            or record.is_expired(self.clock())
        ):
            return None
        return record

    def complete(self, key: str, fence: int, result: bytes, ttl: float) -> bool:
        record = self._owned(key, fence)
        if record is None:
            return False
        self.records[key] = record._replace(
            status=Status.COMPLETED, result=result, expires_at=self.clock() + ttl
        )
        return True

    def release(self, key: str, fence: int) -> bool:
        record = self._owned(key, fence)
        if record is None:
            return False
        self.records[key] = record._replace(expires_at=self.clock())
        return True

    def renew(self, key: str, fence: int, lease: float) -> bool:
        record = self._owned(key, fence)
        if record is None:
            return False
        until = self.clock() + lease
        self.records[key] = record._replace(
            lease_expires_at=until, expires_at=max(record.expires_at, until)
        )
        return True

    def get(self, key: str) -> Record | None:
        record = self.records.get(key)
        return None if record is None or record.is_expired(self.clock()) else record

    def delete(self, key: str) -> bool:
        return self.records.pop(key, None) is not None


def assert_same(actual: Record | None, expected: Record | None, what: str) -> None:
    if expected is None:
        assert actual is None, f"{what}: expected no record, got {actual}"
        return
    assert actual is not None, f"{what}: expected {expected}, got None"
    observable = (actual.key, actual.status, actual.fingerprint, actual.fence, actual.result)
    wanted = (expected.key, expected.status, expected.fingerprint, expected.fence, expected.result)
    assert observable == wanted, f"{what}: {actual} != {expected}"
    assert actual.expires_at == pytest.approx(expected.expires_at, abs=1e-3), what
    if expected.status is Status.IN_PROGRESS:  # a completed record's lease means nothing
        assert actual.lease_expires_at == pytest.approx(expected.lease_expires_at, abs=1e-3), what


def machine_for(store: Store, clock: ManualClock, label: str) -> type[RuleBasedStateMachine]:
    sync_driver = StoreDriver(store, "sync")
    async_driver = StoreDriver(store, "async")
    drivers = (sync_driver, async_driver)

    class StoreVersusReference(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            tag = uuid.uuid4().hex[:12]
            self.keys = [f"proof#{label}#{tag}#{i}" for i in range(KEYS)]
            self.ref = Reference(clock)
            self.fences: dict[str, set[int]] = {k: {1} for k in self.keys}

        @initialize()
        def fresh(self) -> None:
            for key in self.keys:
                assert sync_driver.get(key) is None

        def driver(self, data: st.DataObject) -> StoreDriver:
            return drivers[data.draw(st.integers(0, 1), label="async")]

        def pick(self, data: st.DataObject) -> tuple[StoreDriver, str]:
            key = self.keys[data.draw(st.integers(0, KEYS - 1), label="key")]
            return self.driver(data), key

        def fence(self, data: st.DataObject, key: str) -> int:
            known = sorted(self.fences[key] | {0, max(self.fences[key]) + 1})
            current = self.ref.records.get(key)
            if current is not None:  # mostly the owner's fence, so operations succeed often
                known = [current.fence] * len(known) * 2 + known
            return data.draw(st.sampled_from(known), label="fence")

        @rule(
            data=st.data(),
            fp=st.sampled_from(FINGERPRINTS),
            lease=st.sampled_from(LEASES),
            ttl=st.sampled_from(TTLS),
        )
        def claim(self, data: st.DataObject, fp: str, lease: float, ttl: float) -> None:
            s, key = self.pick(data)
            actual = s.claim(key, fp, lease=lease, ttl=ttl)
            expected = self.ref.claim(key, fp, lease, ttl)
            assert actual.acquired == expected.acquired, (actual, expected)
            assert actual.now == pytest.approx(expected.now, abs=1e-3)
            assert_same(actual.record, expected.record, "claim")
            self.fences[key].add(actual.record.fence)

        @rule(data=st.data(), result=st.sampled_from(RESULTS), ttl=st.sampled_from(TTLS))
        def complete(self, data: st.DataObject, result: bytes, ttl: float) -> None:
            s, key = self.pick(data)
            fence = self.fence(data, key)
            expected = self.ref.complete(key, fence, result, ttl)
            assert s.complete(key, fence, result, ttl=ttl) == expected

        @rule(data=st.data())
        def release(self, data: st.DataObject) -> None:
            s, key = self.pick(data)
            fence = self.fence(data, key)
            expected = self.ref.release(key, fence)
            assert s.release(key, fence) == expected

        @rule(data=st.data(), lease=st.sampled_from(LEASES))
        def renew(self, data: st.DataObject, lease: float) -> None:
            s, key = self.pick(data)
            fence = self.fence(data, key)
            expected = self.ref.renew(key, fence, lease)
            assert s.renew(key, fence, lease=lease) == expected

        @rule(data=st.data())
        def get(self, data: st.DataObject) -> None:
            s, key = self.pick(data)
            assert_same(s.get(key), self.ref.get(key), "get")

        @rule(data=st.data())
        def delete(self, data: st.DataObject) -> None:
            s, key = self.pick(data)
            expected_record = self.ref.get(key)
            expected = self.ref.delete(key)
            actual = s.delete(key)
            if expected_record is not None:
                assert actual, "a live record must be reported deleted"
            else:  # an expired record may already be gone physically (backend TTL)
                assert actual in (expected, False)
            self.fences[key].add(0)

        @rule(seconds=st.sampled_from(ADVANCES))
        def advance(self, seconds: float) -> None:
            clock.advance(seconds)

        @invariant()
        def reads_agree(self) -> None:
            for key in self.keys:
                assert_same(sync_driver.get(key), self.ref.get(key), "invariant get")

        def teardown(self) -> None:
            for key in self.keys:
                sync_driver.delete(key)

    StoreVersusReference.close_drivers = lambda: async_driver.close()  # type: ignore[attr-defined]
    return StoreVersusReference


# -- stores ---------------------------------------------------------------------------
def memory_store(clock: ManualClock, request: pytest.FixtureRequest) -> Iterator[Store]:
    yield MemoryStore(clock=clock)


def sqlite_store(clock: ManualClock, request: pytest.FixtureRequest) -> Iterator[Store]:
    tmp = request.getfixturevalue("tmp_path")
    store = SQLiteStore(tmp / "stateful.db", clock=clock)
    yield store
    store.close()


def redis_store(clock: ManualClock, request: pytest.FixtureRequest) -> Iterator[Store]:
    redis_client_or_unavailable(REDIS_URL).close()
    from idempotence.stores._redis import RedisStore

    store = RedisStore(REDIS_URL, prefix=f"idempotence-proof:{uuid.uuid4().hex}:", clock=clock)
    yield store
    store.close()


def postgres_store(clock: ManualClock, request: pytest.FixtureRequest) -> Iterator[Store]:
    admin = postgres_admin_or_unavailable(POSTGRES_URL)
    from idempotence.stores._postgres import PostgresStore

    table = f"idem_proof_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(POSTGRES_URL, table=table, clock=clock)
    store.create_table()
    yield store
    store.close()
    admin.execute(f'DROP TABLE IF EXISTS "{table}"')
    admin.close()


def mysql_store(clock: ManualClock, request: pytest.FixtureRequest) -> Iterator[Store]:
    admin = mysql_admin_or_unavailable(MYSQL_URL)
    from idempotence.stores._mysql import MySQLStore

    table = f"idem_proof_{uuid.uuid4().hex[:12]}"
    store = MySQLStore(MYSQL_URL, table=table, clock=clock)
    store.create_table()
    yield store
    store.close()
    with admin.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
    admin.close()


def dynamodb_store(clock: ManualClock, request: pytest.FixtureRequest) -> Iterator[Store]:
    pytest.importorskip("boto3")
    pytest.importorskip("aiobotocore")
    from idempotence.stores._dynamodb import DynamoDBStore

    endpoint = request.getfixturevalue("dynamodb_endpoint")
    table = f"idem-proof-{uuid.uuid4().hex[:12]}"
    DynamoDBStore(table, region="us-east-1", endpoint_url=endpoint).create_table()
    store = DynamoDBStore(table, region="us-east-1", endpoint_url=endpoint, clock=clock)
    yield store
    store.close()


STORES: dict[str, tuple[Callable[..., Iterator[Store]], int]] = {
    # name: (factory, examples); networked stores get fewer examples (each step is I/O)
    "memory": (memory_store, 150),
    "sqlite": (sqlite_store, 80),
    "redis": (redis_store, 60),
    "postgres": (postgres_store, 50),
    "mysql": (mysql_store, 50),
    "dynamodb": (dynamodb_store, 25),
}


@pytest.mark.parametrize("name", list(STORES))
def test_store_matches_reference(name: str, request: pytest.FixtureRequest) -> None:
    factory, examples = STORES[name]
    clock = ManualClock()
    stores = factory(clock, request)
    store = next(stores)
    machine = machine_for(store, clock, name)
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
            ),
        )
    finally:
        machine.close_drivers()  # type: ignore[attr-defined]
        next(stores, None)
