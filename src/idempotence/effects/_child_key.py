"""Downstream idempotency keys derived from the current operation's key."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator

from .._context import CURRENT_KEY, current_key

__all__ = ["child_key", "current_key"]

#: Characters kept from ``name`` in the readable part of a child key.
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")
_MAX_NAME = 64


def child_key(parent_key: str, name: str) -> str:
    """A stable idempotency key for the downstream call ``name`` made by the operation
    ``parent_key`` (e.g. Stripe's ``Idempotency-Key`` header for the charge of an order).

    The same ``(parent_key, name)`` gives the same key in every process and on every retry;
    different names (or parents) give different keys. The key is ``<name>-<64 hex digits>``:
    the name, reduced to ``[A-Za-z0-9._:-]`` and at most 64 characters, for humans reading
    logs, and a SHA-256 of both inputs, so the key is unique even when two names reduce to
    the same text. At most 129 printable ASCII characters: valid for Stripe (255), the
    ``Idempotency-Key`` HTTP header draft (1-255 printable ASCII) and this library.

    Raises ``ValueError`` for an empty ``parent_key`` or ``name``.
    """
    if not parent_key or not name:
        raise ValueError("child_key needs a non-empty parent_key and name")
    material = b"idempotence.child_key\x00" + parent_key.encode() + b"\x00" + name.encode()
    label = _UNSAFE.sub("_", name)[:_MAX_NAME].strip("_") or "child"
    return f"{label}-{hashlib.sha256(material).hexdigest()}"


@contextlib.contextmanager
def running(key: str) -> Iterator[None]:
    """Make ``key`` the :func:`current_key` for the body of the ``with``."""
    token = CURRENT_KEY.set(key)
    try:
        yield
    finally:
        CURRENT_KEY.reset(token)
