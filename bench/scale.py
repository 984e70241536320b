"""Cost as the work grows: per-call latency with 1k, 100k and 1M records already stored.

Run: ``make bench-scale`` (or ``.venv/bin/python bench/scale.py [--sizes 1000,100000]
[--callers 1,10] [--stores sqlite,postgres] [--rounds 5]``). Needs PostgreSQL
(``--postgres``, db ``test``) and MariaDB/MySQL (``--mysql``) up; a store that cannot be
reached is left out and said so. Writes ``bench/results/scale.json`` (raw figures),
``docs/img/bench-scale.png`` (the plot) and the table between the ``<!-- scale -->``
markers of ``docs/benchmarks.md``.

Method. Each store's table is created by the store itself (``create_table()``: its own
DDL and indexes) and grown in steps (1k, then to 100k, then to 1M rows) by a fast bulk
load in the same layout (PostgreSQL ``COPY``, MySQL multi-row ``INSERT``, SQLite
``executemany`` in one transaction): completed records under random-looking keys, one in
ten already expired (retention over), so the purge has work spread over the whole table.
At each size every configuration (store x callers x new key/replay, and the async path on
PostgreSQL) is measured once per round, the order rotating each round, so a busy machine
slows all alike; a figure is the median over rounds of the batch's mean per-call latency
(a call is the whole decorated call: claim and completion for a new key, the claim for a
replay). The machine's load average is recorded beside each size. Last, at the largest
size, the expired records are purged (the store's batched ``purge()``) while 10 threads
keep making new-key calls: the purge's batches and their times, and the calls' latency
during the purge against the same calls without it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from idempotence import Idempotency  # noqa: E402
from idempotence._record import Record  # noqa: E402
from idempotence.stores import MySQLStore, PostgresStore, SQLiteStore, Store  # noqa: E402

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
#: The stores' columns, in the order of their DDL (the record's fields).
COLUMNS = Record._fields
EXPIRED_EVERY = 10  # one seeded record in ten has its retention over
RESULT = b'{"order_id":"o-0","status":"CREATED","total":1250}'
Fn = Callable[[dict[str, Any]], Any]


def order(key: str) -> dict[str, Any]:
    return {"order_id": key, "amount": 1250, "currency": "EUR", "items": [{"sku": "a"}]}


def body(o: dict[str, Any]) -> dict[str, Any]:
    return {"order_id": o["order_id"], "status": "CREATED", "total": o["amount"]}


async def abody(o: dict[str, Any]) -> dict[str, Any]:
    return body(o)


# -- seeding ------------------------------------------------------------------------------
# Seeded record i: key "scale-seed#" + md5(i) (spread over the key space), completed, its
# lease long over, one in EXPIRED_EVERY expired an hour ago, the rest kept for a week. The
# servers generate their rows themselves (no row crosses the wire); SQLite gets them from
# Python through executemany, in one transaction.
WEEK = 7 * 86400


def seed_rows(start: int, stop: int, now: float) -> Iterator[tuple[Any, ...]]:
    for i in range(start, stop):
        digest = hashlib.md5(str(i).encode()).hexdigest()
        expires = now - 3600 if i % EXPIRED_EVERY == 0 else now + WEEK
        yield (
            f"scale-seed#{digest}",
            "COMPLETED",
            digest * 2,
            int(now * 1000) - i,
            now - 3600,
            expires,
            RESULT,
        )


def _seed_select(md5: str, concat: Callable[[str, str], str], n: str) -> str:
    """The SELECT list of seeded row ``n`` (the same values as :func:`seed_rows`)."""
    key = concat("'scale-seed#'", md5)
    return (
        f"{key}, 'COMPLETED', {concat(md5, md5)}, %(ms)s - {n}, %(now)s - 3600, "
        f"CASE WHEN {n} %% {EXPIRED_EVERY} = 0 THEN %(now)s - 3600 ELSE %(now)s + {WEEK} END, "
        "%(result)s"
    )


def seed(kind: str, store: Any, start: int, stop: int, chunk: int = 100_000) -> None:
    """Add records ``start..stop`` to ``store``'s table (created by the store)."""
    now = time.time()
    params: dict[str, Any] = {"now": now, "ms": int(now * 1000), "result": RESULT}
    cols = ", ".join(COLUMNS)
    if kind == "sqlite":
        with store.sql_connection() as conn:
            conn.execute("BEGIN")
            conn.executemany(
                f"INSERT INTO {store.table} ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                seed_rows(start, stop, now),
            )
            conn.execute("COMMIT")
    elif kind == "postgres":
        select = _seed_select("md5(i::text)", lambda a, b: f"{a} || {b}", "i")
        with store.sql_connection() as conn:
            for lo in range(start, stop, chunk):
                conn.execute(
                    f'INSERT INTO "{store.table}" ({cols}) SELECT {select} '
                    "FROM generate_series(%(lo)s::int8, %(hi)s::int8) AS i",
                    {**params, "lo": lo, "hi": min(stop, lo + chunk) - 1},
                )
            conn.execute(f'ANALYZE "{store.table}"')
    elif kind == "mysql":
        quoted = ", ".join(f"`{c}`" for c in COLUMNS)
        select = _seed_select("MD5(n)", lambda a, b: f"CONCAT({a}, {b})", "n")
        digits = "(" + " UNION ALL ".join(f"SELECT {d} AS d" for d in range(10)) + ")"
        places = ["a", "b", "c", "e", "f"]  # 10^5 numbers per statement
        number = " + ".join(f"{10**k} * {p}.d" for k, p in enumerate(places))
        numbers = ", ".join(f"{digits} {p}" for p in places)
        with store.sql_connection() as conn, conn.cursor() as cur:
            for lo in range(start, stop, chunk):
                cur.execute(
                    f"INSERT INTO `{store.table}` ({quoted}) SELECT {select} FROM "
                    f"(SELECT %(lo)s + {number} AS n FROM {numbers}) AS s WHERE n < %(hi)s",
                    {**params, "lo": lo, "hi": min(stop, lo + min(chunk, 10**5))},
                )
            cur.execute(f"ANALYZE TABLE `{store.table}`")
            cur.fetchall()


def drop(kind: str, store: Any) -> None:
    with suppress(Exception), store.sql_connection() as conn:
        if kind == "postgres":
            conn.execute(f'DROP TABLE IF EXISTS "{store.table}"')
        elif kind == "mysql":
            with conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS `{store.table}`")
        else:
            conn.execute(f"DROP TABLE IF EXISTS {store.table}")


def row_count(kind: str, store: Any) -> int:
    with store.sql_connection() as conn:
        if kind == "mysql":
            with conn.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM `{store.table}`")
                return int(cur.fetchone()[0])
        quoted = f'"{store.table}"' if kind == "postgres" else store.table
        return int(conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0])


# -- measuring ----------------------------------------------------------------------------
class Target:
    """One store under test: its decorated function (sync, or async on a loop of its own)
    and the keys it has completed (the replay keys)."""

    def __init__(self, kind: str, store: Store, is_async: bool = False) -> None:
        self.kind, self.store, self.is_async = kind, store, is_async
        self.name = f"{kind} (asyncio)" if is_async else kind
        idem = Idempotency(store, namespace=f"scale-{kind}")
        self.fn: Any = idem(key="order_id")(abody if is_async else body)
        self.loop = asyncio.new_event_loop() if is_async else None
        self.done: list[str] = []
        self._lock = threading.Lock()

    def batch(self, callers: int, per_caller: int, replay: bool) -> tuple[float, float]:
        """Mean per-call latency (µs) and throughput (calls/s) of ``callers`` concurrent
        callers making ``per_caller`` calls each (new keys, or keys completed before)."""
        tag = uuid.uuid4().hex
        if replay:
            pool = self.done[-max(callers * per_caller, 1) * 4 :]
            keys = [
                [pool[(c * per_caller + i) % len(pool)] for i in range(per_caller)]
                for c in range(callers)
            ]
        else:
            keys = [[f"{tag}-{c}-{i}" for i in range(per_caller)] for c in range(callers)]
        if self.is_async:
            durations, wall = self._async_batch(keys)
        else:
            durations, wall = self._thread_batch(keys)
        if not replay:
            with self._lock:
                self.done.extend(k for ks in keys for k in ks)
                del self.done[:-5000]
        return statistics.fmean(durations) / 1000, len(durations) / wall

    def _thread_batch(self, keys: list[list[str]]) -> tuple[list[int], float]:
        durations: list[int] = []
        barrier = threading.Barrier(len(keys) + 1)
        fn = self.fn

        def work(ks: list[str]) -> None:
            orders = [order(k) for k in ks]
            mine = []
            barrier.wait()
            for o in orders:
                t = time.perf_counter_ns()
                fn(o)
                mine.append(time.perf_counter_ns() - t)
            durations.extend(mine)

        threads = [threading.Thread(target=work, args=(ks,)) for ks in keys]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        return durations, time.perf_counter() - start

    def _async_batch(self, keys: list[list[str]]) -> tuple[list[int], float]:
        durations: list[int] = []
        fn = self.fn

        async def work(ks: list[str]) -> None:
            for k in ks:
                o = order(k)
                t = time.perf_counter_ns()
                await fn(o)
                durations.append(time.perf_counter_ns() - t)

        async def main() -> float:
            start = time.perf_counter()
            await asyncio.gather(*(work(ks) for ks in keys))
            return time.perf_counter() - start

        assert self.loop is not None
        return durations, self.loop.run_until_complete(main())

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.store.aclose())
            self.loop.close()


def per_caller(callers: int, calls: int) -> int:
    """Calls each caller makes in a batch: ``calls`` in all, at least 1 each."""
    return max(1, calls // callers)


def measure_size(
    targets: list[Target], callers: list[int], rounds: int, calls: int
) -> dict[tuple[str, int, str], dict[str, float]]:
    configs = [(t, c, mode) for t in targets for c in callers for mode in ("new key", "replay")]
    for t in targets:  # warm up: connections, and replay keys exist
        t.batch(max(callers), 2, replay=False)
    samples: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    for r in range(rounds):
        shift = r * len(configs) // max(rounds, 1)
        for t, c, mode in configs[shift:] + configs[:shift]:
            result = t.batch(c, per_caller(c, calls), replay=mode == "replay")
            samples.setdefault((t.name, c, mode), []).append(result)
    return {
        key: {
            "latency_us": statistics.median(s[0] for s in values),
            "throughput": statistics.median(s[1] for s in values),
            "batches": len(values),
        }
        for key, values in samples.items()
    }


def purge_under_load(
    kind: str, store: Any, target: Target, callers: int, seconds: float, batch_size: int
) -> dict[str, Any]:
    """New-key calls by ``callers`` threads for ``seconds`` (baseline), then the same while
    the store's ``purge()`` deletes the expired records; per-batch purge times."""
    expired = store.count(expired=True)

    failures: dict[str, int] = {}

    def calls_for(duration: float, until: Callable[[], bool] | None = None) -> list[int]:
        """Durations (ns) of the calls that succeeded; failed calls (a StoreError, e.g. a
        claim that waited out ``operation_timeout`` on a lock) are counted by type."""
        out: list[int] = []
        stop_at = time.perf_counter() + duration

        def work(c: int) -> None:
            i = 0
            while (until() if until else time.perf_counter() >= stop_at) is False:
                o = order(f"purge-{uuid.uuid4().hex}-{c}-{i}")
                t = time.perf_counter_ns()
                try:
                    target.fn(o)
                except Exception as exc:
                    name = type(exc).__name__
                    failures[name] = failures.get(name, 0) + 1
                else:
                    out.append(time.perf_counter_ns() - t)
                i += 1

        threads = [threading.Thread(target=work, args=(c,)) for c in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    baseline = calls_for(seconds)
    failed_before, failures = failures, {}
    batch_times: list[float] = []
    last = [time.perf_counter()]
    finished = threading.Event()
    result: dict[str, Any] = {}

    def progress(n: int) -> None:
        now = time.perf_counter()
        batch_times.append(now - last[0])
        last[0] = now

    def purge() -> None:
        start = time.perf_counter()
        try:
            result["deleted"] = store.purge(batch_size=batch_size, progress=progress)
        finally:
            result["seconds"] = time.perf_counter() - start
            finished.set()

    purger = threading.Thread(target=purge)
    last[0] = time.perf_counter()
    purger.start()
    during = calls_for(0, until=finished.is_set)
    purger.join()

    def summary(values: list[int]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "calls": len(ordered),
            "median_us": statistics.median(ordered) / 1000 if ordered else float("nan"),
            "p99_us": ordered[int(len(ordered) * 0.99)] / 1000 if ordered else float("nan"),
        }

    tenth = max(1, len(batch_times) // 10)
    return {
        "store": kind,
        "expired_before": expired,
        "deleted": result.get("deleted", 0),
        "purge_seconds": result.get("seconds", float("nan")),
        "batch_size": batch_size,
        "batches": len(batch_times),
        "first_tenth_batch_ms": statistics.fmean(batch_times[:tenth]) * 1000
        if batch_times
        else float("nan"),
        "last_tenth_batch_ms": statistics.fmean(batch_times[-tenth:]) * 1000
        if batch_times
        else float("nan"),
        "callers": callers,
        "without_purge": summary(baseline),
        "during_purge": summary(during),
        "failed_calls_without": sum(failed_before.values()),
        "failed_calls_during": failures,
        "load": os.getloadavg(),
    }


# -- stores -------------------------------------------------------------------------------
@contextmanager
def open_stores(
    kinds: list[str], table: str, postgres: str, mysql: str, workdir: Path
) -> Iterator[dict[str, Any]]:
    stores: dict[str, Any] = {}
    for kind in kinds:
        try:
            if kind == "sqlite":
                store: Any = SQLiteStore(workdir / "scale.db", table=table)
            elif kind == "postgres":
                store = PostgresStore(postgres, table=table)
            elif kind == "mysql":
                store = MySQLStore(mysql, table=table)
            else:
                raise ValueError(f"unknown store {kind!r}")
            drop(kind, store)
            store.create_table()
            stores[kind] = store
        except Exception as exc:  # a server that is not there: say so, go on
            print(f"skipping {kind}: {type(exc).__name__}: {exc}", flush=True)
    try:
        yield stores
    finally:
        for kind, store in stores.items():
            drop(kind, store)
            store.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--sizes", type=ints, default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--callers", type=ints, default=[1, 10, 100])
    parser.add_argument("--stores", default="sqlite,postgres,mysql")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=60, help="calls per batch (about)")
    parser.add_argument("--purge-callers", type=int, default=10)
    parser.add_argument("--purge-seconds", type=float, default=5.0)
    parser.add_argument("--purge-batch", type=int, default=1000)
    parser.add_argument("--table", default="bench_scale")
    parser.add_argument("--postgres", default=POSTGRES_URL)
    parser.add_argument("--mysql", default=MYSQL_URL)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "bench-scale.png")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    started = time.time()
    kinds = [k.strip() for k in args.stores.split(",") if k.strip()]
    results: dict[str, Any] = {
        "machine": f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "sizes": [],
        "rows": [],
        "purge": [],
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        open_stores(kinds, args.table, args.postgres, args.mysql, Path(tmp)) as stores,
    ):
        targets = [Target(kind, store) for kind, store in stores.items()]
        if "postgres" in stores:
            targets.append(Target("postgres", stores["postgres"], is_async=True))
        seeded = 0
        for size in sorted(args.sizes):
            t0 = time.perf_counter()
            for kind, store in stores.items():
                seed(kind, store, seeded, size)
            seeded = size
            seed_s = time.perf_counter() - t0
            load_before = os.getloadavg()
            figures = measure_size(targets, args.callers, args.rounds, args.calls)
            load_after = os.getloadavg()
            results["sizes"].append(
                {
                    "records": size,
                    "seed_seconds": seed_s,
                    "load_before": load_before,
                    "load_after": load_after,
                }
            )
            print(
                f"-- {size:>9,} records seeded in {seed_s:.1f} s; load {load_before[0]:.1f}"
                f" -> {load_after[0]:.1f}",
                flush=True,
            )
            for (name, callers, mode), f in figures.items():
                results["rows"].append(
                    {"records": size, "store": name, "callers": callers, "mode": mode, **f}
                )
                print(
                    f"{name:20} {callers:4} callers {mode:8} {f['latency_us']:10.0f} µs/call"
                    f" {f['throughput']:8.0f} calls/s",
                    flush=True,
                )
        for target in targets:
            if target.is_async:
                continue
            purge = purge_under_load(
                target.kind,
                target.store,
                target,
                args.purge_callers,
                args.purge_seconds,
                args.purge_batch,
            )
            results["purge"].append(purge)
            print(
                f"purge {target.kind}: {purge['deleted']} expired in {purge['batches']} batches,"
                f" {purge['purge_seconds']:.1f} s (first/last tenth "
                f"{purge['first_tenth_batch_ms']:.0f}/{purge['last_tenth_batch_ms']:.0f} ms per "
                f"batch); calls {purge['without_purge']['median_us']:.0f} µs median without, "
                f"{purge['during_purge']['median_us']:.0f} µs during",
                flush=True,
            )
        results["final_rows"] = {k: row_count(k, s) for k, s in stores.items()}
        for target in targets:
            target.close()
    results["seconds"] = time.time() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.plot)
    write_markdown(args.docs, args.plot, results)
    print(f"wrote {args.json}, {args.plot} and {args.docs} in {results['seconds']:.0f} s")
    return results


# -- output -------------------------------------------------------------------------------
def plot(results: dict[str, Any], path: Path) -> None:
    """Latency against records, one panel per mode, a line per store and caller count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    modes = ["new key", "replay"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    lines = sorted({(r["store"], r["callers"]) for r in rows})
    styles = {1: "-", 10: "--", 100: ":"}
    stores = sorted({r["store"] for r in rows})
    colours = {s: f"C{i}" for i, s in enumerate(stores)}
    for ax, mode in zip(axes, modes, strict=True):
        for store, callers in lines:
            pts = sorted(
                (r["records"], r["latency_us"] / 1000)
                for r in rows
                if r["store"] == store and r["callers"] == callers and r["mode"] == mode
            )
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                color=colours[store],
                linestyle=styles.get(callers, "-."),
                label=f"{store}, {callers} callers",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("records already stored")
        ax.set_title(mode)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency per call (ms, median of batch means)")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"idempotence: latency per call vs records stored ({results['when']})")
    # Fixed margins (tight_layout measures every tick label: seconds on a busy machine).
    fig.subplots_adjust(left=0.07, right=0.78, bottom=0.12, top=0.86, wspace=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_markdown(path: Path, image: Path, results: dict[str, Any]) -> None:
    """Replace the text between ``<!-- scale -->`` and ``<!-- /scale -->`` in ``path``
    (appended at the end the first time; after ``<!-- notes -->``, which bench/run.py
    keeps)."""
    sizes = sorted({r["records"] for r in results["rows"]})
    rows = results["rows"]
    head = "| store | callers | mode | " + " | ".join(f"{s:,} records" for s in sizes)
    lines = [
        "<!-- scale -->",
        "## Cost as the work grows (`bench/scale.py`)",
        "",
        f"Measured {results['when']} on {results['machine']} with `make bench-scale` "
        f"({results['seconds']:.0f} s; raw figures: `bench/results/scale.json`). Latency per "
        "call in ms (median over rounds of each batch's mean; throughput in the JSON).",
        "",
        f"![latency per call against records stored]({os.path.relpath(image, path.parent)})",
        "",
        head + " | 1M / 1k |",
        "|---|---:|---|" + "---:|" * len(sizes) + "---:|",
    ]
    keys = sorted({(r["store"], r["callers"], r["mode"]) for r in rows})
    for store, callers, mode in keys:
        by_size = {
            r["records"]: r["latency_us"]
            for r in rows
            if (r["store"], r["callers"], r["mode"]) == (store, callers, mode)
        }
        cells = [f"{by_size[s] / 1000:.2f}" if s in by_size else "" for s in sizes]
        ratio = by_size.get(sizes[-1], 0) / by_size[sizes[0]] if sizes[0] in by_size else 0
        lines.append(
            f"| {store} | {callers} | {mode} | " + " | ".join(cells) + f" | {ratio:.2f}x |"
        )
    lines += [
        "",
        "Machine load (1-minute load average, 2 cores, shared with other test runs) "
        "while each size was measured:",
        "",
    ]
    for s in results["sizes"]:
        lines.append(
            f"- {s['records']:,} records: {s['load_before'][0]:.1f} before, "
            f"{s['load_after'][0]:.1f} after (seeded in {s['seed_seconds']:.0f} s)"
        )
    if results["purge"]:
        lines += [
            "",
            f"Purging the expired records at {sizes[-1]:,} records (one in ten; `purge()`, "
            f"batches of {results['purge'][0]['batch_size']}) while "
            f"{results['purge'][0]['callers']} threads make new-key calls:",
            "",
            "| store | deleted | batches | purge s | first / last tenth, ms per batch "
            "| call median without / during, ms | call p99 without / during, ms "
            "| failed calls during | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in results["purge"]:
            w, d = p["without_purge"], p["during_purge"]
            failed = ", ".join(f"{n} {k}" for k, n in p["failed_calls_during"].items()) or "0"
            lines.append(
                f"| {p['store']} | {p['deleted']:,} | {p['batches']} | {p['purge_seconds']:.1f} "
                f"| {p['first_tenth_batch_ms']:.0f} / {p['last_tenth_batch_ms']:.0f} "
                f"| {w['median_us'] / 1000:.2f} / {d['median_us'] / 1000:.2f} "
                f"| {w['p99_us'] / 1000:.1f} / {d['p99_us'] / 1000:.1f} | {failed} "
                f"| {p['load'][0]:.1f} |"
            )
    lines.append("<!-- /scale -->")
    block = "\n".join(lines)
    text = path.read_text() if path.exists() else ""
    start, end = "<!-- scale -->", "<!-- /scale -->"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        if "<!-- notes -->" not in text:
            text += "\n<!-- notes -->\n"
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
