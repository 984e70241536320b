"""The key of the idempotent operation running in this context."""

from __future__ import annotations

import contextvars

__all__ = ["CURRENT_KEY", "current_key"]

CURRENT_KEY: contextvars.ContextVar[str] = contextvars.ContextVar("idempotence_current_key")


def current_key() -> str:
    """The idempotency key of the operation running in this context.

    Set while the body of an idempotent function runs (decorators, Lambda handlers, batch
    records, HTTP middleware, transactional functions; sync and async: it follows
    ``asyncio`` tasks and ``contextvars.copy_context``). Use it to derive downstream keys
    with :func:`idempotence.effects.child_key`. Raises ``LookupError`` outside of one.
    """
    try:
        return CURRENT_KEY.get()
    except LookupError:
        raise LookupError(
            "no idempotent operation is running in this context: current_key() works "
            "inside the body of an idempotent function"
        ) from None
