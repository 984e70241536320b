"""Bad inputs, one table: each raises its documented exception with a message that says
what to do, and leaves the store consistent (no claim left behind by an error raised
before the claim; a key whose result cannot be kept is completed as "not stored" and
never runs again; a corrupt record is reported, not overwritten or re-run)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from idempotence import (
    CorruptRecordError,
    Idempotency,
    IdempotencyError,
    InvalidKeyError,
    MissingKeyError,
    ResultNotStoredError,
    StoredErrorReplay,
    StoreError,
)
from idempotence._record import Status
from idempotence.stores import MemoryStore
from idempotence.testing import ManualClock


@dataclasses.dataclass
class Point:
    """A dataclass a forged record names with fields it does not have."""

    x: int


@dataclasses.dataclass
class Tripwire:
    """An imported dataclass no function here declares: a replay must never build it."""

    built: ClassVar[int] = 0

    def __post_init__(self) -> None:
        type(self).built += 1


def _local_instance() -> Any:
    @dataclasses.dataclass
    class Local:
        x: int

    return Local(1)


POINT = b"tests.proof.test_bad_inputs:Point"
TRIPWIRE = b"tests.proof.test_bad_inputs:Tripwire"
UNDECLARED = "not reachable from the function's return annotation: .*replay_types="


class Env:
    """A memory store on a manual clock, and a decorator factory counting body runs."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.store = MemoryStore(clock=self.clock)
        self.idem = Idempotency(self.store)
        self.runs = 0
        self.fn: Any = None

    def make(self, result: Any = "ok", /, **options: Any) -> Any:
        def body(payload: Any) -> Any:
            self.runs += 1
            return result

        body.__qualname__ = "body"
        self.fn = self.idem(**{"namespace": "bad.inputs", **options})(body)
        return self.fn

    def corrupt(self, data: bytes | None, hint: Any = None) -> Any:
        """A completed record holding ``data``; returns the decorated function."""

        def body(payload: Any) -> Any:
            self.runs += 1
            return "fresh"

        body.__annotations__["return"] = hint
        self.fn = fn = self.idem(namespace="bad.corrupt")(body)
        key = fn.key_for({"id": 1})
        fence = self.store.claim(key, fn.fingerprint_for({"id": 1}), lease=60, ttl=600)
        assert self.store.complete(key, fence.record.fence, b"\x01Vplaceholder", ttl=600)
        # Write the corrupt bytes as a backend (or another version) would have left them.
        record = self.store._records[key]
        self.store._records[key] = record._replace(result=data)
        return fn


def _deep(levels: int) -> list[Any]:
    root: list[Any] = []
    cur = root
    for _ in range(levels):
        nxt: list[Any] = []
        cur.append(nxt)
        cur = nxt
    return root


class _StrSub(str):
    pass


class _FailingSerializer:
    """A custom serializer whose encode fails with an exception of its own."""

    def encode(self, value: Any) -> bytes:
        raise RuntimeError("cannot pickle this")

    def decode(self, data: bytes, hint: Any) -> Any:
        raise AssertionError("never called: nothing was stored")


def _generator(payload: Any) -> Any:
    yield payload


# -- consistency checks ---------------------------------------------------------------
def nothing_claimed(env: Env) -> None:
    assert len(env.store) == 0, "an error raised before the claim left a record behind"
    assert env.runs == 0


def completed_not_stored(env: Env) -> None:
    """The body ran once; the key is COMPLETED as "not stored"; a duplicate does not run."""
    assert env.runs == 1
    (record,) = env.store._records.values()
    assert record.status is Status.COMPLETED
    assert record.result is not None
    assert record.result[:2] == b"\x01N"
    with pytest.raises(ResultNotStoredError, match="not run again"):
        env.fn({"id": 1})
    assert env.runs == 1


def tripwire_untouched(env: Env) -> None:
    """No undeclared class was constructed, and the record is kept as :func:`corrupt_kept`."""
    assert Tripwire.built == 0
    corrupt_kept(env)


def corrupt_kept(env: Env) -> None:
    """The corrupt record is reported, neither overwritten nor re-run, and forget() heals."""
    assert env.runs == 0
    (record,) = env.store._records.values()
    assert record.status is Status.COMPLETED
    assert env.fn.forget({"id": 1})
    assert env.fn({"id": 1}) == "fresh"
    assert env.runs == 1


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    call: Callable[[Env], Any]
    exc: type[BaseException]
    match: str
    after: Callable[[Env], None] | None = nothing_claimed
    xfail: str | None = None


def call(payload: Any, /, **options: Any) -> Callable[[Env], Any]:
    return lambda env: env.make(**options)(payload)


def returning(result: Any, /, **options: Any) -> Callable[[Env], Any]:
    return lambda env: env.make(result, **options)({"id": 1})


def decorate(**options: Any) -> Callable[[Env], Any]:
    return lambda env: env.make(**options)


def replay(data: bytes | None, hint: Any = None) -> Callable[[Env], Any]:
    return lambda env: env.corrupt(data, hint)({"id": 1})


KEY_HELP = "Select JSON-representable fields with key="
NS_HELP = "use 1-200 printable ASCII characters"
NOT_KEPT = "The key is completed as 'result not stored'"
MISSING = "Pass the key material, fix key=, or set required=False"

CASES = [
    # -- payloads with no canonical form (key / fingerprint derivation, before the claim)
    Bad("payload-object", call(object()), InvalidKeyError, KEY_HELP),
    Bad("payload-lambda", call(lambda: 1), InvalidKeyError, KEY_HELP),
    Bad("payload-nested-object", call({"a": [1, {"b": object()}]}), InvalidKeyError, KEY_HELP),
    Bad("payload-set-of-objects", call({object(), object()}), InvalidKeyError, KEY_HELP),
    Bad("payload-nan", call(float("nan")), InvalidKeyError, KEY_HELP),
    Bad("payload-inf-nested", call({"a": [math.inf]}), InvalidKeyError, KEY_HELP),
    Bad("payload-neg-inf", call({"a": -math.inf}), InvalidKeyError, KEY_HELP),
    Bad("payload-201-levels", call(_deep(201)), InvalidKeyError, KEY_HELP),
    Bad("payload-201-levels-in-a-dict", call({"a": _deep(200)}), InvalidKeyError, KEY_HELP),
    Bad("payload-10k-levels", call(_deep(10_000)), InvalidKeyError, KEY_HELP),
    Bad(
        "fingerprint-selects-object",
        call({"id": 1, "x": object()}, key="id"),
        InvalidKeyError,
        KEY_HELP,
    ),
    Bad("scope-returns-object", call({"id": 1}, scope=lambda p: object()), InvalidKeyError,
        KEY_HELP),
    # (event, context) handlers key on the event: see test_idempotency's Lambda-style test.
    # -- JMESPath: selects nothing, invalid, fails on the payload
    Bad("jmespath-selects-nothing", call({"x": 1}, key="order.id"), MissingKeyError, MISSING),
    Bad("jmespath-selects-empty-string", call({"id": ""}, key="id"), MissingKeyError, MISSING),
    Bad("jmespath-multiselect-nothing", call({"c": 1}, key="[a, b]"), MissingKeyError, MISSING),
    Bad("key-function-returns-none", call({"id": 1}, key=lambda p: None), MissingKeyError, MISSING),
    Bad("jmespath-invalid", decorate(key="order["), ValueError, "invalid JMESPath expression"),
    Bad("jmespath-blank", decorate(key="   "), TypeError, "JMESPath expression \\(str\\)"),
    Bad("jmespath-json-of-garbage", call({"body": "{no"}, key="json(body).id"), InvalidKeyError,
        "failed on this payload"),
    Bad("jmespath-json-of-number", call({"body": 5}, key="json(body).id"), InvalidKeyError,
        "failed on this payload"),
    # -- namespaces
    Bad("namespace-201-chars", decorate(namespace="n" * 201), InvalidKeyError, NS_HELP),
    Bad("namespace-non-ascii", decorate(namespace="commandes.créer"), InvalidKeyError, NS_HELP),
    Bad("namespace-empty", decorate(namespace=""), InvalidKeyError, NS_HELP),
    Bad("namespace-newline", decorate(namespace="a\nb"), InvalidKeyError, NS_HELP),
    # -- options of the wrong type or value (refused when decorating)
    Bad("key-int", decorate(key=42), TypeError, "JMESPath expression \\(str\\) or a function"),
    Bad("ttl-negative", decorate(ttl=-1), ValueError, "ttl must be a positive duration"),
    Bad("ttl-nan", decorate(ttl=float("nan")), ValueError, "ttl must be a positive duration"),
    Bad(
        "ttl-string",
        decorate(ttl="1h"),
        ValueError,
        "ttl must be a positive duration",
    ),
    Bad("lease-zero", decorate(lease=0), ValueError, "lease must be a positive duration"),
    Bad("wait-timeout-negative", decorate(wait_timeout=-0.5), ValueError, "wait_timeout must"),
    Bad("on-in-progress-unknown", decorate(on_in_progress="block"), ValueError,
        "'raise' or 'wait'"),
    Bad("local-cache-negative", decorate(local_cache=-1), ValueError, "local_cache must be an int"),
    Bad("store-errors-strings", decorate(store_errors="ValueError"), TypeError,
        "store_errors must be exception classes"),
    Bad(
        "store-errors-instance",
        decorate(store_errors=ValueError("x")),
        TypeError,
        "store_errors must be exception classes",
    ),
    Bad("serializer-object", decorate(serializer=object()), TypeError, "serializer must have"),
    Bad("unknown-option", decorate(tll=5), TypeError, "unexpected keyword argument 'tll'"),
    Bad("payload-not-a-parameter", decorate(payload="nope"), TypeError, "not a parameter"),
    Bad("store-of-wrong-type", lambda env: Idempotency(42), TypeError, "a Store or a URL"),
    Bad("store-url-unknown-scheme", lambda env: Idempotency("bogus://x").store, ValueError,
        "known: "),
    Bad("decorate-generator", lambda env: env.idem(_generator), TypeError,
        "decorate a function that returns a value"),
    Bad("function-and-options", lambda env: env.idem(lambda p: 1, key="a"), TypeError,
        "pass options as @idem"),
    Bad("call-with-wrong-arguments", lambda env: env.make()(), TypeError, "missing a required"),
    # -- results that cannot be kept: the body ran once, the key is completed "not stored"
    Bad("result-object", returning(object()), ResultNotStoredError, NOT_KEPT, completed_not_stored),
    Bad("result-lambda", returning(lambda: 1), ResultNotStoredError, NOT_KEPT,
        completed_not_stored),
    Bad("result-generator", returning(iter([1])), ResultNotStoredError, NOT_KEPT,
        completed_not_stored),
    Bad("result-set-of-objects", returning({object()}), ResultNotStoredError, NOT_KEPT,
        completed_not_stored),
    Bad("result-dict-object-key", returning({object(): 1}), ResultNotStoredError, NOT_KEPT,
        completed_not_stored),
    Bad("result-str-subclass", returning(_StrSub("x")), ResultNotStoredError, NOT_KEPT,
        completed_not_stored),
    Bad("result-10k-levels", returning(_deep(10_000)), ResultNotStoredError, NOT_KEPT,
        completed_not_stored),
    Bad("result-lone-surrogate", returning({"name": "caf\ud800"}), ResultNotStoredError,
        "not valid Unicode", completed_not_stored),
    Bad("result-int-of-5000-digits", returning(10**5000), ResultNotStoredError,
        "cannot be written as JSON", completed_not_stored),
    Bad("should-store-raises", returning("ok", should_store=lambda result: result["x"]),
        ResultNotStoredError, "TypeError: string indices must be integers", completed_not_stored),
    Bad("result-serializer-raises", returning("ok", serializer=_FailingSerializer()),
        ResultNotStoredError, "RuntimeError: cannot pickle this", completed_not_stored),
    # A class no replay could rebuild is refused when the result is stored, not on replay.
    Bad("result-class-not-in-annotation", returning(Point(1)), ResultNotStoredError,
        "annotate the return type with it .* or list it in replay_types=",
        completed_not_stored),
    Bad("result-local-class", lambda env: env.make(_local_instance())({"id": 1}),
        ResultNotStoredError, "replay_types=", completed_not_stored),
    Bad("result-too-large-for-store", lambda env: _small_store(env), ResultNotStoredError,
        "more than this store keeps", completed_not_stored),
    # -- corrupt records in the store: reported, not re-run, healed by forget()
    Bad("record-envelope-v2", replay(b"\x02V1"), CorruptRecordError, "forget the key",
        corrupt_kept),
    Bad("record-empty", replay(b""), CorruptRecordError, "forget the key", corrupt_kept),
    Bad(
        "record-truncated",
        replay(b"\x01"),
        CorruptRecordError,
        "truncated",
        corrupt_kept,
    ),
    Bad("record-unknown-kind", replay(b"\x01Z1"), CorruptRecordError, "unknown kind",
        corrupt_kept),
    Bad("record-invalid-json", replay(b"\x01V{1"), CorruptRecordError, "not valid JSON",
        corrupt_kept),
    Bad("record-invalid-utf8", replay(b"\x01V\xff"), CorruptRecordError, "not valid JSON",
        corrupt_kept),
    Bad("record-unknown-tag", replay(b'\x01V{"$wat":1}'), CorruptRecordError, "unknown tag",
        corrupt_kept),
    Bad("record-tag-not-dataclass",
        replay(b'\x01V{"$dataclass":"idempotence:Status","v":{}}', Status),
        CorruptRecordError, "is not a dataclass", corrupt_kept),
    Bad("record-tag-not-model", replay(b'\x01V{"$model":"%s","v":{}}' % POINT, Point),
        CorruptRecordError, "is not a pydantic model", corrupt_kept),
    Bad("record-tag-not-enum", replay(b'\x01V{"$enum":"%s","v":1}' % POINT, Point),
        CorruptRecordError, "is not an enum", corrupt_kept),
    Bad("record-tag-unimported-module", replay(b'\x01V{"$dataclass":"nosuch.mod:X","v":{}}'),
        CorruptRecordError, UNDECLARED, corrupt_kept),
    Bad("record-tag-names-a-function", replay(b'\x01V{"$dataclass":"os:system","v":{}}'),
        CorruptRecordError, UNDECLARED, corrupt_kept),
    # A loaded dataclass the function does not declare is never built (its __post_init__
    # never runs), whether the annotation is absent or names something else.
    Bad("record-tag-undeclared-dataclass",
        replay(b'\x01V{"$dataclass":"%s","v":{}}' % TRIPWIRE), CorruptRecordError,
        UNDECLARED, tripwire_untouched),
    Bad("record-tag-dataclass-not-in-annotation",
        replay(b'\x01V[{"$dataclass":"%s","v":{}}]' % TRIPWIRE, list[Point]),
        CorruptRecordError, UNDECLARED, tripwire_untouched),
    Bad("record-dataclass-wrong-fields",
        replay(b'\x01V{"$dataclass":"%s","v":{"zzz":1}}' % POINT, Point),
        CorruptRecordError, "cannot decode stored \\$dataclass", corrupt_kept),
    Bad("record-enum-bad-value",
        replay(b'\x01V{"$enum":"idempotence:Status","v":"NOPE"}', Status),
        CorruptRecordError, "cannot decode stored \\$enum", corrupt_kept),
    Bad("record-nested-500", replay(b"\x01V" + b"[" * 500 + b"]" * 500), CorruptRecordError,
        "nested more than 200 levels", corrupt_kept),
    Bad("record-nested-1000", replay(b"\x01V" + b'{"a":' * 1000 + b"1" + b"}" * 1000),
        CorruptRecordError, "nested more than 200 levels", corrupt_kept),
    Bad("record-nested-100000-tagged",
        replay(b"\x01V" + b'{"$tuple":[' * 100_000 + b"]}" * 100_000), CorruptRecordError,
        "nested more than 200 levels", corrupt_kept),
    Bad("record-stored-error-nested-1000",
        replay(b'\x01E{"message":"m","type":"builtins:ValueError"}\n' + b"[" * 1000
               + b"]" * 1000), CorruptRecordError, "stored error of .* is corrupt",
        corrupt_kept),
    Bad("record-stored-error-names-a-class",
        replay(b'\x01E{"message":"m","type":"builtins:ValueError"}\n[{"$dataclass":"%s",'
               b'"v":{}}]' % TRIPWIRE), CorruptRecordError, "stored error of .* is corrupt",
        tripwire_untouched),
    Bad("record-stored-error-type-not-listed",
        replay(b'\x01E{"message":"m","type":"os:system"}\n["true"]'), StoredErrorReplay,
        "add the class to store_errors", corrupt_kept),
    Bad("record-bad-datetime", replay(b'\x01V{"$datetime":"notadate"}'), CorruptRecordError,
        "cannot decode stored \\$datetime", corrupt_kept),
    Bad("record-bad-decimal", replay(b'\x01V{"$decimal":"abc"}'), CorruptRecordError,
        "cannot decode stored \\$decimal", corrupt_kept),
    Bad("record-tuple-of-int", replay(b'\x01V{"$tuple":5}'), CorruptRecordError,
        "cannot decode stored \\$tuple", corrupt_kept),
    Bad("record-set-of-lists", replay(b'\x01V{"$set":[[1]]}'), CorruptRecordError,
        "cannot decode stored \\$set", corrupt_kept),
    Bad(
        "record-bad-base64",
        replay(b'\x01V{"$bytes":"***"}'),
        CorruptRecordError,
        "cannot decode stored \\$bytes",
        corrupt_kept,
    ),
    Bad("record-stored-error-bad-head", replay(b"\x01E{notjson\n[]"), CorruptRecordError,
        "stored error of .* is corrupt", corrupt_kept),
    Bad("record-completed-without-result", replay(None), CorruptRecordError, "holds no result",
        corrupt_kept),
]  # fmt: skip


def _small_store(env: Env) -> Any:
    class SmallStore(MemoryStore):
        max_result_bytes = 100

    env.store = SmallStore(clock=env.clock)
    env.idem = Idempotency(env.store)
    return env.make("y" * 200)({"id": 1})


def _params() -> list[Any]:
    marks = {
        c.id: [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [] for c in CASES
    }
    return [pytest.param(c, id=c.id, marks=marks[c.id]) for c in CASES]


def test_table_is_large_and_unique() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Bad) -> None:
    env = Env()
    with pytest.raises(case.exc) as info:
        case.call(env)
    assert re.search(case.match, str(info.value)), str(info.value)
    if isinstance(info.value, IdempotencyError) and not isinstance(
        info.value, (InvalidKeyError, MissingKeyError)
    ):
        assert info.value.key is None or info.value.key.startswith("bad.")
    if case.after is not None:
        case.after(env)


# -- inputs that look bad but are fine: they must work, not fail -------------------------
@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("x" * 10_000_000, id="10-MB-string"),
        pytest.param({"a": [1, {"b": None}], "c": {"d": [True, 1.5]}}, id="unknown-event-shape"),
        pytest.param(None, id="none-event"),
        pytest.param({"s": {1, "a"}}, id="set-of-mixed-scalars"),
        pytest.param(_deep(150), id="150-levels"),
        pytest.param(_deep(199), id="199-levels"),
        # Mappings with keys JSON does not have get the tagged canonical form (they used to
        # be refused, or - int keys - to collide with their string twins).
        pytest.param({b"k": 1}, id="bytes-dict-key"),
        pytest.param({(1, 2): 1}, id="tuple-dict-key"),
        pytest.param({1: "a", "1": "b"}, id="mixed-dict-keys"),
    ],
)
def test_odd_but_valid_payloads_work(payload: Any) -> None:
    env = Env()
    fn = env.make({"echo": "done"})
    assert fn(payload) == {"echo": "done"}
    assert fn(payload) == {"echo": "done"}  # the replay
    assert env.runs == 1
    record = fn.record_for(payload)
    assert record is not None
    assert record.status is Status.COMPLETED


def test_namespace_of_200_chars_gives_bounded_keys() -> None:
    env = Env()
    fn = env.make(namespace="n" * 200)
    key = fn.key_for({"id": "x" * 100_000})
    assert len(key) == 200 + 1 + 32
    assert fn({"id": 1}) == "ok"


def test_unencodable_corner_results_round_trip() -> None:
    """NaN/inf results are not errors: the codec tags them and replays them exactly."""
    env = Env()
    fn = env.make({"nan": math.nan, "inf": -math.inf})
    first = fn({"id": 1})
    again = fn({"id": 1})
    assert math.isnan(again["nan"])
    assert again["inf"] == -math.inf
    assert math.isnan(first["nan"])
    assert env.runs == 1


def test_store_given_wrong_types_fails_as_store_error() -> None:
    """A store called with a result that is not bytes fails closed with StoreError."""
    store = MemoryStore(clock=ManualClock())
    fence = store.claim("k", "fp", lease=10, ttl=10).record.fence
    with pytest.raises(StoreError, match="Check that the store is reachable and configured"):
        store.complete("k", fence, "not bytes", ttl=10)  # type: ignore[arg-type]
    record = store.get("k")
    assert record is not None
    assert record.status is Status.IN_PROGRESS
