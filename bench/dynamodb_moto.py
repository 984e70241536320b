"""Where a DynamoDB call's time goes on moto: per request, ours and Powertools' side by side.

Run: ``.venv/bin/python bench/dynamodb_moto.py [--quick]``. Prints only (the explanation
and the figures of a run are in docs/benchmarks.md, "How to read the DynamoDB figures").

1. ``requests``: the decorated function of ``bench/run.py`` on both libraries, against a
   moto server in its own process (as ``make bench``) that times each request it handles
   (wall and the server process's CPU). Per call: the wall time (median of alternating
   batches). Per request kind: moto's wall and CPU time, the client's round trip (botocore
   ``before-send`` to ``response-received``) and the request and response body sizes.
2. ``expressions``: moto in this process (``mock_aws``), the time moto's handler takes for
   variants of our claim request (one part left out at a time) and for a ``PutItem`` of the
   same attributes, on new keys, the variants taking turns.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ.pop("POWERTOOLS_IDEMPOTENCY_DISABLED", None)
warnings.simplefilter("ignore")  # Powertools warns outside Lambda (no remaining time)
for _name, _value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                      "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
    os.environ[_name] = _value

TIMINGS = "/__timings"


# -- the timed moto server (run as `dynamodb_moto.py --serve PORT`) ------------------------
def serve(port: int) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    seen: dict[str, list[tuple[float, float]]] = defaultdict(list)
    app = DomainDispatcherApplication(create_backend_app)

    def timed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == TIMINGS:
            body = json.dumps(seen).encode()
            seen.clear()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        wall, cpu = time.perf_counter(), time.process_time()
        out = list(app(environ, start_response))
        kind = environ.get("HTTP_X_BENCH_KIND")
        if kind:
            seen[kind].append((time.perf_counter() - wall, time.process_time() - cpu))
        return out

    class Quiet(MotoRequestHandler):  # type: ignore[misc]
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    make_server("127.0.0.1", port, timed, threaded=True, request_handler=Quiet).serve_forever()


# -- 1. requests ------------------------------------------------------------------------
def requests(batch: int, rounds: int) -> None:
    import boto3
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    from bench.run import order, ours, powertools
    from idempotence.stores import DynamoDBStore

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    endpoint = f"http://127.0.0.1:{port}"
    round_trips: dict[str, list[float]] = defaultdict(list)
    sizes: dict[str, list[int]] = defaultdict(list)

    def client(library: str) -> Any:
        c = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
        sent: dict[str, Any] = {}

        def before_send(request: Any, **_: Any) -> None:
            op = request.headers["X-Amz-Target"]
            op = (op.decode() if isinstance(op, bytes) else op).split(".")[-1]
            body = request.body or b""
            body = body if isinstance(body, bytes) else body.encode()
            if op in ("PutItem", "UpdateItem"):  # a claim creates; a completion does not
                op += " claim" if op == "PutItem" or b"if_not_exists" in body else " complete"
            sent.update(kind=f"{library} {op}", start=time.perf_counter())
            request.headers["X-Bench-Kind"] = sent["kind"]
            sizes[f"{sent['kind']} request"].append(len(body))

        def received(response_dict: Any = None, **_: Any) -> None:
            round_trips[sent["kind"]].append(time.perf_counter() - sent["start"])
            if response_dict is not None:
                sizes[f"{sent['kind']} response"].append(len(response_dict.get("body") or b""))

        c.meta.events.register("before-send.dynamodb", before_send)
        c.meta.events.register("response-received.dynamodb", received)
        return c

    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        store = DynamoDBStore("bench-ours", client=client("ours"))
        store.create_table()
        pt_client = client("powertools")
        pt_client.create_table(
            TableName="bench-pt",
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        )
        fns = {
            "ours": ours(store),
            "powertools": powertools(
                DynamoDBPersistenceLayer(table_name="bench-pt", boto3_client=pt_client)
            ),
        }
        print(f"1. requests (moto server in its own process), load {os.getloadavg()[0]:.1f}")
        for replay in (False, True):
            tag = uuid.uuid4().hex
            for fn in fns.values():
                fn(order(tag))
            round_trips.clear()
            sizes.clear()
            urllib.request.urlopen(endpoint + TIMINGS).read()  # forget the set-up
            wall: dict[str, list[float]] = defaultdict(list)
            for r in range(rounds):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    for i in range(batch):
                        fn(order(tag if replay else f"{tag}-{r}-{i}"))
                    wall[name].append((time.perf_counter() - start) / batch)
            seen = json.loads(urllib.request.urlopen(endpoint + TIMINGS).read())
            what = "replay" if replay else "new key"
            print(f"   {what}: wall per call (median of {rounds} batches of {batch}): "
                  + ", ".join(f"{n} {statistics.median(w) * 1e3:.1f} ms"
                              for n, w in wall.items()))  # fmt: skip
            print(
                f"   {'request (medians, ms)':28} {'moto wall':>9} {'moto CPU':>9} "
                f"{'round trip':>10} {'bytes out':>9} {'bytes in':>8}"
            )
            for kind in sorted(seen):
                print(f"   {kind:28} {statistics.median(s[0] for s in seen[kind]) * 1e3:9.2f}"
                      f" {statistics.median(s[1] for s in seen[kind]) * 1e3:9.2f}"
                      f" {statistics.median(round_trips[kind]) * 1e3:10.2f}"
                      f" {statistics.median(sizes[kind + ' request']):9.0f}"
                      f" {statistics.median(sizes[kind + ' response']):8.0f}")  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)


# -- 2. expressions -----------------------------------------------------------------------
def expressions(calls: int) -> None:
    import copy

    import boto3
    from moto import mock_aws
    from moto.dynamodb.responses import DynamoHandler

    from idempotence.stores import DynamoDBStore

    spent: dict[str, list[float]] = defaultdict(list)
    current: list[str] = []
    handle = DynamoHandler.call_action

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return handle(self, *args, **kwargs)
        finally:
            if current:
                spent[current[0]].append(time.perf_counter() - start)

    DynamoHandler.call_action = timed  # type: ignore[method-assign]
    try:
        with mock_aws():
            client = boto3.client("dynamodb", region_name="us-east-1")
            store = DynamoDBStore("bench", client=client)
            store.create_table()
            sent: list[dict[str, Any]] = []
            capture = lambda params, **_: sent.append(copy.deepcopy(params))  # noqa: E731
            client.meta.events.register("before-parameter-build.dynamodb.UpdateItem", capture)
            store.claim(uuid.uuid4().hex, "f" * 32, lease=60, ttl=3600)  # the request, as sent
            client.meta.events.unregister("before-parameter-build.dynamodb.UpdateItem", capture)
            claim = sent[0]

            def variant(update: str | None = None, condition: str | None = None,
                        returns: bool = True) -> Callable[[str], Any]:  # fmt: skip
                """Our claim with ``update``/``condition`` replaced ("": none) and without
                its ReturnValues unless ``returns``; unused placeholders left out."""

                def make(key: str) -> Any:
                    request = copy.deepcopy(claim)
                    request["Key"] = {store.key_attr: {"S": key}}
                    if update is not None:
                        request["UpdateExpression"] = update
                    if condition == "":
                        del request["ConditionExpression"]
                    elif condition is not None:
                        request["ConditionExpression"] = condition
                    if not returns:
                        del request["ReturnValues"], request["ReturnValuesOnConditionCheckFailure"]
                    text = f"{request['UpdateExpression']} {request.get('ConditionExpression')}"
                    used = set(re.findall(r"[#:][A-Za-z_]\w*", text))
                    for part in ("ExpressionAttributeNames", "ExpressionAttributeValues"):
                        request[part] = {k: v for k, v in request[part].items() if k in used}
                    return "update_item", request

                return make

            def put(condition: bool) -> Callable[[str], Any]:
                """A PutItem of the attributes our claim writes, with its condition or none."""

                def make(key: str) -> Any:
                    _, request = variant()(key)
                    values = request["ExpressionAttributeValues"]
                    names = request["ExpressionAttributeNames"]
                    item = {store.key_attr: {"S": key}, "fence": values[":fresh"]}
                    for name, value in re.findall(r"(#\w+) = (:\w+)", request["UpdateExpression"]):
                        item[names[name]] = values[value]
                    put_request: dict[str, Any] = {"TableName": store.table, "Item": item}
                    if condition:
                        used = set(re.findall(r"[#:][A-Za-z_]\w*", request["ConditionExpression"]))
                        put_request["ConditionExpression"] = request["ConditionExpression"]
                        put_request["ExpressionAttributeNames"] = {
                            k: v for k, v in names.items() if k in used
                        }
                        put_request["ExpressionAttributeValues"] = {
                            k: v for k, v in values.items() if k in used
                        }
                    return "put_item", put_request

                return make

            update = claim["UpdateExpression"]
            sets = re.findall(r"#\w+ = :\w+", update.split(" REMOVE")[0])  # plain SETs (6)
            variants: dict[str, Callable[[str], Any]] = {
                "our claim, as sent": variant(),
                "  without ReturnValues": variant(returns=False),
                "  without the REMOVE clause": variant(update.split(" REMOVE")[0]),
                "  without the condition": variant(condition=""),
                "UpdateItem, SET 1 attribute": variant("SET " + sets[0], "", False),
                "UpdateItem, SET 3 attributes": variant("SET " + ", ".join(sets[:3]), "", False),
                "UpdateItem, SET 6 attributes": variant("SET " + ", ".join(sets), "", False),
                "PutItem of the same item, our condition": put(True),
                "PutItem of the same item, no condition": put(False),
            }
            for _ in range(calls):
                for name, make in variants.items():
                    method, request = make(uuid.uuid4().hex)
                    current[:] = [name]
                    getattr(client, method)(**request)
                    current.clear()
    finally:
        DynamoHandler.call_action = handle  # type: ignore[method-assign]
    print(f"2. expressions (moto in process, new keys, median of {calls}), "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    for name in variants:
        print(f"   {name:45} {statistics.median(spent[name]) * 1e3:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (smoke run)")
    parser.add_argument("--only", choices=("requests", "expressions"))
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.only in (None, "requests"):
        requests(batch=10 if args.quick else 40, rounds=3 if args.quick else 7)
    if args.only in (None, "expressions"):
        expressions(10 if args.quick else 100)


if __name__ == "__main__":
    main()
