"""Key derivation under arbitrary input: a key string or a documented key error, never
another exception; two calls get one key only when their inputs are the same canonical
value."""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from idempotence import Idempotency, InvalidKeyError, MissingKeyError
from idempotence._keys import canonical_json
from idempotence.stores import MemoryStore

TEXT = st.text(
    st.one_of(
        st.characters(),  # any code point but surrogates
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
    ),
    max_size=8,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.binary(max_size=8),
)
KEYS = st.one_of(TEXT, st.integers(-3, 3), st.booleans())


def deep(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


PAYLOADS = st.one_of(
    st.recursive(
        SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(KEYS, inner, max_size=4),
            st.frozensets(st.one_of(st.integers(-5, 5), TEXT), max_size=4),
        ),
        max_leaves=20,
    ),
    st.integers(min_value=0, max_value=600).map(deep),
)

EXPRESSIONS = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "k",
            "k.k",
            "id",
            "[0]",
            "[*].k",
            "k[0].k",
            "json(k)",
            "powertools_json(k).id",
            "base64_json(k)",
            "powertools_base64(k)",
            "keys(@)",
            "length(@)",
            "[k, id]",
            "{a: k, b: id}",
            "values(@)[0]",
            "to_number(k)",
        ]
    ),
    st.from_regex(r"[a-z]{1,3}(\.[a-z]{1,3}){0,2}", fullmatch=True),
)

idem = Idempotency(MemoryStore())


def norm(value: Any) -> Any:
    """A value's identity as the canonical form sees it (bytes are their base64 text, sets
    sorted lists, tuples lists; an int key is not its string), or an error marker."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("i", value)
    if isinstance(value, float):
        return ("f", repr(value))
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, (bytes, bytearray)):
        return ("s", base64.b64encode(value).decode())
    if value is None:
        return ("n",)
    if isinstance(value, (set, frozenset)):
        return ("l", tuple(norm(v) for v in sorted(value, key=canonical_json)))
    if isinstance(value, (list, tuple)):
        return ("l", tuple(norm(v) for v in value))
    if isinstance(value, dict):
        return ("d", tuple(sorted((norm(k), norm(v)) for k, v in value.items())))
    raise AssertionError(f"unexpected {type(value)}")


def key_of(key: str | None, payload: Any) -> str | None:
    @idem(key=key, namespace="fuzz") if key is not None else idem(namespace="fuzz")
    def fn(payload: Any) -> None: ...

    error: Exception | None = None
    try:
        result = fn.key_for(payload)
    except (MissingKeyError, InvalidKeyError) as exc:
        error = exc
    if error is not None:
        assert "leaf" not in str(error)  # messages never echo payload values
        return None
    assert isinstance(result, str)
    assert result.startswith("fuzz#")
    return result


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expression=EXPRESSIONS, payload=PAYLOADS)
def test_any_payload_and_expression_gives_a_key_or_a_key_error(
    expression: str | None, payload: Any
) -> None:
    key_of(expression, payload)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=PAYLOADS, b=PAYLOADS)
def test_distinct_payloads_get_distinct_keys(a: Any, b: Any) -> None:
    ka, kb = key_of(None, a), key_of(None, b)
    if ka is not None and ka == kb:
        assert norm(a) == norm(b)
    if ka is not None:
        assert key_of(None, a) == ka  # stable


@example(a={1: "a"}, b={"1": "a"})
@example(a={True: "a"}, b={"true": "a"})
@given(
    a=st.dictionaries(KEYS, SCALARS, max_size=4),
    b=st.dictionaries(KEYS, SCALARS, max_size=4),
)
@settings(max_examples=200, deadline=None)
def test_int_and_string_keys_never_collide(a: dict[Any, Any], b: dict[Any, Any]) -> None:
    ka, kb = key_of(None, a), key_of(None, b)
    if ka is not None and ka == kb:
        assert norm(a) == norm(b)


def test_precision_of_json_text_is_kept() -> None:
    near, exact = '{"id": 1.0000000000000001}', '{"id": 1.0}'
    assert key_of("json(k).id", {"k": near}) != key_of("json(k).id", {"k": exact})
