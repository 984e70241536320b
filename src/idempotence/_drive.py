"""The one loop that runs a sans-I/O generator against real I/O, sync and async.

A decision generator yields requests (store operations, SQL statements, service calls,
work items) and receives their results; :func:`drive` and :func:`adrive` are the only
places that ``send``/``throw`` into one and catch its ``StopIteration``. The engine's
:func:`~idempotence.engine.run` / ``arun``, the stores' request programs, the effects'
SQL steps and the Lambda adapter's batch loop all use them (public as
:func:`idempotence.engine.drive` / :func:`idempotence.engine.adrive`).
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["adrive", "drive"]

Y = TypeVar("Y")
S = TypeVar("S")
T = TypeVar("T")

Catch = type[BaseException] | tuple[type[BaseException], ...]


def drive(
    machine: Generator[Y, S, T], step: Callable[[Y], S], *, catch: Catch = BaseException
) -> T:
    """Run ``machine`` to its end: each value it yields goes to ``step``, whose return
    value is sent back in; an exception of ``catch`` that ``step`` raises is thrown in
    instead (any other propagates at once, the generator left as it is). Returns the
    generator's return value; its own exceptions propagate."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            item = machine.send(value) if error is None else machine.throw(error)
        except StopIteration as done:
            return typing.cast(T, done.value)
        value, error = None, None
        try:
            value = step(item)
        except catch as exc:
            error = exc


async def adrive(
    machine: Generator[Y, S, T],
    step: Callable[[Y], Awaitable[S]],
    *,
    catch: Catch = BaseException,
) -> T:
    """:func:`drive` with an ``async`` ``step``: each yielded value is awaited through it."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            item = machine.send(value) if error is None else machine.throw(error)
        except StopIteration as done:
            return typing.cast(T, done.value)
        value, error = None, None
        try:
            value = await step(item)
        except catch as exc:
            error = exc
