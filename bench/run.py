"""Benchmarks: idempotence vs Powertools for AWS Lambda (Python), same machine, same run.

Run: ``make bench`` (or ``.venv/bin/python bench/run.py [--quick]``). Needs Redis on
127.0.0.1:6379 (db 13 is flushed) and starts its own moto server for DynamoDB. Writes
``docs/benchmarks.md`` (table) and ``bench/results/latest.json`` (raw figures).

Method: the two libraries are measured in alternating batches, so a busy machine slows
both alike; a latency is the median of the batch means, a throughput the median batch, an
import time the best of several fresh interpreters. Overhead = decorated call minus the
undecorated call. Ratio = ours / Powertools: lower is better, except for throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ.pop("POWERTOOLS_IDEMPOTENCY_DISABLED", None)
warnings.simplefilter("ignore")  # Powertools warns outside Lambda (no remaining time)

import boto3  # noqa: E402
import redis  # noqa: E402
from aws_lambda_powertools.utilities.idempotency import (  # noqa: E402
    DynamoDBPersistenceLayer,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency import (  # noqa: E402
    IdempotencyConfig as PTConfig,
)
from aws_lambda_powertools.utilities.idempotency.persistence.redis import (  # noqa: E402
    RedisCachePersistenceLayer,
)

from bench.powertools_memory import MemoryPersistenceLayer  # noqa: E402
from idempotence import Idempotency  # noqa: E402
from idempotence.stores import DynamoDBStore, MemoryStore, RedisStore, Store  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/13"
Fn = Callable[[dict[str, Any]], Any]


def order(i: int | str) -> dict[str, Any]:
    return {"order_id": f"o-{i}", "amount": 1250, "currency": "EUR", "items": [{"sku": "a"}]}


def body(o: dict[str, Any]) -> dict[str, Any]:
    return {"order_id": o["order_id"], "status": "CREATED", "total": o["amount"]}


def ours(store: Store, **options: Any) -> Fn:
    return Idempotency(store, **options)(key="order_id")(body)


def powertools(layer: Any, validate: bool = True) -> Fn:
    """Powertools with payload validation (as our fingerprint) unless ``validate=False``
    (its Redis layer drops the validation hash, so identical retries fail validation)."""
    config = PTConfig(
        event_key_jmespath="order_id", payload_validation_jmespath="@" if validate else ""
    )
    wrapped = idempotent_function(
        data_keyword_argument="o", persistence_store=layer, config=config
    )(body)
    return lambda o: wrapped(o=o)


def per_call_us(fns: dict[str, Fn], *, replay: bool, batch: int, rounds: int) -> dict[str, float]:
    """Median batch mean (µs per call) of each function, batches alternating between them."""
    means: dict[str, list[float]] = {name: [] for name in fns}
    tag = uuid.uuid4().hex
    for fn in fns.values():  # warm up; the replay key exists from here on
        fn(order(tag))
    for r in range(rounds):
        for name, fn in fns.items():
            orders = [order(tag if replay else f"{tag}-{r}-{i}") for i in range(batch)]
            start = time.perf_counter_ns()
            for o in orders:
                fn(o)
            means[name].append((time.perf_counter_ns() - start) / batch / 1000)
    return {name: statistics.median(values) for name, values in means.items()}


class Counter:
    """Counts requests/commands a client sends (a Redis script is one command)."""

    def __init__(self) -> None:
        self.n = 0

    def redis_client(self) -> redis.Redis:
        client = redis.Redis.from_url(REDIS_URL)
        send = client.execute_command

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.n += 1
            return send(*args, **kwargs)

        client.execute_command = counted  # type: ignore[method-assign]
        return client

    def boto_client(self, endpoint: str) -> Any:
        client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
        client.meta.events.register("before-send.dynamodb", self._count)
        return client

    def _count(self, **_: Any) -> None:
        self.n += 1


def trips_per_call(fn: Fn, counter: Counter, calls: int, replay: bool) -> float:
    tag = uuid.uuid4().hex
    fn(order(tag))
    before = counter.n
    for i in range(calls):
        fn(order(tag if replay else f"{tag}-{i}"))
    return (counter.n - before) / calls


def throughput(fn: Fn, workers: int, per_worker: int) -> float:
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
    start = time.perf_counter()
    for t in threads:
        t.join()
    return workers * per_worker / (time.perf_counter() - start)


def throughput_async(store: Store, workers: int, per_worker: int) -> float:
    async def abody(o: dict[str, Any]) -> dict[str, Any]:
        return body(o)

    fn = Idempotency(store)(key="order_id")(abody)
    tag = uuid.uuid4().hex

    async def main() -> float:
        async def work(w: int) -> None:
            for i in range(per_worker):
                await fn(order(f"{tag}-{w}-{i}"))

        start = time.perf_counter()
        await asyncio.gather(*(work(w) for w in range(workers)))
        elapsed = time.perf_counter() - start
        await store.aclose()
        return workers * per_worker / elapsed

    return asyncio.run(main())


def import_ms(statement: str, repeats: int) -> float:
    """Best wall time (ms) of ``statement`` (the imports) in a fresh interpreter, after
    the interpreter's own start-up; both libraries compiled to bytecode first (as a
    deployment package ships them)."""
    import compileall
    import importlib.util

    for name in ("idempotence", "aws_lambda_powertools", "boto3", "botocore"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                compileall.compile_dir(location, quiet=2)
    probe = "import time; t = time.perf_counter(); {}; print((time.perf_counter() - t) * 1000)"
    samples = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", probe.format(statement)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        ).stdout
        samples.append(float(out))
    return min(samples)


def import_rss_mib(statement: str) -> float:
    # Current RSS from /proc (ru_maxrss would carry the forking parent's peak over exec).
    probe = "{}; print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def rss(code: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout
        return int(out)

    with_it = statistics.median([rss(probe.format(statement)) for _ in range(3)])
    without = statistics.median([rss(probe.format("pass")) for _ in range(3)])
    return (with_it - without) / 1024


@contextmanager
def moto() -> Iterator[str]:
    """A moto server in its own process, so the client's CPU time can be measured apart
    from the server's."""
    import socket

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ[name] = "bench"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def client_cpu_us(fn: Fn, calls: int, replay: bool) -> float:
    """CPU time this process spends per call (the server runs in another process)."""
    tag = uuid.uuid4().hex
    fn(order(tag))
    start = time.process_time_ns()
    for i in range(calls):
        fn(order(tag if replay else f"{tag}-{i}"))
    return (time.process_time_ns() - start) / calls / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    batch, rounds = (200, 5) if args.quick else (500, 41)
    net_calls = 30 if args.quick else 200
    rows: list[dict[str, Any]] = []

    def row(section: str, name: str, a: float, b: float, unit: str) -> None:
        rows.append({"section": section, "name": name, "ours": a, "powertools": b, "unit": unit})
        print(f"{section:9} {name:44} ours {a:10.2f}   powertools {b:10.2f}  {unit}", flush=True)

    # 1. Per-call overhead without I/O (in-memory stores).
    for replay in (False, True):
        fns = {
            "plain": body,
            "ours": ours(MemoryStore()),
            "pt": powertools(MemoryPersistenceLayer()),
        }
        t = per_call_us(fns, replay=replay, batch=batch, rounds=rounds)
        what = "replay" if replay else "new key"
        row(
            "memory",
            f"overhead per call, {what}",
            t["ours"] - t["plain"],
            t["pt"] - t["plain"],
            "µs",
        )
    cache = {
        "plain": body,
        "ours": ours(MemoryStore(), local_cache=1024),
        "pt": powertools(_pt_cached()),
    }
    t = per_call_us(cache, replay=True, batch=batch, rounds=rounds)
    row("memory", "replay from the local cache", t["ours"] - t["plain"], t["pt"] - t["plain"], "µs")

    # 2. Redis: commands per call, latency, throughput.
    redis.Redis.from_url(REDIS_URL).flushdb()
    # Commands are counted on clients whose execute_command is patched, which sends our
    # store through redis-py's generic path: the same commands as its direct sync path
    # (tests/stores/test_redis.py counts those), but not its speed, so latency and
    # throughput run on clients built as users build them.
    counter = Counter()
    o_count = ours(RedisStore(client=counter.redis_client()))
    p_count = powertools(RedisCachePersistenceLayer(client=counter.redis_client()), validate=False)
    o_redis = ours(RedisStore(REDIS_URL))
    p_redis = powertools(
        RedisCachePersistenceLayer(client=redis.Redis.from_url(REDIS_URL)), validate=False
    )
    for replay in (False, True):
        what = "replay" if replay else "new key"
        row("redis", f"commands per call, {what}",
            trips_per_call(o_count, counter, net_calls, replay),
            trips_per_call(p_count, counter, net_calls, replay), "commands")  # fmt: skip
        t = per_call_us({"ours": o_redis, "pt": p_redis}, replay=replay, batch=net_calls, rounds=5)
        row("redis", f"latency per call, {what}", t["ours"], t["pt"], "µs")
    # Throughput: 64 threads each (both libraries), and 64 asyncio tasks (ours; Powertools
    # has no async API, so its 64 threads are what an async user of it would get), in
    # alternating rounds; the median round of each.
    workers, per_worker = 64, (10 if args.quick else 40)
    tp: dict[str, list[float]] = {"threads": [], "pt": [], "tasks": []}
    for _ in range(1 if args.quick else 5):
        tp["threads"].append(throughput(o_redis, workers, per_worker))
        tp["pt"].append(throughput(p_redis, workers, per_worker))
        tp["tasks"].append(throughput_async(RedisStore(REDIS_URL), workers, per_worker))
    pt_tp = statistics.median(tp["pt"])
    row("redis", "throughput, 64 threads, new keys", statistics.median(tp["threads"]), pt_tp,
        "calls/s")  # fmt: skip
    async_tp = statistics.median(tp["tasks"])
    row("redis", "throughput, 64 asyncio tasks (Powertools: 64 threads), new keys", async_tp,
        pt_tp, "calls/s")  # fmt: skip
    redis.Redis.from_url(REDIS_URL).flushdb()

    # 3. DynamoDB on a local moto server.
    with moto() as endpoint:
        o_count, p_count = Counter(), Counter()
        store = DynamoDBStore("bench-ours", client=o_count.boto_client(endpoint))
        store.create_table()
        pt_client = p_count.boto_client(endpoint)
        pt_client.create_table(
            TableName="bench-pt",
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        )
        o_ddb = ours(store)
        p_ddb = powertools(DynamoDBPersistenceLayer(table_name="bench-pt", boto3_client=pt_client))
        for replay in (False, True):
            what = "replay" if replay else "new key"
            row("dynamodb", f"requests per call, {what}",
                trips_per_call(o_ddb, o_count, net_calls // 4, replay),
                trips_per_call(p_ddb, p_count, net_calls // 4, replay), "requests")  # fmt: skip
            row("dynamodb", f"client CPU per call, {what}",
                client_cpu_us(o_ddb, net_calls // 2, replay),
                client_cpu_us(p_ddb, net_calls // 2, replay), "µs")  # fmt: skip
            t = per_call_us(
                {"ours": o_ddb, "pt": p_ddb}, replay=replay, batch=net_calls // 4, rounds=3
            )
            row("dynamodb", f"latency per call, {what} (moto server)", t["ours"], t["pt"], "µs")

    # 4. Cold start: import time and memory.
    n = 3 if args.quick else 9
    pt_mod = "aws_lambda_powertools.utilities.idempotency"
    row("import", "cold import (no AWS SDK)", import_ms("import idempotence", n),
        import_ms(f"import {pt_mod}", n), "ms")  # fmt: skip
    row("import", "cold import with boto3", import_ms("import idempotence, boto3", n),
        import_ms(f"import {pt_mod}, boto3", n), "ms")  # fmt: skip
    row("import", "resident memory added by the import", import_rss_mib("import idempotence"),
        import_rss_mib(f"import {pt_mod}"), "MiB")  # fmt: skip
    # The speed of this machine: the standard modules the package itself imports.
    stdlib_ms = import_ms("import json, threading, typing, enum, contextvars", n)
    print(f"import    standard modules it needs (json, threading, typing...) {stdlib_ms:.2f} ms")

    # 5. Behaviour: the same scenarios on both libraries.
    from bench.correctness import run as behaviour

    results = {
        "behaviour": behaviour(),
        "machine": f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "rows": rows,
        "redis_async_throughput": async_tp,
        "stdlib_import_ms": stdlib_ms,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(args.out, results)
    print(f"wrote {args.out} and {args.json}")


def _pt_cached() -> Any:
    layer = MemoryPersistenceLayer()
    layer.use_local_cache = True
    return layer


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    """Write the table; text after a ``<!-- notes -->`` line in the file is kept."""
    lines = [
        "# Benchmarks: idempotence vs Powertools for AWS Lambda (Python)",
        "",
        f"Measured {results['when']} on {results['machine']} with `make bench` "
        "(raw figures: `bench/results/latest.json`); both libraries in the same run, "
        "alternating batches. Ratio = idempotence / Powertools.",
        "",
        "| area | measure | idempotence | Powertools | ratio | unit |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in results["rows"]:
        ratio = r["ours"] / r["powertools"] if r["powertools"] else float("nan")
        lines.append(
            f"| {r['section']} | {r['name']} | {r['ours']:.2f} | {r['powertools']:.2f} "
            f"| {ratio:.2f}x | {r['unit']} |"
        )
    lines += [
        "",
        "Throughput rows: higher is better (ratio = idempotence / Powertools); Powertools has "
        "no async API, so the asyncio row sets our 64 tasks against its 64 threads.",
        "",
        "Speed of this machine, for comparing runs: importing the standard modules the package "
        "itself needs (`json`, `threading`, `typing`, `enum`, `contextvars`) takes "
        f"{results['stdlib_import_ms']:.1f} ms here.",
        "",
        "## Behaviour, same scenarios (`bench/correctness.py`)",
        "",
        "| scenario | idempotence | Powertools |",
        "|---|---|---|",
    ]
    for scenario, ours, theirs in results["behaviour"]:
        cells = [c.replace("|", "\\|") for c in (scenario, ours, theirs)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    existing = path.read_text() if path.exists() else ""
    marker = "<!-- notes -->"
    notes = existing[existing.index(marker) :] if marker in existing else marker + "\n"
    path.write_text("\n".join(lines) + "\n" + notes)


if __name__ == "__main__":
    main()
