"""Redis speed, side by side with Powertools: sync latency per call (new key / replay),
throughput of 64 asyncio tasks (ours) vs 64 threads (ours and Powertools), and the floor
of a new key (``--only floor``): the same two round trips without any library.

Run: ``.venv/bin/python bench/redis_speed.py [--rounds N] [--only latency|throughput|floor]``.
Needs Redis on
127.0.0.1:6379 (db 13 is flushed). The libraries run in alternating batches (a busy
machine slows both alike); each figure is the median over the batches, with the CPU time
this process spends per call (``time.process_time``: independent of the load, it counts
only the client) and ``os.getloadavg()`` printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
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

import hiredis  # noqa: E402
import redis  # noqa: E402
from aws_lambda_powertools.utilities.idempotency.persistence.redis import (  # noqa: E402
    RedisCachePersistenceLayer,
)

from bench.run import body, order, ours, powertools  # noqa: E402
from idempotence import Idempotency  # noqa: E402
from idempotence.stores import RedisStore  # noqa: E402
from idempotence.stores._redis import SCRIPTS, _pack  # noqa: E402

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


class RawSocket:
    """The floor: one blocking loopback socket (no timeout, so each round trip is one
    ``sendall`` and one ``recv``: two system calls), commands packed by hiredis, replies
    parsed by hiredis. No pool, no checks, no error handling: what no client can beat."""

    def __init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", 6379))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        self.round_trip("SELECT", REDIS_URL.rsplit("/", 1)[1])
        for script in (SCRIPTS["claim"], SCRIPTS["complete"]):
            self.round_trip("SCRIPT", "LOAD", script.source)

    def round_trip(self, *command: Any) -> Any:
        self.sock.sendall(_pack(command))
        while (reply := self.reader.gets()) is False:
            self.reader.feed(self.sock.recv(65536))
        return reply


def floor_fns() -> dict[str, Any]:
    """A new key, two sequential round trips each, from the floor up (key = the order id,
    result = the JSON of ``body``):

    - ``raw EVALSHA x2``: our claim and complete scripts on :class:`RawSocket`;
    - ``raw SET x2``: Powertools' two commands (``SET NX EX``, ``SET EX``) on it: what
      the server's work for our scripts adds;
    - ``redis-py conn``: our scripts on one held redis-py ``Connection``
      (``send_packed_command`` + ``read_response``; its socket has a timeout);
    - ``redis-py client``: ``client.evalsha`` twice (redis-py's generic path);
    - ``store``, ``store generic``: ``RedisStore.claim`` + ``complete``, on the direct
      sync path and with it switched off (redis-py's ``execute_command``);
    - ``ours``, ``ours generic``, ``pt``: the decorated function on the same two stores,
      and Powertools."""
    raw = RawSocket()
    claim, complete = SCRIPTS["claim"], SCRIPTS["complete"]
    result = b'{"order_id": "o", "status": "CREATED", "total": 1250}'
    # (each function its own keys: the harness warms them all up on one order id)

    def raw_evalsha(o: dict[str, Any]) -> None:
        key = "floor-raw:" + o["order_id"]
        _, _, fields = raw.round_trip("EVALSHA", claim.sha, 1, key, "", "fp", "60.0", "3600.0")
        done = raw.round_trip("EVALSHA", complete.sha, 1, key, "", fields[5], result, "3600.0")
        assert done == 1

    def raw_set(o: dict[str, Any]) -> None:
        key = "floor-set:" + o["order_id"]
        raw.round_trip("SET", key, b'{"status": "INPROGRESS", "expiration": 1}', "EX", 3600, "NX")
        raw.round_trip("SET", key, b'{"status": "COMPLETED", "data": {}}', "EX", 3600)

    client = redis.Redis.from_url(REDIS_URL)
    connection = client.connection_pool.get_connection()

    def conn_round_trip(*command: Any) -> Any:
        connection.send_packed_command((_pack(command),))
        return connection.read_response()

    def redispy_conn(o: dict[str, Any]) -> None:
        key = "floor-conn:" + o["order_id"]
        _, _, fields = conn_round_trip("EVALSHA", claim.sha, 1, key, "", "fp", "60.0", "3600.0")
        done = conn_round_trip("EVALSHA", complete.sha, 1, key, "", fields[5], result, "3600.0")
        assert done == 1

    def redispy_client(o: dict[str, Any]) -> None:
        key = "floor-client:" + o["order_id"]
        _, _, fields = client.evalsha(claim.sha, 1, key, "", "fp", "60.0", "3600.0")
        assert client.evalsha(complete.sha, 1, key, "", fields[5], result, "3600.0") == 1

    def generic_store(prefix: str) -> RedisStore:
        store = RedisStore(REDIS_URL, prefix=prefix)
        store.get("warm")  # builds its client (and direct path)
        store._direct = None  # redis-py's generic path (execute_command) from here on
        return store

    def store_fn(store: RedisStore) -> Any:
        def run(o: dict[str, Any]) -> None:
            key = o["order_id"]
            fence = store.claim(key, "fp", lease=60, ttl=3600).record.fence
            assert store.complete(key, fence, result, ttl=3600)

        return run

    return {
        "raw EVALSHA x2": raw_evalsha,
        "raw SET x2": raw_set,
        "redis-py conn": redispy_conn,
        "redis-py client": redispy_client,
        "store": store_fn(RedisStore(REDIS_URL, prefix="floor-store:")),
        "store generic": store_fn(generic_store("floor-store-generic:")),
        "ours": ours(RedisStore(REDIS_URL)),
        "ours generic": ours(generic_store("floor-ours-generic:")),
        "pt": powertools(
            RedisCachePersistenceLayer(client=redis.Redis.from_url(REDIS_URL)), validate=False
        ),
    }


def floor(rounds: int, batch: int) -> None:
    """Print each of :func:`floor_fns` per new-key call: wall and CPU µs, each / Powertools'."""
    t = latency(floor_fns(), False, batch, rounds)
    pw, pc = t["pt"]
    for name, (w, c) in t.items():
        print(
            f"floor {name:16} wall {w:7.1f} µs {w / pw:.2f}x pt | cpu {c:7.1f} µs {c / pc:.2f}x pt",
            flush=True,
        )
    print(f"floor load {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--per-worker", type=int, default=20)
    parser.add_argument("--only", choices=["latency", "throughput", "floor"], default=None)
    args = parser.parse_args()
    redis.Redis.from_url(REDIS_URL).flushdb()
    print(f"loadavg before: {os.getloadavg()}", flush=True)
    if args.only == "floor":
        floor(args.rounds, args.batch)
        redis.Redis.from_url(REDIS_URL).flushdb()
        return
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
            names = ["async", "ours-threads", "pt"]
            for name in names if r % 2 == 0 else reversed(names):
                if name == "async":
                    res[name].append(async_tp(RedisStore(REDIS_URL), 64, args.per_worker))
                else:
                    fn = o_sync if name == "ours-threads" else p_sync
                    res[name].append(threads_tp(fn, 64, args.per_worker))
        med = {n: (statistics.median(a for a, _ in v), statistics.median(c for _, c in v))
               for n, v in res.items() if v}  # fmt: skip
        a, p = med["async"], med["pt"]
        print(
            f"throughput 64 asyncio tasks ours {a[0]:7.0f}/s vs 64 threads pt {p[0]:7.0f}/s "
            f"ratio {a[0] / p[0]:.2f}x | cpu/call ours {a[1]:.1f} pt {p[1]:.1f} µs "
            f"ratio {a[1] / p[1]:.2f}x  load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        t = med["ours-threads"]
        print(
            f"throughput 64 threads ours {t[0]:7.0f}/s vs 64 threads pt {p[0]:7.0f}/s "
            f"ratio {t[0] / p[0]:.2f}x | cpu/call ours {t[1]:.1f} pt {p[1]:.1f} µs "
            f"ratio {t[1] / p[1]:.2f}x",
            flush=True,
        )
    redis.Redis.from_url(REDIS_URL).flushdb()


if __name__ == "__main__":
    main()
