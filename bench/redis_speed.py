"""Redis speed, side by side with Powertools: sync latency per call (new key / replay) and
throughput of 64 asyncio tasks (ours) vs 64 threads (ours and Powertools).

Run: ``.venv/bin/python bench/redis_speed.py [--rounds N]``. Needs Redis on
127.0.0.1:6379 (db 13 is flushed). The libraries run in alternating batches (a busy
machine slows both alike); each figure is the median over the batches, with the CPU time
this process spends per call (``time.process_time``: independent of the load, it counts
only the client) and ``os.getloadavg()`` printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
warnings.simplefilter("ignore")

import redis  # noqa: E402
from aws_lambda_powertools.utilities.idempotency.persistence.redis import (  # noqa: E402
    RedisCachePersistenceLayer,
)

from bench.run import body, order, ours, powertools  # noqa: E402
from idempotence import Idempotency  # noqa: E402
from idempotence.stores import RedisStore  # noqa: E402

#: Its own database: other engineers' tests flush db 13 and 15.
REDIS_URL = "redis://127.0.0.1:6379/11"


def timed(fn: Any, orders: list[dict[str, Any]]) -> tuple[float, float]:
    """(wall µs, CPU µs) per call of ``fn`` over ``orders``."""
    wall, cpu = time.perf_counter_ns(), time.process_time_ns()
    for o in orders:
        fn(o)
    n = len(orders) * 1000
    return (time.perf_counter_ns() - wall) / n, (time.process_time_ns() - cpu) / n


def latency(fns: dict[str, Any], replay: bool, batch: int, rounds: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex
    for fn in fns.values():
        fn(order(tag))
    wall: dict[str, list[float]] = {n: [] for n in fns}
    cpu: dict[str, list[float]] = {n: [] for n in fns}
    for r in range(rounds):
        names = list(fns) if r % 2 == 0 else list(reversed(fns))
        for name in names:
            orders = [order(tag if replay else f"{tag}-{name}-{r}-{i}") for i in range(batch)]
            w, c = timed(fns[name], orders)
            wall[name].append(w)
            cpu[name].append(c)
    return {n: (statistics.median(wall[n]), statistics.median(cpu[n])) for n in fns}


def threads_tp(fn: Any, workers: int, per_worker: int) -> tuple[float, float]:
    tag = uuid.uuid4().hex
    barrier = threading.Barrier(workers + 1)

    def work(w: int) -> None:
        barrier.wait()
        for i in range(per_worker):
            fn(order(f"{tag}-{w}-{i}"))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    n = workers * per_worker
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n * 1e6


def async_tp(store: RedisStore, workers: int, per_worker: int) -> tuple[float, float]:
    async def abody(o: dict[str, Any]) -> dict[str, Any]:
        return body(o)

    fn = Idempotency(store)(key="order_id")(abody)
    tag = uuid.uuid4().hex

    async def main() -> tuple[float, float]:
        await fn(order(tag))  # connect outside the timing

        async def work(w: int) -> None:
            for i in range(per_worker):
                await fn(order(f"{tag}-{w}-{i}"))

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(work(w) for w in range(workers)))
        elapsed, used = time.perf_counter() - start, time.process_time() - cpu
        await store.aclose()
        n = workers * per_worker
        return n / elapsed, used / n * 1e6

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--per-worker", type=int, default=20)
    parser.add_argument("--only", choices=["latency", "throughput"], default=None)
    args = parser.parse_args()
    redis.Redis.from_url(REDIS_URL).flushdb()
    print(f"loadavg before: {os.getloadavg()}", flush=True)
    o_sync = ours(RedisStore(REDIS_URL))
    p_sync = powertools(
        RedisCachePersistenceLayer(client=redis.Redis.from_url(REDIS_URL)), validate=False
    )
    if args.only in (None, "latency"):
        for replay in (False, True):
            what = "replay" if replay else "new key"
            t = latency({"ours": o_sync, "pt": p_sync}, replay, args.batch, args.rounds)
            (ow, oc), (pw, pc) = t["ours"], t["pt"]
            print(
                f"latency {what:8} wall ours {ow:7.1f} pt {pw:7.1f} ratio {ow / pw:.2f}x | "
                f"cpu ours {oc:7.1f} pt {pc:7.1f} ratio {oc / pc:.2f}x  µs/call  "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    if args.only in (None, "throughput"):
        res: dict[str, list[tuple[float, float]]] = {"async": [], "pt": [], "ours-threads": []}
        for r in range(max(3, args.rounds // 2)):
            for name in ["async", "pt"] if r % 2 == 0 else ["pt", "async"]:
                if name == "async":
                    res[name].append(async_tp(RedisStore(REDIS_URL), 64, args.per_worker))
                else:
                    res[name].append(threads_tp(p_sync, 64, args.per_worker))
        med = {n: (statistics.median(a for a, _ in v), statistics.median(c for _, c in v))
               for n, v in res.items() if v}  # fmt: skip
        a, p = med["async"], med["pt"]
        print(
            f"throughput 64 asyncio tasks ours {a[0]:7.0f}/s vs 64 threads pt {p[0]:7.0f}/s "
            f"ratio {a[0] / p[0]:.2f}x | cpu/call ours {a[1]:.1f} pt {p[1]:.1f} µs "
            f"ratio {a[1] / p[1]:.2f}x  load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    redis.Redis.from_url(REDIS_URL).flushdb()


if __name__ == "__main__":
    main()
