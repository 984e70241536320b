"""Fuzzing the Lambda sources: mutated HTTP events and batch records through
``@idem.handler`` and ``process_batch`` over a MemoryStore. Every outcome is a proxy
response (or the handler's own result), a partial batch response, or a documented
``IdempotencyError`` / ``TypeError`` - never ``AttributeError``, ``KeyError``,
``UnicodeError`` or ``RecursionError``."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idempotence import Idempotency, IdempotencyError
from idempotence.aws_lambda import HTTP_SOURCES, detect
from idempotence.stores import MemoryStore
from tests.aws_lambda.events import FakeContext, load

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HTTP = {name: load(name) for name in ("apigw_rest", "apigw_http", "alb", "function_url")}
BATCH = {name: load(name) for name in ("sqs", "sqs_fifo", "kinesis", "dynamodb_stream")}

texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["\ud800", "a\udcff", "\ud83d", "%%%", "=", "POST", "", "null"]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), texts)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8,
)


class Deep:
    """Stands for a value nested ``depth`` levels (built in the test, so Hypothesis never
    has to print it)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def __repr__(self) -> str:
        return f"Deep({self.depth})"

    def build(self) -> Any:
        value: Any = "leaf"
        for _ in range(self.depth):
            value = {"a": [value]}
        return value


def real(value: Any) -> Any:
    return value.build() if isinstance(value, Deep) else value


anything = st.one_of(values, st.integers(2_000, 5_000).map(Deep))

# A mutation: a path into the event (existing keys or new ones) and what to do there.
mutation = st.tuples(
    st.lists(
        st.sampled_from(
            [
                "headers",
                "multiValueHeaders",
                "body",
                "isBase64Encoded",
                "path",
                "rawPath",
                "httpMethod",
                "rawQueryString",
                "cookies",
                "queryStringParameters",
                "multiValueQueryStringParameters",
                "requestContext",
                "authorizer",
                "identity",
                "http",
                "method",
                "lambda",
                "jwt",
                "claims",
                "sub",
                "principalId",
                "Idempotency-Key",
                "idempotency-key",
                "Authorization",
                "Records",
                "0",
                "1",
                "messageId",
                "kinesis",
                "dynamodb",
                "sequenceNumber",
                "SequenceNumber",
                "eventID",
                "eventSource",
                "eventSourceARN",
                "attributes",
                "MessageDeduplicationId",
            ]
        ),
        min_size=1,
        max_size=4,
    ),
    st.one_of(st.just("delete"), anything),
)


def mutate(event: Any, path: list[str], action: Any) -> None:
    node = event
    for step in path[:-1]:
        if isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        elif isinstance(node, dict) and step in node:
            node = node[step]
        else:
            return
    last = path[-1]
    action = real(action)
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        if action == "delete":
            del node[int(last)]
        else:
            node[int(last)] = action
    elif isinstance(node, dict):
        if action == "delete":
            node.pop(last, None)
        else:
            node[last] = action


results = st.one_of(
    st.builds(
        lambda status, headers, body, b64: {
            "statusCode": status,
            "headers": headers,
            "body": body,
            "isBase64Encoded": b64,
        },
        st.one_of(st.integers(100, 599), anything),
        st.one_of(st.dictionaries(texts, texts, max_size=3), anything),
        st.one_of(texts, anything),
        st.booleans(),
    ),
    anything,
)


def is_proxy_response(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and type(value.get("statusCode")) is int
        and isinstance(value.get("body"), str)
    )


STORE = MemoryStore()
IDEM = Idempotency(STORE)


@IDEM.handler(credential_cookies=["session"])
def http_handler(event: Any, context: Any) -> Any:
    return event["__result"]


@SETTINGS
@given(
    st.sampled_from(sorted(HTTP)),
    st.lists(mutation, max_size=4),
    results,
    st.booleans(),
)
def test_http_events_never_crash(
    name: str, mutations: list[tuple[list[str], Any]], result: Any, twice: bool
) -> None:
    event = copy.deepcopy(HTTP[name])
    for path, action in mutations:
        mutate(event, path, action)
    if isinstance(event, dict):
        event["__result"] = result = real(result)
    for _ in range(2 if twice else 1):
        try:
            out = http_handler(event, FakeContext())
        except (IdempotencyError, TypeError):
            continue
        except KeyError:  # only the handler's own lookup of "__result"
            assert not isinstance(event, dict) or "__result" not in event
            continue
        if out is result or detect(event) not in HTTP_SOURCES:
            continue  # the handler's own result (or, for a non-HTTP event, its replay)
        assert is_proxy_response(out), out
        json.dumps(out)  # a response the library built: Lambda can serialise it


def record_handler(record: Any) -> None:
    if isinstance(record, dict) and record.get("fail"):
        raise RuntimeError("record failed")


@SETTINGS
@given(
    st.sampled_from(sorted(BATCH)),
    st.lists(mutation, max_size=4),
    st.booleans(),
)
def test_batch_records_never_crash(
    name: str, mutations: list[tuple[list[str], Any]], whole_event: bool
) -> None:
    event = copy.deepcopy(BATCH[name])
    for path, action in mutations:
        mutate(event, path if path[0] == "Records" else ["Records", "0", *path], action)
    try:
        if whole_event:
            out = http_handler(event, FakeContext())
        else:
            out = IDEM.process_batch(event, record_handler, context=FakeContext())
    except (IdempotencyError, TypeError):
        return
    except KeyError:
        assert whole_event  # the handler's own event["__result"]
        return
    except ValueError as exc:  # documented: not an SQS, Kinesis or DynamoDB Streams batch
        message = str(exc)
    else:
        message = ""
    if message:
        assert "process_batch handles" in message
        return
    if not whole_event:
        assert set(out) == {"batchItemFailures"}
        assert all(isinstance(f["itemIdentifier"], str) for f in out["batchItemFailures"])
