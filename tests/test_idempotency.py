"""The decorators, end to end over real stores (memory, SQLite)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import enum
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import pydantic
import pytest

from idempotence import (
    AlreadyInProgressError,
    CorruptRecordError,
    Idempotency,
    InvalidKeyError,
    KeyReuseError,
    LeaseLostError,
    MissingKeyError,
    Record,
    ResultNotStoredError,
    Status,
    StoredErrorReplay,
    StoreError,
    default_store_url,
    idempotent,
)
from idempotence.stores import MemoryStore, SQLiteStore, Store
from idempotence.testing import ManualClock
from tests.conftest import Counter


@dataclasses.dataclass(frozen=True)
class Receipt:
    order_id: str
    amount: decimal.Decimal
    at: dt.datetime
    tags: tuple[str, ...] = ()


class Color(enum.Enum):
    RED = "red"


class Invoice(pydantic.BaseModel):
    number: int
    issued: dt.date
    lines: list[str]


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def idem(store: MemoryStore) -> Idempotency:
    return Idempotency(store)


# -- type-faithful replays ----------------------------------------------------------------
VALUES: list[Any] = [
    {},
    [],
    0,
    "",
    False,
    None,
    0.0,
    (1, "a", None),
    {"nested": [{"x": (1, 2)}, {1, 2}], 3: "int key", "$dollar": b"\x00\xff"},
    dt.datetime(2026, 11, 27, 7, 20, 1, 123456, tzinfo=dt.timezone.utc),
    dt.date(2026, 1, 2),
    dt.timedelta(days=1, seconds=2, microseconds=3),
    decimal.Decimal("10.50"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Color.RED,
    Receipt("o-1", decimal.Decimal("9.99"), dt.datetime(2026, 1, 1, 12), ("a", "b")),
    Invoice(number=7, issued=dt.date(2026, 1, 1), lines=["x"]),
    float("inf"),
    frozenset({"a"}),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_replay_is_equal_and_of_the_same_type(tmp_path: Path, value: Any) -> None:
    path = tmp_path / "idem.db"

    def make(counter: Counter) -> Any:
        @Idempotency(SQLiteStore(path))
        def produce(request: dict[str, int]) -> Any:
            counter.hit()
            return value

        produce.__annotations__["return"] = type(value)
        return produce

    first, second = Counter(), Counter()
    original = make(first)({"id": 1})
    replay = make(second)({"id": 1})  # a fresh decorator: decoded from the store
    assert (first.n, second.n) == (1, 0)
    assert replay == original == value
    assert type(replay) is type(value)


def test_replay_in_another_process_rebuilds_the_annotated_type(tmp_path: Path) -> None:
    module = tmp_path / "orders_mod.py"
    module.write_text(
        textwrap.dedent(
            f"""
            from __future__ import annotations
            import dataclasses, decimal, sys
            from idempotence import Idempotency

            idem = Idempotency("sqlite:///{tmp_path}/shared.db")

            @dataclasses.dataclass
            class Charge:
                id: str
                amount: decimal.Decimal

            @idem(key="order_id")
            def charge(order: dict) -> Charge:
                print("EXECUTED", file=sys.stderr)
                return Charge(order["order_id"], decimal.Decimal("1.10"))

            if __name__ == "__main__":
                print(repr(charge({{"order_id": "o-9"}})))
            """
        )
    )
    runs = [
        subprocess.run(
            [sys.executable, str(module)], capture_output=True, text=True, check=True, cwd=tmp_path
        )
        for _ in range(2)
    ]
    assert [r.stderr.count("EXECUTED") for r in runs] == [1, 0]
    assert runs[0].stdout == runs[1].stdout == "Charge(id='o-9', amount=Decimal('1.10'))\n"


# -- only declared classes are rebuilt: refused at store time, never built on replay -----
@dataclasses.dataclass
class Tripwire:
    """Counts constructions: a replay must never build a class the function did not declare."""

    built: ClassVar[int] = 0
    n: int = 0

    def __post_init__(self) -> None:
        type(self).built += 1


def _local_result() -> Any:
    @dataclasses.dataclass
    class Local:
        n: int

    return Local(1)


_LOCAL = _local_result()


def _stores(tmp_path: Path) -> list[Store]:
    return [MemoryStore(), SQLiteStore(tmp_path / "idem.db")]


@pytest.mark.parametrize(
    ("result", "annotation"),
    [
        (Receipt("o", decimal.Decimal(1), dt.datetime(2026, 1, 1)), dict),
        (Receipt("o", decimal.Decimal(1), dt.datetime(2026, 1, 1)), None),
        ({"lines": [Color.RED]}, dict[str, list[str]]),
        (_local_result(), None),
        (Invoice(number=1, issued=dt.date(2026, 1, 1), lines=[]), Any),
    ],
    ids=["dataclass-annotated-dict", "dataclass-unannotated", "enum-in-dict", "local", "model"],
)
@pytest.mark.parametrize("store_index", [0, 1], ids=["memory", "sqlite"])
def test_a_result_no_replay_could_rebuild_is_refused_when_stored(
    tmp_path: Path, store_index: int, result: Any, annotation: Any
) -> None:
    store = _stores(tmp_path)[store_index]
    calls = Counter()

    def make() -> Any:
        def produce(request: dict[str, int]) -> Any:
            calls.hit()
            return result

        produce.__annotations__["return"] = annotation
        return Idempotency(store)(namespace="refused")(produce)

    with pytest.raises(ResultNotStoredError, match="replay_types=") as info:
        make()({"id": 1})
    assert "annotate the return type" in str(info.value)
    assert info.value.result is result  # the first caller still gets its value, attached
    with pytest.raises(ResultNotStoredError, match="not run again"):
        make()({"id": 1})  # a fresh decorator reads the "not stored" marker
    assert calls.n == 1


@pytest.mark.parametrize(
    ("result", "annotation", "options"),
    [
        (Receipt("o", decimal.Decimal(1), dt.datetime(2026, 1, 1)), Receipt, {}),
        ([Receipt("o", decimal.Decimal(1), dt.datetime(2026, 1, 1))], list[Receipt] | None, {}),
        (
            Receipt("o", decimal.Decimal(1), dt.datetime(2026, 1, 1)),
            None,
            {"replay_types": Receipt},
        ),
        (
            {"r": Receipt("o", decimal.Decimal(1), dt.datetime(2026, 1, 1))},
            dict,
            {"replay_types": [Receipt]},
        ),
        (Invoice(number=1, issued=dt.date(2026, 1, 1), lines=["x"]), Invoice, {}),
        ({"c": Color.RED}, dict[str, Color], {}),
        (_LOCAL, None, {"replay_types": (type(_LOCAL),)}),
    ],
    ids=[
        "annotation",
        "nested-annotation",
        "replay-types",
        "replay-types-list",
        "model",
        "enum",
        "local",
    ],
)
@pytest.mark.parametrize("store_index", [0, 1], ids=["memory", "sqlite"])
def test_declared_classes_are_stored_and_replayed(
    tmp_path: Path, store_index: int, result: Any, annotation: Any, options: dict[str, Any]
) -> None:
    store = _stores(tmp_path)[store_index]
    calls = Counter()

    def make() -> Any:
        def produce(request: dict[str, int]) -> Any:
            calls.hit()
            return result

        produce.__annotations__["return"] = annotation
        return Idempotency(store)(namespace="declared", **options)(produce)

    assert make()({"id": 1}) is result
    replay = make()({"id": 1})  # a fresh decorator: decoded from the store
    assert calls.n == 1
    assert replay == result
    assert type(replay) is type(result)


def test_a_replay_never_builds_a_class_the_function_does_not_declare(store: MemoryStore) -> None:
    @Idempotency(store)(namespace="shared")
    def writer(request: dict[str, int]) -> Tripwire:
        return Tripwire(1)

    @Idempotency(store)(namespace="shared")
    def reader(request: dict[str, int]) -> dict[str, int]:
        raise AssertionError("must not run")

    writer({"id": 1})
    Tripwire.built = 0
    with pytest.raises(CorruptRecordError, match="replay_types=") as info:
        reader({"id": 1})
    assert "forget the key" in str(info.value)
    assert Tripwire.built == 0
    assert writer({"id": 1}) == Tripwire(1)  # the declaring function still replays it


def test_replay_types_must_be_classes() -> None:
    with pytest.raises(TypeError, match="replay_types must be classes"):
        Idempotency(MemoryStore(), replay_types=("Receipt",))
    with pytest.raises(TypeError, match="replay_types must be classes"):
        Idempotency(MemoryStore(), replay_types=5)
    assert Idempotency(MemoryStore(), replay_types=Receipt).config.replay_types == (Receipt,)


def test_a_stored_error_whose_args_hold_a_class_keeps_its_message(idem: Idempotency) -> None:
    calls = Counter()

    @idem(store_errors=(OutOfStock,))
    def reserve(sku: str) -> None:
        calls.hit()
        raise OutOfStock(Receipt("o", decimal.Decimal(1), dt.datetime(2026, 1, 1)))

    with pytest.raises(OutOfStock) as first:
        reserve("sku-1")
    with pytest.raises(OutOfStock) as again:  # replayed, not CorruptRecordError
        reserve("sku-1")
    assert again.value.args == (str(first.value),)
    assert calls.n == 1


def test_stored_results_are_json_not_pickle(idem: Idempotency, store: MemoryStore) -> None:
    @idem
    def f(x: int) -> Receipt:
        return Receipt("o", decimal.Decimal(1), dt.datetime(2026, 1, 1))

    f(1)
    record = f.record_for(1)
    assert record is not None
    assert record.result is not None
    assert record.result[:2] == b"\x01V"
    assert record.result[2:3] == b"{"
    assert b"$dataclass" in record.result


# -- the protocol through the decorator ---------------------------------------------------
def test_new_key_costs_two_round_trips_and_a_replay_one(
    idem: Idempotency, store: MemoryStore
) -> None:
    @idem(key="id")
    def f(order: dict[str, int]) -> int:
        return order["id"]

    assert f({"id": 5}) == 5
    assert store.round_trips == 2
    assert f({"id": 5}) == 5
    assert store.round_trips == 3


def test_local_cache_hit_costs_no_round_trip(store: MemoryStore) -> None:
    calls = Counter()

    @Idempotency(store, local_cache=16)
    def f(x: int) -> int:
        calls.hit()
        return x * 2

    assert f(2) == 4
    trips = store.round_trips
    assert [f(2) for _ in range(5)] == [4] * 5
    assert (store.round_trips, calls.n) == (trips, 1)


def test_exception_releases_so_a_retry_runs(idem: Idempotency) -> None:
    calls = Counter()

    @idem
    def flaky(x: int) -> str:
        if calls.hit() == 1:
            raise ConnectionError("downstream down")
        return "ok"

    with pytest.raises(ConnectionError, match="downstream down"):
        flaky(1)
    assert flaky.record_for(1) is None
    assert flaky(1) == "ok"
    assert flaky(1) == "ok"
    assert calls.n == 2


class OutOfStock(Exception):
    pass


def test_store_errors_are_replayed_without_running(idem: Idempotency) -> None:
    calls = Counter()

    @idem(store_errors=(OutOfStock,))
    def reserve(sku: str) -> None:
        calls.hit()
        raise OutOfStock(sku, 0)

    for _ in range(3):
        with pytest.raises(OutOfStock) as info:
            reserve("sku-1")
        assert info.value.args == ("sku-1", 0)
    assert calls.n == 1


def test_a_stored_error_that_cannot_be_written_completes_the_key_as_not_stored(
    idem: Idempotency,
) -> None:
    class Broken:
        """A serializer that cannot write anything."""

        def encode(self, value: Any) -> bytes:
            raise RuntimeError("no encoder here")

        def decode(self, data: bytes, hint: Any) -> Any:
            raise AssertionError("never called")

    calls = Counter()

    @idem(store_errors=(OutOfStock,), serializer=Broken())
    def reserve(sku: str) -> None:
        calls.hit()
        raise OutOfStock(sku, 0)

    with pytest.raises(OutOfStock):  # the caller gets the error it raised
        reserve("sku-1")
    with pytest.raises(ResultNotStoredError, match="OutOfStock it raised cannot be stored"):
        reserve("sku-1")  # a duplicate: completed, not run again
    assert calls.n == 1


def test_stored_error_of_unknown_type_replays_as_stored_error_replay(
    store: MemoryStore,
) -> None:
    @Idempotency(store, store_errors=(OutOfStock,))(namespace="ns")
    def first(sku: str) -> None:
        raise OutOfStock(sku)

    @Idempotency(store)(namespace="ns")
    def second(sku: str) -> None:
        raise AssertionError("must not run")

    with pytest.raises(OutOfStock):
        first("a")
    with pytest.raises(StoredErrorReplay) as info:
        second("a")
    assert info.value.type_name.endswith(":OutOfStock")


def test_same_key_other_payload_is_key_reuse(idem: Idempotency) -> None:
    @idem(key="id")
    def f(order: dict[str, Any]) -> int:
        return 1

    f({"id": 1, "amount": 10})
    with pytest.raises(KeyReuseError):
        f({"id": 1, "amount": 99})
    assert f({"amount": 10, "id": 1}) == 1  # key order does not matter


def test_fingerprint_false_disables_the_payload_check(idem: Idempotency) -> None:
    @idem(key="id", fingerprint=False)
    def f(order: dict[str, Any]) -> Any:
        return order["amount"]

    assert f({"id": 1, "amount": 10}) == 10
    assert f({"id": 1, "amount": 99}) == 10


def test_fingerprint_expression_selects_what_must_match(idem: Idempotency) -> None:
    @idem(key="id", fingerprint="amount")
    def f(order: dict[str, Any]) -> Any:
        return order["amount"]

    assert f({"id": 1, "amount": 10, "trace": "a"}) == 10
    assert f({"id": 1, "amount": 10, "trace": "b"}) == 10
    with pytest.raises(KeyReuseError):
        f({"id": 1, "amount": 11})


def _hold(
    idem: Idempotency, **options: Any
) -> tuple[Any, threading.Event, threading.Event, Counter]:
    started, release = threading.Event(), threading.Event()
    calls = Counter()

    @idem(**options)
    def slow(x: int) -> str:
        calls.hit()
        started.set()
        release.wait(10)
        return f"done-{x}"

    return slow, started, release, calls


def test_live_claim_raises_already_in_progress(idem: Idempotency) -> None:
    slow, started, release, calls = _hold(idem, lease=30)
    worker = threading.Thread(target=slow, args=(1,))
    worker.start()
    assert started.wait(5)
    with pytest.raises(AlreadyInProgressError) as info:
        slow(1)
    assert 25 < info.value.retry_after <= 30
    release.set()
    worker.join()
    assert slow(1) == "done-1"
    assert calls.n == 1


def test_wait_returns_the_first_callers_result(idem: Idempotency) -> None:
    slow, started, release, calls = _hold(idem, on_in_progress="wait", wait_timeout=10)
    worker = threading.Thread(target=slow, args=(2,))
    worker.start()
    assert started.wait(5)
    threading.Timer(0.3, release.set).start()
    assert slow(2) == "done-2"
    worker.join()
    assert calls.n == 1


def test_lease_lapse_takeover_and_late_original_gets_lease_lost() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    idem = Idempotency(store, lease=10, heartbeat=False)
    calls = Counter()
    results: dict[str, Any] = {}

    @idem
    def job(x: int) -> str:
        n = calls.hit()
        if n == 1:  # the original: paused past its lease while a retry takes over
            record = job.record_for(x)
            assert record is not None
            results["fence"] = record.fence
            clock.advance(11)
            retry = threading.Thread(target=lambda: results.setdefault("retry", job(x)))
            retry.start()
            retry.join()
        return f"run-{n}"

    with pytest.raises(LeaseLostError) as info:
        job(1)
    assert info.value.result == "run-1"
    assert results["retry"] == "run-2"
    assert job(1) == "run-2"  # the successor's result stands
    record = job.record_for(1)
    assert record is not None
    assert record.fence == results["fence"] + 1


def test_heartbeat_keeps_a_long_call_alive() -> None:
    store = MemoryStore()
    idem = Idempotency(store, lease=0.3)
    slow, started, release, calls = _hold(idem)
    worker = threading.Thread(target=slow, args=(3,))
    worker.start()
    assert started.wait(5)
    time.sleep(0.8)  # well past the 0.3 s lease: only renewals keep the claim
    with pytest.raises(AlreadyInProgressError):
        slow(3)
    release.set()
    worker.join()
    assert calls.n == 1


def test_without_heartbeat_a_long_call_loses_its_lease() -> None:
    idem = Idempotency(MemoryStore(), lease=0.2, heartbeat=False)
    slow, started, release, calls = _hold(idem)
    errors: list[BaseException] = []

    def first() -> None:
        try:
            slow(4)
        except LeaseLostError as exc:
            errors.append(exc)

    worker = threading.Thread(target=first)
    worker.start()
    assert started.wait(5)
    time.sleep(0.3)
    release.set()  # the takeover below runs straight through
    assert slow(4) == "done-4"
    worker.join()
    assert calls.n == 2
    assert len(errors) == 1


# -- keys ---------------------------------------------------------------------------------
def test_functions_and_decorators_sharing_a_store_never_collide(idem: Idempotency) -> None:
    def impl(order: dict[str, int]) -> str:
        return "impl"

    @idem
    def a(order: dict[str, int]) -> str:
        return "a"

    @idem
    def b(order: dict[str, int]) -> str:
        return "b"

    by_id = idem(key="id")(impl)
    by_sku = idem(key="sku")(impl)
    payload = {"id": 1, "sku": 1}
    assert (a(payload), b(payload)) == ("a", "b")
    assert by_id.key_for(payload) != by_sku.key_for(payload)
    assert by_id(payload) == by_sku(payload) == "impl"
    assert len({a.key_for(payload), b.key_for(payload), by_id.key_for(payload)}) == 3


def test_key_is_canonical_and_positional_or_keyword(idem: Idempotency) -> None:
    @idem(key=lambda o: o["id"], payload="order")
    def charge(order: dict[str, Any], *, amount: int) -> int:
        return amount

    assert charge.key_for({"id": 1, "b": [1, 2]}, amount=1) == charge.key_for(
        order={"b": [1, 2], "id": 1}, amount=2
    )
    assert charge.key_for({"id": 1}, amount=1).startswith(
        "tests.test_idempotency.test_key_is_canonical_and_positional_or_keyword.<locals>.charge#"
    )


def test_several_parameters_make_a_mapping_payload(idem: Idempotency) -> None:
    calls = Counter()

    @idem
    def transfer(src: str, dst: str, amount: int = 5) -> int:
        calls.hit()
        return amount

    assert transfer("a", "b") == 5
    assert transfer(src="a", dst="b", amount=5) == 5
    assert transfer("a", "b", 6) == 6
    assert calls.n == 2


def test_namespace_prefix_and_override(store: MemoryStore) -> None:
    def f(x: int) -> int:
        return x

    prefixed = Idempotency(store, namespace="svc")(f)
    replaced = Idempotency(store, namespace="svc")(namespace="orders.v2")(f)
    assert prefixed.key_for(1).startswith("svc.tests.test_idempotency.")
    assert replaced.key_for(1).startswith("orders.v2#")


def test_scope_separates_tenants(idem: Idempotency) -> None:
    @idem(key="id", scope=lambda o: o["tenant"], fingerprint="id")
    def f(order: dict[str, Any]) -> Any:
        return order["tenant"]

    assert f({"id": 1, "tenant": "a"}) == "a"
    assert f({"id": 1, "tenant": "b"}) == "b"


def test_missing_key_raises_or_runs_when_optional(idem: Idempotency) -> None:
    calls = Counter()

    @idem(key="order_id")
    def strict(order: dict[str, Any]) -> None:
        calls.hit()

    @idem(key="order_id", required=False)
    def lenient(order: dict[str, Any]) -> None:
        calls.hit()

    with pytest.raises(MissingKeyError, match="order_id"):
        strict({"id": 1})
    lenient({"id": 1})
    lenient({"id": 1})
    assert calls.n == 2


def test_uncanonical_payload_is_invalid_key(idem: Idempotency) -> None:
    @idem
    def f(x: Any) -> None:
        return None

    with pytest.raises(InvalidKeyError):
        f(float("nan"))
    with pytest.raises(InvalidKeyError):
        f(object())


def test_json_body_keys_with_powertools_spelling(idem: Idempotency) -> None:
    @idem(key="powertools_json(body).order_id")
    def a(event: dict[str, Any]) -> int:
        return 1

    @idem(key="json(body).order_id")
    def b(event: dict[str, Any]) -> int:
        return 1

    event = {"body": '{"order_id": "o-1", "x": 2}'}
    other = {"body": '{"x": 3, "order_id": "o-1"}'}
    assert a.key_for(event) == a.key_for(other)
    assert b.key_for(event) == b.key_for(other)
    assert b.key_for(event) != b.key_for({"body": '{"order_id": "o-2"}'})
    with pytest.raises(MissingKeyError):
        a({"body": "{}"})


# -- concurrency ----------------------------------------------------------------------------
@pytest.mark.parametrize("make_store", [MemoryStore, "sqlite"])
def test_32_threads_one_key_run_the_body_once(make_store: Any, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db") if make_store == "sqlite" else make_store()
    calls = Counter()
    barrier = threading.Barrier(32)

    @Idempotency(store, on_in_progress="wait", wait_timeout=30)
    def once(x: int) -> dict[str, int]:
        calls.hit()
        time.sleep(0.05)
        return {"x": x}

    results: list[Any] = []

    def call() -> None:
        barrier.wait()
        results.append(once(7))

    threads = [threading.Thread(target=call) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls.n == 1
    assert results == [{"x": 7}] * 32


@pytest.mark.parametrize("make_store", [MemoryStore, "sqlite"])
def test_32_tasks_one_key_run_the_body_once(make_store: Any, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db") if make_store == "sqlite" else make_store()
    calls = Counter()

    @Idempotency(store)
    async def once(x: int) -> int:
        calls.hit()
        await asyncio.sleep(0.05)
        return x

    async def main() -> list[Any]:
        return await asyncio.gather(*(once(3) for _ in range(32)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert calls.n == 1
    assert outcomes.count(3) == 1
    assert all(isinstance(o, AlreadyInProgressError) for o in outcomes if o != 3)
    assert asyncio.run(once(3)) == 3


def test_asyncio_run_per_invocation(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.db")
    calls = Counter()

    @Idempotency(store)
    async def handler(event: dict[str, str]) -> dict[str, str]:
        calls.hit()
        await asyncio.sleep(0)
        return {"ok": event["id"]}

    for _ in range(3):  # like Lambda: a new event loop for every invocation
        assert asyncio.run(handler({"id": "e1"})) == {"ok": "e1"}
    assert calls.n == 1


def test_async_exception_releases(idem: Idempotency) -> None:
    @idem
    async def fail(x: int) -> None:
        raise RuntimeError("nope")

    with pytest.raises(RuntimeError, match="nope"):
        asyncio.run(fail(1))
    assert fail.record_for(1) is None


_RACE = """
import sys, time
from pathlib import Path
from idempotence import Idempotency, AlreadyInProgressError
idem = Idempotency("sqlite:///{db}", on_in_progress="wait")

@idem
def charge(order_id: str) -> str:
    with open("{ledger}", "a") as f:
        f.write(order_id + "\\n")
    time.sleep(0.3)
    return "charged " + order_id

start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.001)
print(charge("o-1"))
"""


def test_two_processes_racing_on_one_key_run_the_body_once(tmp_path: Path) -> None:
    script = tmp_path / "race.py"
    ledger = tmp_path / "ledger.txt"
    script.write_text(_RACE.format(db=tmp_path / "race.db", ledger=ledger))
    start = str(time.time() + 1.5)
    procs = [
        subprocess.Popen([sys.executable, str(script), start], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == ["charged o-1\n"] * 2
    assert ledger.read_text() == "o-1\n"


# -- results that cannot be kept ------------------------------------------------------------
class TinyStore(MemoryStore):
    max_result_bytes = 64


def test_unencodable_result_completes_as_not_stored(idem: Idempotency) -> None:
    calls = Counter()

    @idem
    def weird(x: int) -> Any:
        calls.hit()
        return object()

    with pytest.raises(ResultNotStoredError):
        weird(1)
    with pytest.raises(ResultNotStoredError):
        weird(1)
    assert calls.n == 1


def test_should_store_false_keeps_nothing(idem: Idempotency) -> None:
    calls = Counter()

    @idem(should_store=lambda r: r["status"] < 500)
    def call(x: int) -> dict[str, int]:
        calls.hit()
        return {"status": 503}

    call(1)
    call(1)
    assert calls.n == 2


def test_on_replay_hook_sees_the_record(idem: Idempotency) -> None:
    seen: list[Record] = []

    def mark(result: dict[str, Any], record: Record) -> dict[str, Any]:
        seen.append(record)
        return {**result, "replayed": True}

    @idem(on_replay=mark)
    def f(x: int) -> dict[str, Any]:
        return {"x": x}

    assert f(1) == {"x": 1}
    assert f(1) == {"x": 1, "replayed": True}
    assert seen[0].status is Status.COMPLETED


def test_corrupt_records_raise_corrupt_record_error(store: MemoryStore) -> None:
    @Idempotency(store)
    def f(x: int) -> int:
        return x

    for data in (b"\x02Vnew-format", b"\x01V{not json", b'\x01V{"$unknown": 1}', b""):
        key = f.key_for(1)
        store.delete(key)
        fence = store.claim(key, f.fingerprint_for(1), lease=10, ttl=10).record.fence
        store.complete(key, fence, data, ttl=10)
        with pytest.raises(CorruptRecordError):
            f(1)


# -- store failures ------------------------------------------------------------------------
class DownStore(MemoryStore):
    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Any:
        raise ConnectionRefusedError("store is down")


def test_store_down_fails_closed_without_running() -> None:
    calls = Counter()

    @Idempotency(DownStore())
    def f(x: int) -> int:
        calls.hit()
        return x

    with pytest.raises(StoreError, match="store is down") as info:
        f(1)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert calls.n == 0


def test_fail_open_runs_without_idempotency() -> None:
    @Idempotency(DownStore(), fail_open=True)
    def f(x: int) -> int:
        return x

    assert f(1) == 1


# -- the surface ---------------------------------------------------------------------------
def test_disabled_env_turns_decorators_into_pass_through(
    idem: Idempotency, monkeypatch: pytest.MonkeyPatch, store: MemoryStore
) -> None:
    calls = Counter()

    @idem
    def f(x: int) -> int:
        return calls.hit()

    monkeypatch.setenv("IDEMPOTENCE_DISABLED", "1")
    with pytest.warns(RuntimeWarning, match="IDEMPOTENCE_DISABLED"):
        assert f(1) == 1
    assert f(1) == 2
    assert len(store) == 0


def test_module_level_idempotent_uses_the_env_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import idempotence._idempotency as module

    monkeypatch.setenv("IDEMPOTENCE_STORE", f"sqlite:///{tmp_path}/env.db")
    monkeypatch.setattr(module, "_default", Idempotency())
    calls = Counter()

    @idempotent(key="order_id")
    def other(order: dict[str, str]) -> int:
        return calls.hit()

    assert other({"order_id": "a"}) == other({"order_id": "a"}) == 1
    assert (tmp_path / "env.db").exists()


def test_generators_are_refused(idem: Idempotency) -> None:
    with pytest.raises(TypeError, match="generator"):

        @idem
        def gen(x: int) -> Any:
            yield x


def test_forget_lets_the_function_run_again(idem: Idempotency) -> None:
    calls = Counter()

    @idem
    def f(x: int) -> int:
        return calls.hit()

    assert f(1) == f(1) == 1
    assert f.forget(1)
    assert f(1) == 2


def test_invalid_options_fail_at_decoration(store: Store) -> None:
    with pytest.raises(ValueError, match="lease"):
        Idempotency(store, lease=0)
    with pytest.raises(ValueError, match="on_in_progress"):
        Idempotency(store, on_in_progress="later")

    def f(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="payload"):
        Idempotency(store)(payload="nope")(f)
    with pytest.raises(ValueError, match="JMESPath"):
        Idempotency(store)(key="a[")(f)
    with pytest.raises(TypeError):
        Idempotency(store, no_such_option=1)


class RefusingStore(MemoryStore):
    """A store that measures results itself, like DynamoDB's 400 KB item limit."""

    def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        if len(result) > 100:
            from idempotence import ResultTooLargeError

            raise ResultTooLargeError("item too large for this store")
        return super().complete(key, fence, result, ttl=ttl)


@pytest.mark.parametrize(
    ("store_class", "value", "why"),
    [
        (TinyStore, "x" * 1000, "more than this store keeps"),  # measured by the core
        (RefusingStore, "y" * 500, "item too large"),  # refused by the store itself
    ],
    ids=["over-max_result_bytes", "refused-by-store"],
)
def test_result_too_large_completes_as_not_stored(
    store_class: type[MemoryStore], value: str, why: str
) -> None:
    calls = Counter()

    @Idempotency(store_class())
    def big(x: int) -> str:
        calls.hit()
        return value

    with pytest.raises(ResultNotStoredError, match=why) as info:
        big(1)
    assert info.value.result == value
    with pytest.raises(ResultNotStoredError, match="not run again"):
        big(1)
    assert calls.n == 1
    record = big.record_for(1)
    assert record is not None
    assert record.status is Status.COMPLETED


def test_payload_binding_for_methods_and_no_argument_functions(idem: Idempotency) -> None:
    calls = Counter()

    class Service:
        @idem(key="id")
        def handle(self, order: dict[str, int]) -> int:
            calls.hit()
            return order["id"]

    @idem
    def run_once() -> str:
        calls.hit()
        return "migrated"

    service = Service()
    assert service.handle({"id": 1}) == service.handle(order={"id": 1}) == 1
    assert run_once() == run_once() == "migrated"
    assert calls.n == 2
    with pytest.raises(TypeError):
        service.handle({"id": 1}, {"id": 2})


def test_lambda_style_handler_keys_on_the_event_not_the_context(idem: Idempotency) -> None:
    calls = Counter()

    class Context:  # like LambdaContext: differs on every delivery, not JSON
        def __init__(self, request_id: str) -> None:
            self.aws_request_id = request_id

    @idem(key="id")
    def handler(event: dict[str, Any], context: Any) -> int:
        calls.hit()
        return event["id"]

    assert handler({"id": 1}, Context("a")) == handler({"id": 1}, Context("b")) == 1
    assert calls.n == 1


def test_current_key_is_set_while_the_body_runs(idem: Idempotency) -> None:
    from idempotence import current_key

    @idem
    def f(x: int) -> str:
        return current_key()

    @idem
    async def g(x: int) -> str:
        return current_key()

    assert f(1) == f.key_for(1)
    assert asyncio.run(g(1)) == g.key_for(1)
    with pytest.raises(LookupError, match="idempotent function"):
        current_key()


def test_fail_open_logs_one_line_per_call_without_traceback_or_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = Counter()

    @Idempotency(DownStore(), fail_open=True)
    def f(order: dict[str, str]) -> int:
        return calls.hit()

    with caplog.at_level("WARNING", logger="idempotence"):
        assert f({"order_id": "secret-order-42"}) == 1
        assert f({"order_id": "secret-order-42"}) == 2
    records = [r for r in caplog.records if r.name == "idempotence"]
    assert len(records) == 2  # one per call
    for record in records:
        message = record.getMessage()
        assert not record.exc_info
        assert "\n" not in message
        assert "ran without idempotency" in message
        assert "ConnectionRefusedError" in message  # the cause's type
        assert "secret-order-42" not in message
        assert "store is down" not in message


def test_lambda_default_store_warns_once_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import idempotence.base as module

    monkeypatch.setattr(module, "_lambda_default_warned", False)
    monkeypatch.delenv("IDEMPOTENCE_STORE", raising=False)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "orders")
    with caplog.at_level("WARNING", logger="idempotence"):
        assert default_store_url() == "sqlite:////tmp/idempotence.db"
        assert default_store_url() == "sqlite:////tmp/idempotence.db"
    warnings_ = [r.getMessage() for r in caplog.records if r.name == "idempotence"]
    assert len(warnings_) == 1
    assert "IDEMPOTENCE_STORE" in warnings_[0]
    assert "dynamodb://" in warnings_[0]
    caplog.clear()
    monkeypatch.setenv("IDEMPOTENCE_STORE", "memory://")
    monkeypatch.setattr(module, "_lambda_default_warned", False)
    with caplog.at_level("WARNING", logger="idempotence"):
        assert default_store_url() == "memory://"
    assert not [r for r in caplog.records if r.name == "idempotence"]


def test_lambda_default_store_warning_is_once_per_process() -> None:
    code = textwrap.dedent(
        """
        import logging, sys
        logging.basicConfig(stream=sys.stdout, format="%(name)s %(message)s")
        from idempotence import Idempotency, default_store_url
        default_store_url()
        Idempotency().store  # built (not connected) from the default URL
        Idempotency().store
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "IDEMPOTENCE_STORE"}
    env["AWS_LAMBDA_FUNCTION_NAME"] = "orders"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.count("IDEMPOTENCE_STORE is not set") == 1, out.stdout + out.stderr


# -- namespaces: never shared between functions ---------------------------------------------
def test_lambdas_partials_and_callable_objects_need_a_namespace(idem: Idempotency) -> None:
    import functools

    def add(x: int, y: int) -> int:
        return x + y

    class Adder:
        def __call__(self, x: int) -> int:
            return x + 1

    for fn in (lambda x: x, functools.partial(add, y=1), Adder()):
        with pytest.raises(TypeError, match="namespace="):
            idem(fn)
        with pytest.raises(TypeError, match="namespace="):
            idem(key="id")(fn)
    # Given a namespace, each works and keeps to it.
    first = idem(namespace="add.one")(functools.partial(add, y=1))
    second = idem(namespace="add.two")(functools.partial(add, y=2))
    assert (first(1), second(1)) == (2, 3)
    assert first.key_for(1) != second.key_for(1)
    obj = idem(namespace="adder")(Adder())
    assert obj(1) == 2
    assert idem(namespace="double")(lambda x: x * 2)(4) == 8


# -- methods: keys that see the instance ----------------------------------------------------
def test_method_key_sees_the_instance(idem: Idempotency) -> None:
    class Tenant:
        def __init__(self, name: str) -> None:
            self.name = name
            self.runs = 0

        @idem(key=lambda order, call: [call["self"].name, order["id"]])
        def charge(self, order: dict[str, Any]) -> str:
            self.runs += 1
            return f"{self.name}:{order['id']}"

        @idem(scope=lambda order, call: call["self"].name)
        def refund(self, order: dict[str, Any]) -> str:
            self.runs += 1
            return f"refund {self.name}:{order['id']}"

    acme, globex = Tenant("acme"), Tenant("globex")
    assert acme.charge({"id": 1}) == "acme:1"
    assert globex.charge({"id": 1}) == "globex:1"  # not acme's answer
    assert acme.charge({"id": 1}) == "acme:1"
    assert acme.refund({"id": 1}) == "refund acme:1"
    assert globex.refund({"id": 1}) == "refund globex:1"
    assert (acme.runs, globex.runs) == (2, 2)
    assert Tenant.charge.key_for(acme, {"id": 1}) != Tenant.charge.key_for(globex, {"id": 1})
    # self stays out of the payload (the fingerprint) all the same.
    assert Tenant.charge.fingerprint_for(acme, {"id": 1}) == Tenant.charge.fingerprint_for(
        globex, {"id": 1}
    )


def test_one_parameter_key_functions_get_the_payload(idem: Idempotency) -> None:
    class Shop:
        @idem(key=lambda order: order["id"])
        def buy(self, order: dict[str, Any]) -> int:
            return int(order["id"])

    assert Shop().buy({"id": 3}) == 3
    assert Shop.buy.key_for(Shop(), {"id": 3}) == Shop.buy.key_for(Shop(), {"id": 3})


# -- decoration-time validation -----------------------------------------------------------
def test_decorating_a_non_callable_says_what_to_pass(idem: Idempotency) -> None:
    with pytest.raises(TypeError, match="decorates a function"):
        idem(5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"key=\.\.\."):
        idem("order_id")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="decorates a function"):
        idem(ttl=60)(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="decorates a function"):
        idem.handler(5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="decorates a function"):
        idem.process_batch({"Records": []}, 5)  # type: ignore[arg-type]


def test_option_typos_fail_where_they_are_written(store: MemoryStore) -> None:
    with pytest.raises(TypeError, match="kee"):
        Idempotency(store, kee="id")
    with pytest.raises(TypeError, match="tll"):
        Idempotency(store)(tll=60)  # before any function is given


@pytest.mark.parametrize("option", ["ttl", "lease", "wait_timeout"])
@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), -float("inf"), 0, -1, 1e12, 10**400, dt.timedelta(days=40000)],
    ids=["nan", "inf", "-inf", "zero", "negative", "1e12", "huge-int", "40000-days"],
)
def test_bad_durations_fail_at_decoration(store: MemoryStore, option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        Idempotency(store, **{option: value})
    with pytest.raises(ValueError, match=option):
        Idempotency(store)(**{option: value})


def test_heartbeat_is_on_or_off(store: MemoryStore) -> None:
    with pytest.raises(TypeError, match="heartbeat"):
        Idempotency(store, heartbeat=5)
    assert Idempotency(store, lease=dt.timedelta(days=365 * 99)).config.lease > 0


# -- key material ---------------------------------------------------------------------------
def test_missing_key_messages_do_not_echo_the_payload(idem: Idempotency) -> None:
    @idem(key="[card, missing]")
    def pay(order: dict[str, Any]) -> None: ...

    @idem(key="card")
    def pay_empty(order: dict[str, Any]) -> None: ...

    with pytest.raises(MissingKeyError) as info:
        pay_empty({"card": {}})
    assert "empty object" in str(info.value)
    with pytest.raises(MissingKeyError) as info:
        pay({"card": ""})
    assert "[card, missing]" in str(info.value)
    assert "None" not in str(info.value)
    assert "''" not in str(info.value)


def test_key_from_a_dataclass_with_fingerprint_off(idem: Idempotency) -> None:
    @dataclasses.dataclass
    class Job:
        id: int
        lock: threading.Lock

    runs = Counter()

    @idem(key="id", fingerprint=False)
    def work(job: Job) -> int:
        runs.hit()
        return job.id

    assert work(Job(1, threading.Lock())) == 1
    assert work(Job(1, threading.Lock())) == 1
    assert runs.n == 1


def test_key_from_a_dataclass_nested_in_the_payload(idem: Idempotency) -> None:
    @dataclasses.dataclass
    class Order:
        id: int

    runs = Counter()

    @idem(key="order.id")
    def ship(payload: dict[str, Any]) -> int:
        runs.hit()
        return int(payload["order"].id)

    assert ship({"order": Order(1)}) == 1
    assert ship({"order": Order(1)}) == 1
    assert ship({"order": Order(2)}) == 2
    assert runs.n == 2
    with pytest.raises(MissingKeyError):
        ship({"order": None})


def test_key_functions_without_a_name_give_the_same_key_in_every_process(
    tmp_path: Path,
) -> None:
    """A ``partial`` or callable object as ``key=`` used to enter the key as its ``repr``,
    memory address included: each process (each Lambda instance) had its own keys."""
    script = textwrap.dedent(
        """
        import functools
        from idempotence import Idempotency
        from idempotence.stores import MemoryStore

        class ById:
            def __call__(self, order):
                return order["id"]

        def field(order, name):
            return order[name]

        idem = Idempotency(MemoryStore())

        def f(order):
            return order

        a = idem(key=functools.partial(field, name="id"), namespace="t.a")(f)
        b = idem(key=ById(), namespace="t.b")(f)
        junk = [object() for _ in range(__import__("random").randrange(1, 500))]
        print(a.key_for({"id": 1}), b.key_for({"id": 1}))
        """
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(3)
    }
    assert len(runs) == 1, runs


def test_a_stored_error_named_by_its_old_private_module_still_replays(
    store: MemoryStore,
) -> None:
    """Records written before public classes took ``idempotence`` as ``__module__`` name
    them ``idempotence._errors:...``; they still replay as the class."""
    calls = Counter()

    @Idempotency(store, store_errors=(KeyReuseError,))
    def f(n: int) -> None:
        calls.hit()
        raise KeyReuseError("refused")

    with pytest.raises(KeyReuseError):
        f(1)
    (key,) = list(store._records)
    record = store._records[key]
    assert record.result is not None
    assert b"idempotence:KeyReuseError" in record.result
    old = record.result.replace(b"idempotence:KeyReuseError", b"idempotence._errors:KeyReuseError")
    store._records[key] = Record(
        key=record.key,
        status=record.status,
        fingerprint=record.fingerprint,
        fence=record.fence,
        lease_expires_at=record.lease_expires_at,
        expires_at=record.expires_at,
        result=old,
    )
    with pytest.raises(KeyReuseError, match="refused"):
        f(1)
    assert calls.n == 1


def test_async_heartbeat_renews_a_long_call_and_a_short_one_starts_no_task() -> None:
    """The async heartbeat renews every lease / 3 while the body runs; a body that ends
    before the first beat costs a timer only: no task exists besides the caller's."""
    store = MemoryStore()
    idem = Idempotency(store, lease=0.3)
    tasks_during: list[int] = []

    @idem(key="k")
    async def short(o: dict[str, int]) -> int:
        tasks_during.append(len(asyncio.all_tasks()))
        return o["k"]

    @idem(key="k")
    async def slow(o: dict[str, int]) -> int:
        await asyncio.sleep(0.8)  # well past the 0.3 s lease: only renewals keep it
        return o["k"]

    async def main() -> None:
        assert await short({"k": 1}) == 1
        assert tasks_during == [1]
        running = asyncio.ensure_future(slow({"k": 2}))
        await asyncio.sleep(0.6)
        with pytest.raises(AlreadyInProgressError):
            await slow({"k": 2})
        assert await running == 2
        await asyncio.sleep(0.3)
        assert asyncio.all_tasks() == {asyncio.current_task()}  # the renewer is gone

    asyncio.run(main())
    record = slow.record_for({"k": 2})  # type: ignore[attr-defined]
    assert record is not None
    assert record.status.value == "COMPLETED"  # one claim kept alive to the end


def test_async_heartbeats_of_different_leases_share_a_timer_and_each_keeps_its_lease() -> None:
    """Concurrent bodies with leases of 0.2 s and 0.4 s, running 0.5 s (past both leases)
    among short calls, each renewed on time (one timer per loop serves them all); once
    the loop is done nothing of it is kept (its heartbeat state holds it weakly)."""
    import gc
    import weakref

    renewals: dict[str, list[float]] = {}

    class Recording(MemoryStore):
        async def arenew(self, key: str, fence: int, *, lease: float) -> bool:
            renewals.setdefault(key, []).append(time.monotonic())
            return await super().arenew(key, fence, lease=lease)

    async def body(o: dict[str, Any]) -> int:
        await asyncio.sleep(o["t"])
        return int(o["k"])

    store = Recording()
    fns = {
        lease: Idempotency(store, lease=lease)(key="k", namespace=f"n{lease}")(body)
        for lease in (0.2, 0.4)
    }
    loops: list[Any] = []

    async def main() -> list[Any]:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        start = time.monotonic()
        results = await asyncio.gather(
            fns[0.2]({"k": 1, "t": 0.5}),
            fns[0.4]({"k": 2, "t": 0.5}),
            *(fns[0.2]({"k": 10 + i, "t": 0.01}) for i in range(5)),
        )
        renewals["start"] = [start]
        return results

    assert asyncio.run(main()) == [1, 2, 10, 11, 12, 13, 14]
    start = renewals.pop("start")[0]
    by_lease = {0.2 if key.startswith("n0.2") else 0.4: at for key, at in renewals.items()}
    assert set(by_lease) == {0.2, 0.4}  # only the two long bodies were renewed
    for lease, at in by_lease.items():
        gaps = [b - a for a, b in zip([start, *at], at, strict=False)]
        assert gaps[0] >= lease / 3 * 15 / 16 - 0.01  # not before its first beat is due
        assert all(gap < lease * 0.9 for gap in gaps)  # never near losing the lease
    for fn in fns.values():
        for k in (1, 2):
            record = fn.record_for({"k": k, "t": 0.5})  # type: ignore[attr-defined]
            assert record is None or record.status.value == "COMPLETED"
    gc.collect()
    # The heartbeat state kept nothing of this test's loop alive. (Other tests' closed loops
    # may still be referenced elsewhere in a full run, their entries going with them, so
    # only this test's loop is checked.)
    assert loops[0]() is None
