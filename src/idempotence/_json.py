"""Compact JSON encoders built once: the C encoder of :mod:`json` called directly, without
the per-call set-up of ``json.dumps``/``JSONEncoder.encode`` (measurable on a hot path
that encodes the key material and the fingerprint's payload on every call); and
:func:`loads`, the C scanner called directly on the compact UTF-8 JSON we write."""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _encoder
from typing import Any

__all__ = ["loads", "make_dumps"]


def make_dumps(
    *, sort_keys: bool, default: Callable[[Any], Any] | None = None
) -> Callable[[Any], str]:
    """A ``dumps(obj) -> str``: compact separators, UTF-8 text (not ASCII-escaped), NaN and
    infinities refused (``ValueError``), no circular-reference check (a cycle raises
    ``RecursionError``). Falls back to :class:`json.JSONEncoder` where the C encoder is
    unavailable or has another signature."""
    fallback = json.JSONEncoder(
        sort_keys=sort_keys,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        check_circular=False,
        default=default,
    )
    make = getattr(_encoder, "c_make_encoder", None)
    basestring = getattr(_encoder, "c_encode_basestring", None)
    if make is None or basestring is None:
        return fallback.encode
    try:
        c_encode = make(None, fallback.default, basestring, None, ":", ",", sort_keys, False, False)
        probe = {"b": [1, 2.5, None, True], "a": "é\n"}
        if "".join(c_encode(probe, 0)) != fallback.encode(probe):
            return fallback.encode
    except Exception:  # another CPython's signature: use the portable path
        return fallback.encode

    def dumps(obj: Any) -> str:
        if type(obj) is str:
            return basestring(obj)  # type: ignore[no-any-return]
        return "".join(c_encode(obj, 0))

    return dumps


_decoder: Any = json.JSONDecoder()
_scan: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once


def loads(data: bytes) -> Any:
    """``json.loads(data)``, without its per-call set-up (encoding detection, the whitespace
    regexes) when ``data`` is UTF-8 JSON with no surrounding whitespace, as our encoders
    write it. Anything else - whitespace, a BOM, UTF-16, invalid JSON - goes through
    ``json.loads`` itself, so results and errors are exactly its own."""
    try:
        text = data.decode("utf-8")
        value, end = _scan(text, 0)
    except Exception:  # StopIteration, JSONDecodeError, UnicodeDecodeError...: json.loads says
        return json.loads(data)
    if end != len(text):
        return json.loads(data)
    return value
