"""Fuzzing the HTTP engine: arbitrary methods, paths, queries, headers and bodies (lone
surrogates, control characters, huge and deeply nested JSON) through
:class:`HTTPIdempotency` over a :class:`MemoryStore`. Every outcome must be a well-formed
response - the app's, a replay of it, or an ``application/problem+json`` refusal of a known
type - and never an unexpected exception; the app runs at most once per accepted key."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idempotence import Idempotency
from idempotence._codec import KIND_VALUE, envelope
from idempotence.http import (
    NEVER_KEPT_STATUSES,
    PROBLEM_TYPES,
    REPLAYED_HEADER,
    HTTPIdempotency,
    HTTPRequest,
    HTTPResponse,
)
from idempotence.stores import MemoryStore

APP_STATUSES = [200, 201, 204, 400, 401, 403, 404, 408, 409, 422, 425, 429, 500, 503]
PROBLEM_STATUSES = {status for status, _, _ in PROBLEM_TYPES.values()}

# Any text, surrogates included (what a broken server or a hostile client can produce).
# Surrogates and controls drawn often on purpose: plain text strategies rarely hit them.
anytext = st.lists(
    st.one_of(
        st.characters(exclude_categories=()),
        st.sampled_from(["\ud800", "\udcff", "\x00", "\r", "\n", "\xff", "\u2028"]),
    ),
    max_size=40,
).map("".join)  # st.text() never yields lone surrogates
header_names = st.one_of(
    st.sampled_from(
        [
            *("Idempotency-Key", "idempotency-key", "Content-Type", "Authorization"),
            *("X-Api-Key", "Cookie", "Content-Length", "Connection"),
        ]
    ),
    anytext,
)
key_values = st.one_of(
    st.sampled_from(['"k1"', "k1", '"k\\"2"', "", '""', '"' + "x" * 300 + '"', "a,b", '"open']),
    anytext,
)
header_values = st.one_of(
    key_values, st.sampled_from(["application/json", "text/plain; charset=utf-8"]), anytext
)


class Big(bytes):
    """Bytes with a short repr, so that a failing example stays readable."""

    def __repr__(self) -> str:
        return f"Big({bytes(self[:20])!r}... {len(self)} bytes)"


def deep_json(depth: int) -> bytes:
    return Big(b'{"a":' * depth + b"1" + b"}" * depth)


bodies = st.one_of(
    st.binary(max_size=200),
    anytext.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | anytext,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(anytext, inner, max_size=4),
        max_leaves=20,
    ).map(lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass")),
    st.integers(900, 5000).map(deep_json),
    st.just(Big(b"[" * 100_000)),
    st.just(Big(b"x" * 300_000)),
)

requests = st.builds(
    HTTPRequest,
    method=st.one_of(st.sampled_from(["POST", "PATCH", "post", "GET"]), anytext),
    path=st.one_of(st.just("/orders"), anytext),
    query=st.one_of(st.just(""), anytext),
    headers=st.lists(st.tuples(header_names, header_values), max_size=6).map(
        lambda hs: [("Idempotency-Key", '"k1"'), *hs] if len(hs) % 2 else hs
    ),
    body=bodies,
    principal=st.one_of(st.none(), anytext),
)


def check(response: Any, app_statuses: set[int]) -> None:
    assert isinstance(response, HTTPResponse)
    assert response.status in app_statuses | PROBLEM_STATUSES
    if response.header("content-type") == "application/problem+json":
        problem = json.loads(response.body)
        name = problem["type"].removeprefix("urn:idempotence:problem:")
        assert PROBLEM_TYPES[name][0] == problem["status"] == response.status
        assert isinstance(problem["retry_same_key"], bool)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    first=requests,
    second=requests,
    status=st.sampled_from(APP_STATUSES),
    required=st.booleans(),
    corrupt=st.one_of(st.none(), st.binary(max_size=50), st.just(deep_json(1000))),
)
def test_every_outcome_is_a_well_formed_response(
    first: HTTPRequest,
    second: HTTPRequest,
    status: int,
    required: bool,
    corrupt: bytes | None,
) -> None:
    store = MemoryStore()
    engine = HTTPIdempotency(
        Idempotency(store, lease=30),
        required=required,
        max_request_bytes=200_000,
        max_body_bytes=1000,
    )
    runs: list[HTTPRequest] = []

    def app(request: HTTPRequest) -> HTTPResponse:
        runs.append(request)
        body = request.body[:2000]  # echo the request: some answers are too large to keep
        return HTTPResponse(status, [("content-type", "application/octet-stream")], body)

    answers = []
    for request in (first, first, second):
        response = engine.run(request, lambda r=request: app(r))  # type: ignore[misc]
        check(response, {status})
        if response.header(REPLAYED_HEADER) == "true":
            assert response.status == status
        answers.append(response)
    runs_of_first = len([r for r in runs if r is first])
    if answers[1].header(REPLAYED_HEADER) == "true":
        assert runs_of_first == 1
    plan = engine.prepare(first)
    kept = status < 500 and status not in NEVER_KEPT_STATUSES and len(first.body) <= 1000
    if kept and plan is not None and not isinstance(plan, HTTPResponse):
        # An accepted key whose answer was kept: the duplicate is a replay, not a re-run.
        assert runs_of_first == 1
        assert answers[1].header(REPLAYED_HEADER) == "true"
        assert answers[1].body == answers[0].body

    if corrupt is not None:  # a record that is not a response answers record-corrupt
        request = HTTPRequest("POST", "/c", "", [("Idempotency-Key", "c")], b"")
        plan = engine.prepare(request)
        assert plan is not None
        assert not isinstance(plan, HTTPResponse)
        claim = store.claim(plan.key, plan.fingerprint, lease=30, ttl=60)
        store.complete(plan.key, claim.record.fence, envelope(KIND_VALUE, corrupt), ttl=60)
        response = engine.run(request, lambda: HTTPResponse(201))
        check(response, set())
        assert response.status == 500
