"""Downstream idempotency keys derived from the current operation's key."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import re
from collections.abc import Iterator

__all__ = ["child_key", "current_key"]

#: Characters kept from ``name`` in the readable part of a child key.
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")
_MAX_NAME = 64

_current: contextvars.ContextVar[str] = contextvars.ContextVar("idempotence_current_key")


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


def current_key() -> str:
    """The idempotency key of the operation running in this context.

    Set inside functions decorated by :class:`~idempotence.effects.TransactionalIdempotency`
    (sync and async; it follows ``asyncio`` tasks and ``contextvars.copy_context``). Raises
    ``LookupError`` outside of one.
    """
    try:
        return _current.get()
    except LookupError:
        raise LookupError(
            "no idempotent operation is running in this context: current_key() works inside "
            "a function decorated with TransactionalIdempotency"
        ) from None


@contextlib.contextmanager
def running(key: str) -> Iterator[None]:
    """Make ``key`` the :func:`current_key` for the body of the ``with``."""
    token = _current.set(key)
    try:
        yield
    finally:
        _current.reset(token)
