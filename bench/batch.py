"""Benchmark: an SQS batch of 10 on Redis, idempotence's ``process_batch`` vs Powertools'
``BatchProcessor`` with ``idempotent_function`` on each record (its documented pattern).

Run: ``.venv/bin/python bench/batch.py [--quick]`` (Redis on 127.0.0.1:6379, db 10; keys
are fresh message ids, nothing is flushed). The standalone run writes
its figures into the "Batches" section of ``docs/benchmarks.md``.

``--cluster [--rounds N]``: idempotence alone on the test Redis Cluster
(``tests/redis_cluster.py``, 3 masters on 127.0.0.1:7000-7005; records under a fresh
prefix, purged at the end): the median wall time of a new and a redelivered batch of 10,
sync and async, and the round trips each costs (writes to a Redis socket, counted on
redis-py's connections). Printed only.

``--delay-ms D [--rounds N]``: both libraries as above, but Redis behind
``bench/delay_proxy.py`` (each direction delayed by D ms: Redis across a network, where
Powertools pays 20 round trips per new batch and idempotence 2). Prints the round trip
measured through the proxy and the figures; printed only.

Method: as ``bench/run.py``: the two libraries alternate, batch after batch, so a busy
machine slows both alike; a wall time is the median over the rounds. ``new`` batches carry
fresh message ids (every record runs); ``redelivered`` batches are the same batch again
(every record replays). Redis commands are writes to a Redis socket (one per command,
one per pipeline), counted on redis-py's connection class.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import socket
import statistics
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ.pop("POWERTOOLS_IDEMPOTENCY_DISABLED", None)
warnings.simplefilter("ignore")  # Powertools warns outside Lambda (no remaining time)

import redis  # noqa: E402
import redis.connection  # noqa: E402
from aws_lambda_powertools.utilities.batch import (  # noqa: E402
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.idempotency import (  # noqa: E402
    IdempotencyConfig as PTConfig,
)
from aws_lambda_powertools.utilities.idempotency import idempotent_function  # noqa: E402
from aws_lambda_powertools.utilities.idempotency.persistence.redis import (  # noqa: E402
    RedisCachePersistenceLayer,
)

from idempotence import Idempotency  # noqa: E402
from idempotence.stores import RedisStore  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/10"
EVENT = ROOT / "tests" / "aws_lambda" / "events" / "sqs.json"
SIZE = 10


#: Writes to a Redis socket by any client of this process: one per command sent on its
#: own, one per pipeline. Counted on redis-py's connection class, under the client, so
#: both libraries run on clients built as users build them (a client whose
#: ``execute_command`` is wrapped takes our store's generic path, not its direct one).
_WRITES = [0]
_send_packed = redis.connection.AbstractConnection.send_packed_command


def _counted_send(self: Any, *args: Any, **kwargs: Any) -> Any:
    _WRITES[0] += 1
    return _send_packed(self, *args, **kwargs)


redis.connection.AbstractConnection.send_packed_command = _counted_send  # type: ignore[method-assign]


class Commands:
    """A Redis client of one library and the Redis commands (writes) sent since it was
    made: the libraries run one after the other, so the process-wide count before and
    after a batch is that batch's."""

    #: Where the clients connect (``--delay-ms``: a delaying proxy in front of it).
    url = REDIS_URL

    def __init__(self) -> None:
        self.client = redis.Redis.from_url(self.url)

    @property
    def n(self) -> int:
        return _WRITES[0]


def sqs_batch(size: int = SIZE) -> dict[str, Any]:
    """A standard SQS batch of ``size`` orders, each with a fresh message id."""
    template = json.loads(EVENT.read_text())["Records"][0]
    records = []
    for i in range(size):
        record = copy.deepcopy(template)
        record["messageId"] = str(uuid.uuid4())
        record["body"] = json.dumps({"order_id": f"o-{uuid.uuid4().hex[:8]}-{i}", "amount": 1250})
        records.append(record)
    return {"Records": records}


def charge(body: dict[str, Any]) -> dict[str, Any]:
    return {"order_id": body["order_id"], "status": "CHARGED", "total": body["amount"]}


def ours(commands: Commands, *, batch_claims: bool = True) -> Any:
    idem = Idempotency(RedisStore(client=commands.client))

    def record_handler(record: dict[str, Any]) -> dict[str, Any]:
        return charge(json.loads(record["body"]))

    def handler(event: dict[str, Any]) -> dict[str, Any]:
        return idem.process_batch(event, record_handler, batch_claims=batch_claims)

    return handler


def powertools(commands: Commands) -> Any:
    """Powertools' documented batch + idempotency pattern: ``BatchProcessor`` and an
    ``idempotent_function`` record handler keyed by ``messageId``."""
    layer = RedisCachePersistenceLayer(client=commands.client)
    config = PTConfig(event_key_jmespath="messageId")
    processor = BatchProcessor(event_type=EventType.SQS)

    @idempotent_function(data_keyword_argument="record", config=config, persistence_store=layer)
    def record_handler(record: Any) -> dict[str, Any]:
        return charge(json.loads(record.body))

    def handler(event: dict[str, Any]) -> dict[str, Any]:
        return process_partial_response(
            event=event,
            record_handler=lambda record: record_handler(record=record),
            processor=processor,
            context=None,
        )

    return handler


def measure(rounds: int) -> dict[str, dict[str, float]]:
    """Median wall time (ms) per batch of 10 and Redis commands per batch, new and
    redelivered, for ``ours``, ``ours_per_record`` (``batch_claims=False``) and ``pt``."""
    counters = {"ours": Commands(), "ours_per_record": Commands(), "pt": Commands()}
    handlers = {
        "ours": ours(counters["ours"]),
        "ours_per_record": ours(counters["ours_per_record"], batch_claims=False),
        "pt": powertools(counters["pt"]),
    }
    times: dict[str, dict[str, list[float]]] = {n: {"new": [], "replay": []} for n in handlers}
    commands: dict[str, dict[str, list[int]]] = {n: {"new": [], "replay": []} for n in handlers}
    for handler in handlers.values():  # warm up (scripts loaded, imports done)
        event = sqs_batch()
        handler(event)
        handler(event)
    for _ in range(rounds):
        for name, handler in handlers.items():
            event = sqs_batch()
            for what in ("new", "replay"):
                gc.collect()  # neither library pays for the other's garbage
                before = counters[name].n
                start = time.perf_counter_ns()
                response = handler(event)
                times[name][what].append((time.perf_counter_ns() - start) / 1e6)
                commands[name][what].append(counters[name].n - before)
                assert response == {"batchItemFailures": []}, response
    return {
        name: {
            "new_ms": statistics.median(times[name]["new"]),
            "replay_ms": statistics.median(times[name]["replay"]),
            "new_commands": statistics.median(commands[name]["new"]),
            "replay_commands": statistics.median(commands[name]["replay"]),
        }
        for name in handlers
    }


def section(figures: dict[str, dict[str, float]], rounds: int) -> str:
    o, r, p = figures["ours"], figures["ours_per_record"], figures["pt"]
    lines = [
        "<!-- batch -->",
        "## Batches: an SQS batch of 10 on Redis (`bench/batch.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, median of {rounds} "
        "alternating rounds. Powertools: `BatchProcessor` + `process_partial_response` with "
        "an `idempotent_function` record handler on `RedisCachePersistenceLayer` (its "
        "documented pattern). idempotence: `process_batch` (one claim request and one "
        "completion request per batch), and with `batch_claims=False` (a claim and a "
        "completion per record, as Powertools).",
        "",
        "| batch of 10 | idempotence | idempotence, `batch_claims=False` | Powertools "
        "| ratio (idempotence / Powertools) |",
        "|---|---:|---:|---:|---:|",
        f"| new: wall time (ms) | {o['new_ms']:.2f} | {r['new_ms']:.2f} | {p['new_ms']:.2f} "
        f"| {o['new_ms'] / p['new_ms']:.2f}x |",
        f"| new: Redis commands | {o['new_commands']:.0f} | {r['new_commands']:.0f} "
        f"| {p['new_commands']:.0f} | {o['new_commands'] / p['new_commands']:.2f}x |",
        f"| redelivered: wall time (ms) | {o['replay_ms']:.2f} | {r['replay_ms']:.2f} "
        f"| {p['replay_ms']:.2f} | {o['replay_ms'] / p['replay_ms']:.2f}x |",
        f"| redelivered: Redis commands | {o['replay_commands']:.0f} "
        f"| {r['replay_commands']:.0f} | {p['replay_commands']:.0f} "
        f"| {o['replay_commands'] / p['replay_commands']:.2f}x |",
        "<!-- /batch -->",
    ]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Put ``text`` in place of the ``<!-- batch -->`` section of ``path`` (after the
    ``<!-- notes -->`` marker, which ``bench/run.py`` keeps), or add it there."""
    existing = path.read_text()
    start, end = existing.find("<!-- batch -->"), existing.find("<!-- /batch -->")
    if start >= 0 and end >= 0:
        updated = existing[:start] + text + existing[end + len("<!-- /batch -->") :]
    else:
        marker = "<!-- notes -->"
        at = existing.index(marker) + len(marker)
        updated = existing[:at] + "\n" + text + "\n" + existing[at:]
    path.write_text(updated)


def measure_cluster(rounds: int, *, wait_replicas: int = 0) -> dict[str, dict[str, float]]:
    """On the test Redis Cluster, per mode (``sync``: ``process_batch``, ``async``:
    ``aprocess_batch`` on one event loop): median wall time (ms) of a new and of a
    redelivered batch of 10, and the median round trips (writes to a Redis socket) and
    masters involved per batch."""
    import asyncio

    import redis.asyncio.connection
    import redis.connection
    from tests import redis_cluster

    url = redis_cluster.start()
    writes: list[int] = []  # the port of every write to a Redis socket
    sync_send: Any = redis.connection.AbstractConnection.send_packed_command
    async_send: Any = redis.asyncio.connection.AbstractConnection.send_packed_command

    def send(self: Any, *args: Any, **kwargs: Any) -> Any:
        writes.append(int(self.port))
        return sync_send(self, *args, **kwargs)

    async def asend(self: Any, *args: Any, **kwargs: Any) -> Any:
        writes.append(int(self.port))
        return await async_send(self, *args, **kwargs)

    redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
    redis.asyncio.connection.AbstractConnection.send_packed_command = asend  # type: ignore[method-assign]
    prefix = f"bench-cluster:{uuid.uuid4().hex}:"
    store = RedisStore(url, prefix=prefix, wait_replicas=wait_replicas)
    idem = Idempotency(store)
    loop = asyncio.new_event_loop()

    def record_handler(record: dict[str, Any]) -> dict[str, Any]:
        return charge(json.loads(record["body"]))

    async def arecord_handler(record: dict[str, Any]) -> dict[str, Any]:
        return record_handler(record)

    runs: dict[str, Callable[[dict[str, Any]], Any]] = {
        "sync": lambda event: idem.process_batch(event, record_handler),
        "async": lambda event: loop.run_until_complete(idem.aprocess_batch(event, arecord_handler)),
    }
    figures: dict[str, dict[str, list[float]]] = {
        mode: {k: [] for k in ("new_ms", "replay_ms", "new_rt", "replay_rt", "masters")}
        for mode in runs
    }
    try:
        for run in runs.values():  # warm up: connections, slot map, scripts on every master
            for _ in range(3):
                event = sqs_batch()
                run(event)
                run(event)
        for _ in range(rounds):
            for mode, run in runs.items():
                event = sqs_batch()
                for what in ("new", "replay"):
                    gc.collect()
                    del writes[:]
                    start = time.perf_counter_ns()
                    response = run(event)
                    figures[mode][f"{what}_ms"].append((time.perf_counter_ns() - start) / 1e6)
                    figures[mode][f"{what}_rt"].append(len(writes))
                    assert response == {"batchItemFailures": []}, response
                    if what == "new":
                        figures[mode]["masters"].append(len(set(writes)))
    finally:
        loop.run_until_complete(store.aclose())
        loop.close()
        redis.connection.AbstractConnection.send_packed_command = sync_send  # type: ignore[method-assign]
        redis.asyncio.connection.AbstractConnection.send_packed_command = async_send  # type: ignore[method-assign]
        store.purge(expired=False)
        store.close()
    return {
        mode: {name: statistics.median(values) for name, values in columns.items()}
        for mode, columns in figures.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--cluster", action="store_true", help="on the test Redis Cluster")
    parser.add_argument("--rounds", type=int, default=51, help="rounds of --cluster")
    parser.add_argument("--wait-replicas", type=int, default=0, help="with --cluster")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="Redis behind a proxy delaying each direction by this much (printed only; "
        "--rounds rounds)",
    )
    args = parser.parse_args()
    if args.cluster:
        for mode, values in measure_cluster(args.rounds, wait_replicas=args.wait_replicas).items():
            print(mode, {k: round(v, 2) for k, v in values.items()}, flush=True)
        return
    rounds = 15 if args.quick else 201
    if args.delay_ms:
        from bench.delay_proxy import started

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with started(port, "127.0.0.1", 6379, args.delay_ms):
            Commands.url = f"redis://127.0.0.1:{port}/10"
            print(f"round trip through the proxy: {round_trip_ms(Commands.url):.3f} ms "
                  f"(without: {round_trip_ms(REDIS_URL):.3f} ms)", flush=True)  # fmt: skip
            figures = measure(args.rounds)
        for name, values in figures.items():
            print(name, {k: round(v, 2) for k, v in values.items()}, flush=True)
        o, p = figures["ours"], figures["pt"]
        print(f"ratio new {o['new_ms'] / p['new_ms']:.2f}x, "
              f"redelivered {o['replay_ms'] / p['replay_ms']:.2f}x")  # fmt: skip
        return
    figures = measure(rounds)
    for name, values in figures.items():
        print(name, {k: round(v, 2) for k, v in values.items()}, flush=True)
    write_section(args.out, section(figures, rounds))
    print(f"wrote the batch section of {args.out}")


def round_trip_ms(url: str) -> float:
    """The median ``PING`` round trip (ms) to the Redis at ``url``."""
    client = redis.Redis.from_url(url)
    client.ping()
    times = []
    for _ in range(200):
        start = time.perf_counter()
        client.ping()
        times.append(time.perf_counter() - start)
    client.close()
    return statistics.median(times) * 1000


if __name__ == "__main__":
    main()
