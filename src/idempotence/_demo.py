"""``idempotence demo``: an order service under at-least-once delivery, run three times.

A seeded schedule delivers ``create_order`` and ``charge_payment`` messages the way a queue
with at-least-once semantics does: each message arrives 1 to 4 times, some copies at the
same moment (concurrent workers), some later (redeliveries), a few with an edited payload
(a client retrying with another amount), and some workers are killed mid-run. The same
schedule runs three times: with the plain functions; with the functions decorated by
:class:`~idempotence.Idempotency` (record-based: side effects go to an in-memory ledger,
records to the store); and with
:class:`~idempotence.effects.TransactionalIdempotency` (the ledger is a table of a SQLite
database, and each delivery's claim, ledger write and result commit in one transaction). A
table compares the three runs; every figure is counted from the ledgers, not assumed.

How a run behaves, like a real consumer:

- a delivery that returns (the function ran, or a replay) is acknowledged;
- :class:`~idempotence.AlreadyInProgressError` is a nack: the message is redelivered after
  ``retry_after`` (bounded);
- :class:`~idempotence.KeyReuseError` sends the delivery to the dead-letter queue;
- a killed worker never answers: its thread freezes inside the function (no heartbeat, so
  its record stays ``IN_PROGRESS`` like a process killed with SIGKILL) and the queue
  redelivers the message once its visibility timeout (longer than the lease) has passed.
  Frozen workers are thawed at the end; their stale fence makes their release a no-op.

Workers are killed either before their side effect commits (the ledger write is rolled
back, nothing happened) or after it commits but before the result is recorded. The second
case is the window no idempotency layer can close by itself: after the lease lapses the
retry runs the function again. The demo counts those re-executions separately (the crash
window) instead of hiding them among the duplicates. The transactional run closes the
window: a worker killed after its ledger write dies inside the open transaction, so the
write is rolled back with the claim (as a database does for a dead connection) and the
redelivery runs it once.

One file (over 400 lines): the demo is one program with no API (the schedule, the workers,
the three runs and the report), read top to bottom.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import queue
import random
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ._errors import AlreadyInProgressError, KeyReuseError, LeaseLostError
from ._idempotency import Idempotency, IdempotentFunction
from .effects import TransactionalIdempotency
from .stores import SQLiteStore, Store, store_from_url

__all__ = ["DemoResult", "Message", "RunStats", "build_schedule", "render", "run_demo"]

Kind = Literal["create_order", "charge_payment"]
Crash = Literal["before-commit", "after-commit"]
Outcome = Literal["ran", "replayed", "in-progress", "key-reuse", "crashed", "lease-lost", "error"]

#: Lease of the idempotent run, in seconds; heartbeats are off so a frozen worker's lease lapses.
LEASE = 1.0
#: How long the queue waits before redelivering a message whose worker never answered.
VISIBILITY_TIMEOUT = LEASE + 0.25
#: Time the function body "calls the payment provider", so concurrent copies overlap.
WORK = 0.02
#: Concurrent workers (threads) consuming the queue.
WORKERS = 16


@dataclass(frozen=True, slots=True)
class Delivery:
    """One copy of a message handed to a worker ``at`` seconds after the run starts."""

    payload: dict[str, Any]
    at: float
    crash: Crash | None = None
    concurrent: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    """A logical message (one order's creation or payment) and its scheduled copies."""

    kind: Kind
    order_id: str
    deliveries: tuple[Delivery, ...]


@dataclass(slots=True)
class RunStats:
    """What one run of the schedule did. ``duplicate_*`` exclude the crash window, which
    is counted in ``crash_window_reexecutions``."""

    label: str
    messages: int = 0
    deliveries: int = 0
    body_runs: int = 0
    side_effects: int = 0
    replays: int = 0
    in_progress: int = 0
    key_reuse: int = 0
    crashes_before_commit: int = 0
    crashes_after_commit: int = 0
    lease_lost: int = 0
    duplicate_orders: int = 0
    duplicate_charges: int = 0
    crash_window_reexecutions: int = 0
    seconds: float = 0.0

    @property
    def crashes(self) -> int:
        """Workers killed mid-run (before or after their side effect committed)."""
        return self.crashes_before_commit + self.crashes_after_commit

    @property
    def duplicates(self) -> int:
        """Side effects repeated outside the crash window."""
        return self.duplicate_orders + self.duplicate_charges

    @property
    def repeated(self) -> int:
        """Every side effect that happened more than once per message, crash window included."""
        return self.duplicates + self.crash_window_reexecutions


@dataclass(frozen=True, slots=True)
class DemoResult:
    """The three runs of one schedule: plain, record-based (``idempotent``) and
    ``transactional``."""

    seed: int
    orders: int
    store: str
    plain: RunStats
    idempotent: RunStats
    transactional: RunStats

    @property
    def ok(self) -> bool:
        """The record-based run repeated no side effect outside the crash window, and the
        transactional run repeated none at all."""
        return self.idempotent.duplicates == 0 and self.transactional.repeated == 0


def build_schedule(seed: int, orders: int) -> list[Message]:
    """The deliveries of ``orders`` orders (two messages each), fixed by ``seed``."""
    rng = random.Random(seed)
    messages: list[Message] = []
    spread = 0.3 + orders / 400  # first deliveries arrive over this many seconds
    for i in range(orders):
        order_id = f"order-{i:05d}"
        items: list[dict[str, Any]] = [
            {"sku": f"sku-{rng.randrange(100):03d}", "qty": rng.randint(1, 3)}
            for _ in range(rng.randint(1, 3))
        ]
        amount = sum(item["qty"] * (500 + 25 * rng.randrange(40)) for item in items)
        payloads: dict[Kind, dict[str, Any]] = {
            "create_order": {"order_id": order_id, "items": items},
            "charge_payment": {"order_id": order_id, "amount_cents": amount},
        }
        for kind, payload in payloads.items():
            first = rng.uniform(0.0, spread)
            crash: Crash | None = None
            if rng.random() < 0.08:
                crash = "before-commit" if rng.random() < 0.5 else "after-commit"
            copies = [Delivery(payload, first, crash)]
            extra = rng.choices([0, 1, 2, 3], weights=[50, 28, 14, 8])[0]
            for _ in range(extra):
                if rng.random() < 0.5:
                    copies.append(Delivery(payload, first, concurrent=True))
                else:
                    later = first + rng.uniform(0.05, 0.6)
                    edited = payload
                    if kind == "charge_payment" and rng.random() < 0.1:
                        edited = {**payload, "amount_cents": payload["amount_cents"] + 100}
                    copies.append(Delivery(edited, later))
            messages.append(Message(kind, order_id, tuple(copies)))
    return messages


class _Killed(BaseException):
    """Raised in a frozen worker when it is finally let go (it was "killed" long before)."""


@dataclass(slots=True)
class _Effect:
    delivery: int
    killed_after_commit: bool


@dataclass(slots=True)
class _Attempt:
    seq: int
    message: Message
    delivery: Delivery
    at: float


class _Ledger:
    """The side effects: orders created and charges made, per order, in commit order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.effects: dict[tuple[Kind, str], list[_Effect]] = {}

    def commit(self, kind: Kind, order_id: str, delivery: int, killed_after: bool) -> None:
        with self._lock:
            self.effects.setdefault((kind, order_id), []).append(_Effect(delivery, killed_after))

    def tally(self, stats: RunStats) -> None:
        """Count side effects, duplicates, and re-executions after a post-commit crash."""
        for (kind, _), effects in self.effects.items():
            stats.side_effects += len(effects)
            for previous in effects[:-1]:
                if previous.killed_after_commit:
                    stats.crash_window_reexecutions += 1
                elif kind == "create_order":
                    stats.duplicate_orders += 1
                else:
                    stats.duplicate_charges += 1


class _Run:
    """Drives one run of the schedule through a pool of worker threads."""

    def __init__(
        self,
        stats: RunStats,
        messages: list[Message],
        handler: Callable[[Kind, dict[str, Any]], Any],
        advance: Callable[[int, int], None],
        committed: Callable[[], _Ledger] | None = None,
    ) -> None:
        self.stats = stats
        self.committed = committed  # reads the ledger back from its database, if any
        self.messages = messages
        self.handler = handler
        self.advance = advance  # (completed, new_total_delta)
        self.ledger = _Ledger()
        self.outcomes: queue.Queue[tuple[_Attempt, Outcome, float]] = queue.Queue()
        self.thaw = threading.Event()
        self.local = threading.local()
        self.frozen: list[threading.Thread] = []
        self.error: BaseException | None = None
        self.seq = 0

    # -- the business functions (what the worker's handler calls) -----------------------
    def effect(self, kind: Kind, payload: dict[str, Any]) -> dict[str, Any]:
        """The body of ``create_order`` / ``charge_payment``: work, commit, answer."""
        attempt: _Attempt = self.local.attempt
        self.local.ran = True
        time.sleep(WORK)
        crash = attempt.delivery.crash
        if crash == "before-commit":
            self._die(attempt)  # killed mid-transaction: the database rolls the write back
        self.ledger.commit(kind, payload["order_id"], attempt.seq, crash == "after-commit")
        if crash == "after-commit":
            self._die(attempt)  # killed after the commit, before the result was recorded
        if kind == "create_order":
            return {"order_id": payload["order_id"], "status": "created"}
        return {"order_id": payload["order_id"], "charged_cents": payload["amount_cents"]}

    def effect_in(self, conn: sqlite3.Connection, kind: Kind, payload: dict[str, Any]) -> Any:
        """The same body in the transactional run: the ledger write is an ``INSERT`` in
        ``conn``'s open transaction, which also holds the claim and will hold the result."""
        attempt: _Attempt = self.local.attempt
        self.local.ran = True
        crash = attempt.delivery.crash
        if crash == "before-commit":
            self._die_in_transaction(attempt)
        conn.execute(
            "INSERT INTO ledger (kind, order_id, delivery, killed_after) VALUES (?, ?, ?, ?)",
            (kind, payload["order_id"], attempt.seq, crash == "after-commit"),
        )
        if crash == "after-commit":
            self._die_in_transaction(attempt)  # after the write, before the result and COMMIT
        if kind == "create_order":
            return {"order_id": payload["order_id"], "status": "created"}
        return {"order_id": payload["order_id"], "charged_cents": payload["amount_cents"]}

    def _die(self, attempt: _Attempt) -> None:
        self.outcomes.put((attempt, "crashed", 0.0))
        self.thaw.wait()
        raise _Killed

    def _die_in_transaction(self, attempt: _Attempt) -> None:
        """A worker killed inside its transaction: the database rolls back everything it
        wrote, claim included, as for a dead connection (the record-based run has to freeze
        the worker instead, so its claim stays ``IN_PROGRESS`` until the lease lapses)."""
        self.outcomes.put((attempt, "crashed", 0.0))
        raise _Killed

    # -- workers ---------------------------------------------------------------------------
    def _work(self, attempt: _Attempt) -> None:
        self.local.attempt = attempt
        self.local.ran = False
        outcome: Outcome
        retry_after = 0.0
        try:
            self.handler(attempt.message.kind, attempt.delivery.payload)
            outcome = "ran" if self.local.ran else "replayed"
        except _Killed:
            return  # already reported as crashed when it froze
        except AlreadyInProgressError as exc:
            outcome, retry_after = "in-progress", exc.retry_after
        except KeyReuseError:
            outcome = "key-reuse"
        except LeaseLostError:
            outcome = "lease-lost"
        except BaseException as exc:  # a store failure, a bug: stop the run with it
            self.error = exc
            outcome = "error"
        self.outcomes.put((attempt, outcome, retry_after))

    def _attempt(self, message: Message, delivery: Delivery, at: float) -> _Attempt:
        self.seq += 1
        return _Attempt(self.seq, message, delivery, at)

    def run(self) -> RunStats:
        stats = self.stats
        stats.messages = len(self.messages)
        heap: list[tuple[float, int, _Attempt]] = []
        for message in self.messages:
            for delivery in message.deliveries:
                attempt = self._attempt(message, delivery, delivery.at)
                heap.append((attempt.at, attempt.seq, attempt))
        heapq.heapify(heap)
        self.advance(0, len(heap))
        start = time.monotonic()
        inflight = 0
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="demo-worker") as pool:
            try:
                while heap or inflight:
                    now = time.monotonic() - start
                    while heap and heap[0][0] <= now:
                        attempt = heapq.heappop(heap)[2]
                        stats.deliveries += 1
                        inflight += 1
                        if attempt.delivery.crash is None:
                            pool.submit(self._work, attempt)
                        else:  # it will freeze: give it its own thread, not a pool slot
                            thread = threading.Thread(target=self._work, args=(attempt,))
                            thread.start()
                            self.frozen.append(thread)
                    wait = heap[0][0] - now if heap else None
                    try:
                        attempt, outcome, retry_after = self.outcomes.get(timeout=wait)
                    except queue.Empty:
                        continue
                    inflight -= 1
                    if outcome == "error" and self.error is not None:
                        raise self.error
                    now = time.monotonic() - start
                    redeliver_at = self._account(attempt, outcome, retry_after, now)
                    if redeliver_at is not None:
                        # The queue hands the message out again, as a normal copy.
                        plain = Delivery(attempt.delivery.payload, redeliver_at)
                        again = self._attempt(attempt.message, plain, redeliver_at)
                        heapq.heappush(heap, (again.at, again.seq, again))
                    self.advance(1, 0 if redeliver_at is None else 1)
            finally:
                self.thaw.set()
                for thread in self.frozen:
                    thread.join()
        stats.seconds = time.monotonic() - start
        (self.committed() if self.committed is not None else self.ledger).tally(stats)
        return stats

    def _account(
        self, attempt: _Attempt, outcome: Outcome, retry_after: float, now: float
    ) -> float | None:
        """Count one delivery's outcome; return when to redeliver it, or ``None`` (acked
        or dead-lettered)."""
        stats = self.stats
        if outcome in ("ran", "crashed", "lease-lost"):
            stats.body_runs += 1
        if outcome == "replayed":
            stats.replays += 1
        elif outcome == "in-progress":
            stats.in_progress += 1
            return now + min(max(retry_after, 0.05), LEASE)
        elif outcome == "key-reuse":
            stats.key_reuse += 1
        elif outcome == "lease-lost":
            stats.lease_lost += 1
        elif outcome == "crashed":
            if attempt.delivery.crash == "before-commit":
                stats.crashes_before_commit += 1
            else:
                stats.crashes_after_commit += 1
            return now + VISIBILITY_TIMEOUT
        return None


@contextlib.contextmanager
def _open_store(url: str | None) -> Iterator[tuple[Store, str]]:
    """The store named by ``url``, or a SQLite file in a temporary directory."""
    if url is not None:
        store = store_from_url(url)
        try:
            yield store, url
        finally:
            store.close()
        return
    with tempfile.TemporaryDirectory(prefix="idempotence-demo-") as tmp:
        path = os.path.join(tmp, "demo.db")
        store = SQLiteStore(path)
        try:
            yield store, f"sqlite:///{path}"
        finally:
            store.close()


_LEDGER_DDL = (
    "CREATE TABLE IF NOT EXISTS ledger (kind TEXT NOT NULL, order_id TEXT NOT NULL, "
    "delivery INTEGER NOT NULL, killed_after INTEGER NOT NULL)"
)


def _read_ledger(path: str) -> _Ledger:
    """The ledger rows the transactional run committed, in commit order."""
    ledger = _Ledger()
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT kind, order_id, delivery, killed_after FROM ledger ORDER BY rowid"
        ).fetchall()
    finally:
        conn.close()
    for kind, order_id, delivery, killed_after in rows:
        ledger.commit(kind, order_id, delivery, bool(killed_after))
    return ledger


class _ThreadConnections:
    """A minimal pool for :class:`~idempotence.effects.TransactionalIdempotency`: one
    ``sqlite3`` connection per worker thread, reused across its transactions."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.local = threading.local()
        self.lock = threading.Lock()
        self.opened: list[sqlite3.Connection] = []

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        conn: sqlite3.Connection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable enough for a demo
            self.local.conn = conn
            with self.lock:
                self.opened.append(conn)
        yield conn

    def close(self) -> None:
        with self.lock:
            for conn in self.opened:
                conn.close()
            self.opened.clear()


def _run_transactional(
    messages: list[Message], advance: Callable[[int, int], None], path: str
) -> RunStats:
    """The schedule through :class:`~idempotence.effects.TransactionalIdempotency` on the
    SQLite database at ``path``: records and ledger in one file, one transaction each."""
    setup = sqlite3.connect(path, isolation_level=None)
    try:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute(_LEDGER_DDL)
    finally:
        setup.close()
    connections = _ThreadConnections(path)
    txi = TransactionalIdempotency(
        connections,
        key="order_id",
        ttl=600,
        namespace="idempotence-demo",
    )
    run: _Run

    @txi
    def create_order(conn: sqlite3.Connection, order: dict[str, Any]) -> dict[str, Any]:
        return run.effect_in(conn, "create_order", order)  # type: ignore[no-any-return]

    @txi
    def charge_payment(conn: sqlite3.Connection, payment: dict[str, Any]) -> dict[str, Any]:
        return run.effect_in(conn, "charge_payment", payment)  # type: ignore[no-any-return]

    functions: dict[Kind, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "create_order": create_order,
        "charge_payment": charge_payment,
    }

    def handler(kind: Kind, payload: dict[str, Any]) -> Any:
        # The provider call happens before the transaction, which then holds SQLite's
        # single write lock only for the claim, the INSERT and the result.
        time.sleep(WORK)
        return functions[kind](payload)

    run = _Run(RunStats("transactional"), messages, handler, advance, lambda: _read_ledger(path))
    try:
        return run.run()
    finally:
        connections.close()


def run_demo(
    store_url: str | None = None,
    *,
    seed: int = 7,
    orders: int = 200,
    console: Console | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the schedule of ``seed`` for ``orders`` orders without idempotency, with
    record-based idempotency (on the store at ``store_url``, or a temporary SQLite file),
    and with transactional idempotency (always on a temporary SQLite database that holds
    both the records and the ledger). The record-based run uses keys under a fresh
    namespace and deletes them at the end."""
    if orders < 1:
        raise ValueError("orders must be at least 1")
    messages = build_schedule(seed, orders)
    console = console or Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description:<26}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not progress,
    )
    with bar, _open_store(store_url) as (store, url):

        def advancer(task: Any) -> Callable[[int, int], None]:
            def advance(done: int, more: int) -> None:
                if more:
                    total = bar.tasks[task].total or 0
                    bar.update(task, total=total + more)
                if done:
                    bar.advance(task, done)

            return advance

        plain_task = bar.add_task("without idempotency", total=0)

        plain_run: _Run

        def plain(kind: Kind, payload: dict[str, Any]) -> Any:
            return plain_run.effect(kind, payload)

        plain_run = _Run(RunStats("without idempotency"), messages, plain, advancer(plain_task))
        plain_stats = plain_run.run()

        idem = Idempotency(
            store,
            lease=LEASE,
            heartbeat=False,
            ttl=600,
            key="order_id",
            namespace=f"idempotence-demo.{uuid.uuid4().hex[:12]}",
        )
        idem_run: _Run

        @idem
        def create_order(order: dict[str, Any]) -> dict[str, Any]:
            return idem_run.effect("create_order", order)

        @idem
        def charge_payment(payment: dict[str, Any]) -> dict[str, Any]:
            return idem_run.effect("charge_payment", payment)

        functions: dict[Kind, IdempotentFunction[[dict[str, Any]], dict[str, Any]]] = {
            "create_order": create_order,
            "charge_payment": charge_payment,
        }

        def idempotent(kind: Kind, payload: dict[str, Any]) -> Any:
            return functions[kind](payload)

        idem_task = bar.add_task("with idempotency", total=0)
        idem_run = _Run(RunStats("with idempotency"), messages, idempotent, advancer(idem_task))
        idem_stats = idem_run.run()
        for message in messages:
            functions[message.kind].forget(message.deliveries[0].payload)

        tx_task = bar.add_task("transactional", total=0)
        with tempfile.TemporaryDirectory(prefix="idempotence-demo-tx-") as tmp:
            tx_stats = _run_transactional(
                messages, advancer(tx_task), os.path.join(tmp, "orders.db")
            )
    return DemoResult(seed, orders, url, plain_stats, idem_stats, tx_stats)


def render(result: DemoResult) -> Group:
    """The comparison table of the three runs, with what each row counts."""
    runs = (result.plain, result.idempotent, result.transactional)
    table = Table(
        title=f"{result.orders} orders, {runs[0].messages} messages, seed {result.seed}",
        caption=f"record store: {result.store}; transactional: a temporary SQLite database "
        "(records and ledger in one file)",
    )
    table.add_column("counted in the run")
    table.add_column("without\nidempotency", justify="right")
    table.add_column("@idem\n(record-based)", justify="right")
    table.add_column("transactional\n(one commit)", justify="right")

    def row(name: str, value: Callable[[RunStats], object], style: str = "") -> None:
        table.add_row(name, *(str(value(r)) for r in runs), style=style)

    row("deliveries", lambda r: r.deliveries)
    row("function runs", lambda r: r.body_runs)
    row("side effects committed", lambda r: r.side_effects)
    row("replays (stored result)", lambda r: r.replays)
    row("nacks: in progress", lambda r: r.in_progress)
    row("dead letters: key reuse", lambda r: r.key_reuse)
    row(
        "killed (pre/post write)",
        lambda r: f"{r.crashes_before_commit}/{r.crashes_after_commit}",
    )
    if any(r.lease_lost for r in runs):
        row("lease lost (result not kept)", lambda r: r.lease_lost)
    bad = "bold red" if result.idempotent.duplicates else ""
    row("repeated orders: duplicates", lambda r: r.duplicate_orders, bad)
    row("repeated charges: duplicates", lambda r: r.duplicate_charges, bad)
    row("repeated: crash window", lambda r: r.crash_window_reexecutions)
    row("repeated side effects, total", lambda r: r.repeated, "bold")
    row("seconds", lambda r: f"{r.seconds:.1f}")
    note = Text(
        "Duplicates: a copy of a message ran the function again. Crash window: a worker was "
        "killed "
        "after its side effect committed but before its result was recorded, so the retry "
        "after the lease lapsed ran the function again. A record-based layer cannot close "
        "this window alone. The transactional run writes the effect, the claim and the "
        "result in one transaction: a worker killed after its write dies with the "
        "transaction uncommitted, the write is rolled back, and the redelivery runs once.",
        style="dim",
    )
    return Group(table, note)
