"""The one loop that runs a sans-I/O generator against real I/O, sync and async.

A decision generator yields requests (store operations, SQL statements, service calls,
work items) and receives their results; :func:`drive` and :func:`adrive` are the only
places that ``send``/``throw`` into one and catch its ``StopIteration``. The engine's
:func:`~idempotence.engine.run` / ``arun``, the stores' request programs, the effects'
SQL steps and the Lambda adapter's batch loop all use them (public as
:func:`idempotence.engine.drive` / :func:`idempotence.engine.adrive`).

Sync/async twins that remain (each under 11 lines; ``duplicates --min-lines 11`` lists
none), and why they are not shared:

- :func:`drive` / :func:`adrive` themselves: the second awaits its step; a coroutine
  cannot be driven by the sync loop, and wrapping the sync step in one costs every call.
- the shells' two ``step`` functions (``_shells``): sync store methods under the timer
  thread's heartbeat, awaited ones under an asyncio task.
- ``stores._base``'s ``_claim``/``_aclaim``/``_complete``/``_acomplete``: written out with
  the interface's exact signatures because they sit on every call's path (~0.35 us).
- each store's ``step`` pair (DynamoDB, Redis Cluster, the S3 offload), PostgreSQL's
  ``_conn``/``_async_conn`` and ``create_table``/``acreate_table``: one calls the sync
  client, the other awaits the async one; the requests themselves are shared generators.
- the effects' ``execute``/``aexecute``, transaction context managers and DynamoDB
  transaction bodies, the HTTP engine's ``execute``/``aexecute``, the Lambda adapter's
  sync and async handler wrappers and batch steps: the same decisions (shared generators
  or plans), around one call that is awaited in the async twin.
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
