"""Test helpers shipped to users: a manual clock and the store conformance suite.

Run the suite against any store (yours included) with a three-line subclass::

    from idempotence.testing import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self, clock):            # build the store with this injectable clock
            return MyStore(..., clock=clock)

        @pytest.fixture
        def store_url(self):               # for the cross-process test; a URL that
            return "mystore://..."         # store_from_url understands (real clock)

Every test runs against the sync methods and again against the async twins (``aclaim``...),
each on an event loop of its own. A store that only lives in one process (like
``MemoryStore``) sets ``test_concurrent_claims_processes = None`` in its subclass.
Requires pytest.

The cross-process test starts its processes with :func:`start_process`: on Linux and macOS
each one is a fork of a small ``forkserver`` process that imported idempotence, pytest and
the installed store clients once (see :func:`process_context`), elsewhere a fresh
interpreter (``spawn``). Either way a child shares no connection, thread or socket with the
test process, builds its store from ``store_url`` after it started, and sees the test
process's environment as it was at start.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

import pytest

from ._record import Claim, Record, Status
from .stores import Store, store_from_url

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext, SpawnContext

__all__ = ["ManualClock", "StoreContract", "StoreDriver", "process_context", "start_process"]

LEASE = 30.0
TTL = 3600.0
#: Seconds the cross-process test gives its whole group of processes to start, connect,
#: claim and answer (one deadline for the group, not one per process).
PROCESS_GROUP_DEADLINE = 90.0

#: What the forkserver of :func:`process_context` imports before it forks anything: the
#: modules a child of the conformance suite needs (idempotence, pytest, the sync clients of
#: the built-in stores), so no child imports them again. A module that is not installed is
#: skipped. The async-only clients (aiomysql, aiobotocore) are left out: the children claim
#: through the sync methods. ``"__main__"`` is left out too: under ``python -m pytest`` the
#: main module is pytest's ``__main__``, which a child never imports again, and under the
#: ``pytest`` script a child runs that script again as ``__mp_main__``, which only imports
#: pytest (already loaded).
FORKSERVER_PRELOAD = (
    "idempotence",
    "idempotence.stores",
    "idempotence.testing",
    "sqlite3",
    "redis",
    "redis.asyncio",  # RedisStore binds both clients when it is built
    "redis.asyncio.cluster",
    "redis.cluster",
    "psycopg",
    "psycopg_pool",
    "pymysql",
    "boto3",
    "botocore.config",
)

_context_lock = threading.Lock()
_context: ForkServerContext | SpawnContext | None = None


class ManualClock:
    """A clock that only moves when told: ``clock()`` reads it, ``advance(s)`` moves it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class StoreDriver:
    """Calls a store's sync methods, or its async twins on a private event loop, through
    one sync interface, so each conformance test is written once and runs both ways."""

    def __init__(self, store: Store, mode: str) -> None:
        self.store = store
        self.mode = mode
        self.loop = asyncio.new_event_loop() if mode == "async" else None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if self.loop is None:
            return getattr(self.store, name)  # type: ignore[no-any-return]
        method = getattr(self.store, "a" + name)
        loop = self.loop
        return lambda *args, **kwargs: loop.run_until_complete(method(*args, **kwargs))

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.store.aclose())
            self.loop.close()


def process_context() -> ForkServerContext | SpawnContext:
    """The :mod:`multiprocessing` context of the cross-process tests: ``forkserver`` where the
    platform has it (Linux, macOS), else ``spawn``.

    The first call sets the forkserver's preload list to :data:`FORKSERVER_PRELOAD`; the
    server itself starts with the first process. It is a fresh interpreter (not a fork of
    the test process), single-threaded, that imports those modules once; each child is a
    fork of it, so it starts in milliseconds instead of starting Python and importing
    pytest, idempotence and a store client again, and inherits no socket, thread or
    connection of the test process. If something in the test process started the
    forkserver before with other preloads, that server is used as it is (children then
    import what they need themselves, as under ``spawn``).

    Use :func:`start_process` to start a child: a forked child otherwise sees the
    environment the server started with, not the test process's current one.
    """
    global _context
    with _context_lock:
        if _context is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(list(FORKSERVER_PRELOAD))
                _context = ctx
            else:
                _context = multiprocessing.get_context("spawn")
        return _context


def _with_environ(environ: dict[str, str], target: Callable[..., object], args: Any) -> None:
    os.environ.clear()
    os.environ.update(environ)
    target(*args)


def start_process(target: Callable[..., object], *args: Any) -> BaseProcess:
    """Start ``target(*args)`` in a new process of :func:`process_context` and return it.

    The child runs with this process's ``os.environ`` as it is now (as a spawned one would:
    a forkserver's child would otherwise see the server's), and its working directory and
    ``sys.path``. ``target`` and ``args`` are pickled: a module-level function, and values,
    :mod:`multiprocessing` queues or locks of :func:`process_context`, never a client or
    connection (each child makes its own). The child is a daemon: it cannot start processes
    of its own, and it is terminated if the test process exits before it."""
    process = process_context().Process(
        target=_with_environ, args=(dict(os.environ), target, args), daemon=True
    )
    process.start()
    return process


def _claim_in_process(url: str, key: str, barrier: Any, results: Any, deadline: float) -> None:
    started = False
    try:
        store = store_from_url(url)
        try:
            barrier.wait(timeout=max(0.0, deadline - time.time()))
            started = True
            outcome = store.claim(key, "fp", lease=LEASE, ttl=TTL)
        finally:
            store.close()
    except Exception as exc:  # reported to the test, which fails naming it
        if not started:
            barrier.abort()  # the others stop waiting for this one
        results.put((os.getpid(), f"{type(exc).__name__}: {exc}"))
        raise
    results.put((os.getpid(), outcome.acquired))


def _gather(
    results: Any, procs: Sequence[BaseProcess], deadline: float, what: str
) -> dict[int, object]:
    """One answer per process of ``procs`` (pid -> answer) before ``deadline`` (``time.time``),
    else a test failure naming how many answered and how the others ended. A process that
    ended without answering fails the test at once (a second later), not at the deadline."""
    answers: dict[int, object] = {}
    last_call = False  # every silent process has ended: one more second for their answers
    while len(answers) < len(procs):
        remaining = deadline - time.time()
        try:
            pid, answer = results.get(timeout=min(1.0, max(0.01, remaining)))
        except queue.Empty:
            pass
        else:
            answers[pid] = answer
            continue
        silent = [p for p in procs if p.pid not in answers]
        if remaining > 0 and any(p.exitcode is None for p in silent):
            continue
        if remaining > 0 and not last_call:
            last_call = True
            continue
        states = ", ".join(
            "still running" if p.exitcode is None else f"exit code {p.exitcode}" for p in silent
        )
        late = f" within {PROCESS_GROUP_DEADLINE:.0f} s" if remaining <= 0 else ""
        pytest.fail(
            f"{len(answers)} of {len(procs)} processes answered {what}{late}; "
            f"the other {len(silent)}: {states}"
        )
    return answers


class StoreContract:
    """The conformance suite every store must pass (see the module docstring)."""

    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock()

    @pytest.fixture
    def store(self, clock: ManualClock) -> Store:  # pragma: no cover - overridden
        raise NotImplementedError("subclasses provide a `store` fixture built with `clock`")

    @pytest.fixture
    def store_url(self) -> str:  # pragma: no cover - overridden where processes apply
        raise NotImplementedError("subclasses provide a `store_url` fixture")

    @pytest.fixture(params=["sync", "async"])
    def s(self, request: pytest.FixtureRequest, store: Store) -> Iterator[StoreDriver]:
        driver = StoreDriver(store, request.param)
        yield driver
        driver.close()

    @pytest.fixture
    def key(self, request: pytest.FixtureRequest) -> str:
        # Unique per test so suites sharing a server never see each other's records.
        import uuid

        return f"contract#{request.node.name}#{uuid.uuid4().hex}"

    # -- claim ---------------------------------------------------------------------------
    def test_claim_new_key_creates_in_progress_record(
        self, s: StoreDriver, key: str, clock: ManualClock
    ) -> None:
        outcome: Claim = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert outcome.acquired
        record = outcome.record
        assert (record.key, record.status, record.fingerprint) == (key, Status.IN_PROGRESS, "fp")
        assert record.fence >= 1
        assert record.lease_expires_at == pytest.approx(clock() + LEASE, abs=1e-3)
        assert record.expires_at >= record.lease_expires_at
        assert outcome.now == pytest.approx(clock(), abs=1e-3)
        assert s.get(key) == record

    def test_second_claim_fails_and_returns_existing_record(self, s: StoreDriver, key: str) -> None:
        first = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        second = s.claim(key, "other", lease=LEASE, ttl=TTL)
        assert not second.acquired
        assert second.record == first.record

    def test_live_lease_is_not_taken_over(
        self, s: StoreDriver, key: str, clock: ManualClock
    ) -> None:
        first = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        clock.advance(LEASE - 1)
        again = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert not again.acquired
        assert again.record.fence == first.record.fence

    def test_keys_are_independent(self, s: StoreDriver, key: str) -> None:
        assert s.claim(key + "a", "fp", lease=LEASE, ttl=TTL).acquired
        assert s.claim(key + "b", "fp", lease=LEASE, ttl=TTL).acquired
        assert s.get(key) is None

    # -- complete ------------------------------------------------------------------------
    def test_complete_then_claim_returns_result(
        self, s: StoreDriver, key: str, clock: ManualClock
    ) -> None:
        fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert s.complete(key, fence, b"result", ttl=TTL)
        again = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert not again.acquired
        assert again.record.status is Status.COMPLETED
        assert again.record.result == b"result"
        assert again.record.fence == fence
        assert again.record.expires_at == pytest.approx(clock() + TTL, abs=1e-3)
        assert s.get(key) == again.record

    def test_completed_record_survives_lease_lapse(
        self, s: StoreDriver, key: str, clock: ManualClock
    ) -> None:
        fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert s.complete(key, fence, b"r", ttl=TTL)
        clock.advance(LEASE * 2)
        again = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert not again.acquired
        assert again.record.result == b"r"

    def test_complete_with_stale_fence_changes_nothing(self, s: StoreDriver, key: str) -> None:
        fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert not s.complete(key, fence + 1, b"x", ttl=TTL)
        record = s.get(key)
        assert record is not None
        assert (record.status, record.result) == (Status.IN_PROGRESS, None)

    def test_complete_twice_keeps_first_result(self, s: StoreDriver, key: str) -> None:
        fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert s.complete(key, fence, b"first", ttl=TTL)
        assert not s.complete(key, fence, b"second", ttl=TTL)
        record = s.get(key)
        assert record is not None
        assert record.result == b"first"

    def test_complete_absent_key_is_refused(self, s: StoreDriver, key: str) -> None:
        assert not s.complete(key, 1, b"x", ttl=TTL)
        assert s.get(key) is None

    def test_binary_results_round_trip(self, s: StoreDriver, key: str, store: Store) -> None:
        payload = bytes(range(256)) * min(400, store.max_result_bytes // 512)
        fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert s.complete(key, fence, payload, ttl=TTL)
        record = s.get(key)
        assert record is not None
        assert record.result == payload

    def test_empty_result_is_not_absent(self, s: StoreDriver, key: str) -> None:
        fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert s.complete(key, fence, b"", ttl=TTL)
        record = s.claim(key, "fp", lease=LEASE, ttl=TTL).record
        assert record.status is Status.COMPLETED
        assert record.result == b""

    # -- release -------------------------------------------------------------------------
    def test_release_lets_a_retry_claim_with_higher_fence(self, s: StoreDriver, key: str) -> None:
        fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert s.release(key, fence)
        assert s.get(key) is None
        retry = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert retry.acquired
        assert retry.record.fence > fence
        # The released owner's fence is stale now.
        assert not s.complete(key, fence, b"zombie", ttl=TTL)
        assert not s.release(key, fence)

    def test_released_key_accepts_another_fingerprint(self, s: StoreDriver, key: str) -> None:
        fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert s.release(key, fence)
        assert s.claim(key, "other", lease=LEASE, ttl=TTL).acquired

    def test_release_with_stale_fence_changes_nothing(self, s: StoreDriver, key: str) -> None:
        record = s.claim(key, "fp", lease=LEASE, ttl=TTL).record
        assert not s.release(key, record.fence + 1)
        assert s.get(key) == record

    def test_release_of_completed_record_is_refused(self, s: StoreDriver, key: str) -> None:
        fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert s.complete(key, fence, b"done", ttl=TTL)
        assert not s.release(key, fence)
        record = s.get(key)
        assert record is not None
        assert record.result == b"done"

    # -- renew ---------------------------------------------------------------------------
    def test_renew_extends_the_lease(self, s: StoreDriver, key: str, clock: ManualClock) -> None:
        fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        clock.advance(LEASE - 1)
        assert s.renew(key, fence, lease=LEASE)
        clock.advance(LEASE - 1)  # past the first lease, within the renewed one
        again = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert not again.acquired
        assert again.record.lease_expires_at == pytest.approx(clock() + 1, abs=1e-3)

    def test_renew_with_stale_fence_or_after_completion_is_refused(
        self, s: StoreDriver, key: str
    ) -> None:
        fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert not s.renew(key, fence + 1, lease=LEASE)
        assert s.complete(key, fence, b"r", ttl=TTL)
        assert not s.renew(key, fence, lease=LEASE)
        assert not s.renew(key + "absent", 1, lease=LEASE)

    # -- lease lapse and retention -------------------------------------------------------
    def test_lapsed_lease_is_taken_over_and_the_zombie_is_fenced(
        self, s: StoreDriver, key: str, clock: ManualClock
    ) -> None:
        zombie = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        clock.advance(LEASE + 1)
        successor = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert successor.acquired
        assert successor.record.fence == zombie + 1
        assert not s.renew(key, zombie, lease=LEASE)
        assert not s.complete(key, zombie, b"zombie", ttl=TTL)
        assert not s.release(key, zombie)
        assert s.complete(key, successor.record.fence, b"successor", ttl=TTL)
        assert not s.complete(key, zombie, b"zombie", ttl=TTL)
        record = s.get(key)
        assert record is not None
        assert record.result == b"successor"

    def test_lapsed_lease_with_other_fingerprint_is_not_taken_over(
        self, s: StoreDriver, key: str, clock: ManualClock
    ) -> None:
        first = s.claim(key, "fp", lease=LEASE, ttl=TTL).record
        clock.advance(LEASE + 1)
        other = s.claim(key, "other", lease=LEASE, ttl=TTL)
        assert not other.acquired
        assert other.record == first

    def test_retention_end_frees_the_key(
        self, s: StoreDriver, key: str, clock: ManualClock
    ) -> None:
        fence = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
        assert s.complete(key, fence, b"old", ttl=TTL)
        clock.advance(TTL + 1)
        assert s.get(key) is None  # enforced on read, whatever the backend's own TTL does
        again = s.claim(key, "other", lease=LEASE, ttl=TTL)
        assert again.acquired
        assert again.record.fence == fence + 1
        assert again.record.result is None

    def test_delete_forgets_the_key(self, s: StoreDriver, key: str) -> None:
        s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert s.delete(key)
        assert not s.delete(key)
        assert s.get(key) is None
        assert s.claim(key, "fp", lease=LEASE, ttl=TTL).acquired

    def test_fences_never_repeat_after_delete(
        self, s: StoreDriver, key: str, clock: ManualClock
    ) -> None:
        # A record deleted (delete, purge, a backend TTL) while invocations holding its
        # fences are paused: the next record of the key must not hand out any of them.
        zombie = s.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence  # then pauses
        clock.advance(LEASE + 1)
        successor = s.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert successor.acquired
        assert s.release(key, successor.record.fence)  # its body raised
        issued = [zombie, successor.record.fence]
        for _ in range(2):  # the second time, the record is deleted while in progress
            assert s.delete(key)
            clock.advance(LEASE + 1)
            fresh = s.claim(key, "fp", lease=LEASE, ttl=TTL)
            assert fresh.acquired
            assert fresh.record.fence > max(issued)
            for stale in issued:  # every earlier owner wakes up: refused, nothing changes
                assert not s.complete(key, stale, b"zombie", ttl=TTL)
                assert not s.release(key, stale)
                assert not s.renew(key, stale, lease=LEASE)
            assert s.get(key) == fresh.record
            issued.append(fresh.record.fence)
        assert s.complete(key, issued[-1], b"last", ttl=TTL)
        record = s.get(key)
        assert record is not None
        assert (record.fence, record.result) == (issued[-1], b"last")

    # -- concurrency ---------------------------------------------------------------------
    def test_concurrent_claims_threads(self, store: Store, key: str) -> None:
        n = 64
        barrier = threading.Barrier(n)

        def claim(_: int) -> Claim:
            barrier.wait()
            return store.claim(key, "fp", lease=LEASE, ttl=TTL)

        with ThreadPoolExecutor(n) as pool:
            outcomes = list(pool.map(claim, range(n)))
        winners = [o for o in outcomes if o.acquired]
        assert len(winners) == 1
        assert all(o.record.fence == winners[0].record.fence for o in outcomes)

    def test_concurrent_claims_asyncio(self, store: Store, key: str) -> None:
        async def main() -> list[Claim]:
            outcomes = await asyncio.gather(
                *(store.aclaim(key, "fp", lease=LEASE, ttl=TTL) for _ in range(64))
            )
            await store.aclose()
            return outcomes

        outcomes = asyncio.run(main())
        assert sum(o.acquired for o in outcomes) == 1

    def test_concurrent_claims_processes(self, store_url: str, key: str) -> None:
        n = 8
        ctx = process_context()
        barrier = ctx.Barrier(n)
        results = ctx.Queue()
        deadline = time.time() + PROCESS_GROUP_DEADLINE
        procs = [
            start_process(_claim_in_process, store_url, key, barrier, results, deadline)
            for _ in range(n)
        ]
        try:
            answers = list(_gather(results, procs, deadline, "their claim").values())
            outcomes = [a for a in answers if isinstance(a, bool)]
            errors = [a for a in answers if not isinstance(a, bool)]
            assert not errors, f"the claim failed in {len(errors)} of {n} processes: {errors}"
            for p in procs:
                p.join(timeout=max(1.0, deadline - time.time()))
            assert [p.exitcode for p in procs] == [0] * n
        finally:
            for p in procs:
                if p.exitcode is None:
                    p.kill()
                    p.join(5)
        assert sorted(outcomes) == [False] * (n - 1) + [True]


def check_record(record: Record | None) -> Record:
    """Assert ``record`` is present and return it (a typed helper for store tests)."""
    assert record is not None
    return record
