"""Batch processing: each record of an SQS, Kinesis, DynamoDB Streams or Kafka (Amazon MSK,
self-managed) batch idempotent on its own id, with a partial batch response.

The decisions (which records failed, where a FIFO batch stops, what is reported) live in
sans-I/O generators that :func:`process_batch` and :func:`aprocess_batch` only drive (with
:func:`~idempotence.engine.drive` / :func:`~idempotence.engine.adrive`):

- :func:`_lockstep` (the default, ``batch_claims=True``) starts every record's engine
  :func:`~idempotence.engine.invocation`, gathers their first :class:`ClaimOp` into one
  request (:class:`~idempotence.stores.capabilities.BatchClaims` ``claim_many``, or one
  claim per record on a store without it), feeds each claim back, runs the records in
  order, then sends the completions and releases they yield in one request each. Every
  per-record decision (run, replay, in progress, key reuse, fail open, what to store) stays
  in the engine's protocol; the generator only chooses which operations travel together.
- :func:`_steps` (``batch_claims=False``) yields the records one at a time, each run through
  :func:`~idempotence.engine.run` / ``arun`` (a claim and a completion request each).

One file (over 400 lines): the batch decisions (the generators) and their sync and async
drivers share the private item, flow and request types; split, each half would import the
other's internals.
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..base import IdempotencyBase
from ..engine import (
    ClaimOp,
    CompleteOp,
    Op,
    Operation,
    Plan,
    ReleaseOp,
    RunOp,
    SleepOp,
    adrive,
    arun,
    arun_op,
    drive,
    invocation,
    is_disabled,
    run,
    run_op,
)
from ..stores import Store
from ..stores.capabilities import (
    BatchClaims,
    aclaim_each,
    acomplete_each,
    arelease_each,
    claim_each,
    complete_each,
    release_each,
)
from ._common import (
    DEFAULT_LEASE_MARGIN,
    AwaitableResultError,
    is_async_callable,
    lease_for,
    plan_of,
    sync_result,
)
from ._sources import (
    BATCH_SOURCES,
    Source,
    detect,
    is_fifo,
    item_identifier,
    record_content,
    record_id,
    records_of,
)

__all__ = ["BatchResponse", "aprocess_batch", "process_batch"]

log = logging.getLogger("idempotence")

#: ``{"batchItemFailures": [{"itemIdentifier": ...}]}``, Lambda's partial batch response
#: (the identifier is a string, or for Kafka ``{"partition": ..., "offset": ...}``).
BatchResponse = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class _Item:
    """One record to process: its failure identifier, and either its plan (``None``: run
    without idempotency) or the error that kept it from being planned."""

    identifier: Any
    record: Any
    plan: Plan | None
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class _Batch:
    store: Store | None
    items: Sequence[_Item]
    stop_on_failure: bool
    heartbeat: bool
    source: Source
    batch_claims: bool = True


def _prepare(
    idem: IdempotencyBase,
    event: Any,
    record_handler: Callable[..., Any],
    context: Any,
    lease_margin: float,
    stop_on_failure: bool | None,
    options: dict[str, Any],
    batch_claims: bool = True,
) -> _Batch:
    source = detect(event)
    if isinstance(event, Mapping) and event.get("Records") == []:
        source = Source.SQS  # an empty batch: nothing to run, nothing to report
    if source not in BATCH_SOURCES:
        raise ValueError(
            f"process_batch handles SQS, Kinesis, DynamoDB Streams and Kafka events, not "
            f"{source.value}; decorate the handler with @idem.handler instead"
        )
    records = records_of(source, event)
    if stop_on_failure is None:
        stop_on_failure = is_fifo(source, records)
    options = dict(options)
    options.setdefault("heartbeat", False)
    config = idem.config.replace(**options)
    disabled = is_disabled()
    if disabled:
        warnings.warn(
            "IDEMPOTENCE_DISABLED is set: batch records run without idempotency",
            RuntimeWarning,
            stacklevel=4,
        )
    bound = Operation(
        record_handler, config, idem.namespace_for(record_handler, options.get("namespace"))
    )
    store = None if disabled or not records else idem.store
    fixed = config.lease_s if "lease" in options else None
    lease_s = lease_for(context, fixed, config.lease_s, lease_margin)
    items = []
    for record in records:
        identifier = item_identifier(source, record)
        if store is None:
            items.append(_Item(identifier, record, None))
            continue
        try:
            plan = _plan(bound, store, source, record, lease_s)
        except Exception as exc:  # this record cannot get a key: it fails, the others run
            items.append(_Item(identifier, record, None, exc))
        else:
            items.append(_Item(identifier, record, plan))
    return _Batch(store, items, stop_on_failure, config.heartbeat, source, batch_claims)


def _plan(
    bound: Operation[Any, Any], store: Store, source: Source, record: Any, lease: float
) -> Plan | None:
    return plan_of(
        bound,
        store,
        source,
        record,
        lambda: lease,
        material_of=record_id,
        content_of=record_content,
        missing=f"key={bound.key_spec!r} selected nothing from this {source.value} record",
    )


def _report(batch: _Batch, item: _Item, error: BaseException) -> None:
    """One WARNING line per failed record: the source, the record's failure identifier (the
    id Lambda redelivers it by, never its content) and the exception's class, with
    ``extra=`` fields; the traceback goes to DEBUG (the exception's text may quote the
    record, so it never reaches the WARNING line)."""
    fields = {
        "idempotence_outcome": "record_failed",
        "idempotence_source": batch.source.value,
        "idempotence_error": type(error).__name__,
    }
    log.warning(
        "%s record %s failed (%s); reported in batchItemFailures",
        batch.source.value,
        item.identifier,
        type(error).__name__,
        extra=fields,
    )
    if log.isEnabledFor(logging.DEBUG):
        log.debug("traceback of the failed %s record", batch.source.value, exc_info=error)


def _steps(batch: _Batch) -> Generator[_Item, Exception | None, BatchResponse]:
    """Yield each record to run and receive its outcome (``None`` or the exception);
    return the partial batch response. A failed record is reported; with
    ``stop_on_failure`` (SQS FIFO) so is every later record, which is not run."""
    failed: list[Any] = []
    items = batch.items
    for index, item in enumerate(items):
        error = item.error
        if error is None:
            error = yield item
        if error is None:
            continue
        _report(batch, item, error)
        failed.append(item.identifier)
        if batch.stop_on_failure:
            failed.extend(later.identifier for later in items[index + 1 :])
            break
    return {"batchItemFailures": [{"itemIdentifier": i} for i in failed]}


# -- the lock-step path: a batch's claims, completions and releases in one request each ----
class _Skipped(BaseException):
    """Thrown into a claimed record's invocation that a FIFO stop (or an aborted batch)
    keeps from running: the protocol releases its key. A ``BaseException`` so that no
    ``store_errors`` entry can store it as the record's result."""


@dataclass(frozen=True, slots=True)
class _Raised:
    """An operation that raised: ``error`` is thrown into the record's invocation."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class _Claims:
    """Claim these keys (distinct) in one request; answered with a list in their order
    (a :class:`Claim`, or the exception that item's request raised)."""

    ops: list[ClaimOp]


@dataclass(frozen=True, slots=True)
class _Completes:
    ops: list[CompleteOp]


@dataclass(frozen=True, slots=True)
class _Releases:
    ops: list[ReleaseOp]


@dataclass(frozen=True, slots=True)
class _Turn:
    """One operation of one record, performed alone: a ``RunOp`` (``None`` for a record
    run without idempotency), a sleep, or a store operation the protocol repeated (a
    claim while waiting for an in-progress duplicate). Answered with its value or a
    :class:`_Raised`."""

    item: _Item
    op: Op | None


_Request = _Claims | _Completes | _Releases | _Turn


@dataclass(slots=True)
class _Flow:
    """One record's invocation in the lock-step path: the operation it waits on (``None``
    once it ended) and how it ended."""

    machine: Generator[Op, Any, Any]
    op: Op | None = None
    error: BaseException | None = None
    #: Past its turn (run or skipped): what it yields now are its writes, for ``_flush``.
    done: bool = False

    def feed(self, value: Any) -> None:
        """Send ``value`` (or throw a :class:`_Raised`'s error) in; note the next op or the end."""
        try:
            if isinstance(value, _Raised):
                self.op = self.machine.throw(value.error)
            else:
                self.op = self.machine.send(value)
        except StopIteration:
            self.op = None
        except BaseException as exc:  # the record's outcome: reported, never propagated
            self.op, self.error = None, exc


def _lockstep(batch: _Batch) -> Generator[_Request, Any, BatchResponse]:
    """The batch with its store operations grouped: every record's first claim in one
    request, each record run in order, then the completions and releases in one request
    each (repeated while invocations yield more, e.g. a too-large result's marker).

    A key that several records share is claimed once up front; each later record with it
    is settled alone when its turn comes, after the earlier one's completion is written,
    so it replays as it would in the per-record path. A record that raises or fails to
    claim is reported; with ``stop_on_failure`` every later record is reported and its
    claim released unrun. An :class:`AwaitableResultError` (a programming error) releases
    every claim and propagates."""
    assert batch.store is not None
    store = batch.store
    flows: dict[int, _Flow] = {}
    for index, item in enumerate(batch.items):
        if item.plan is not None and item.error is None:
            started = _Flow(invocation(item.plan, store))
            started.feed(None)
            flows[index] = started

    # 1. The first claim of each key, all in one request.
    first: dict[str, int] = {}
    for index, waiting in flows.items():
        if type(waiting.op) is ClaimOp and waiting.op.key not in first:
            first[waiting.op.key] = index
    if first:
        claims = yield _Claims([flows[i].op for i in first.values()])  # type: ignore[misc]
        for index, claim in zip(first.values(), claims, strict=True):
            flows[index].feed(claim)

    # 2. Each record in order: settle it alone if it is not at its RunOp yet, then run it.
    failed: list[Any] = []
    stopped = False
    abort: BaseException | None = None
    run_errors: dict[int, BaseException] = {}
    for index, item in enumerate(batch.items):
        flow = flows.get(index)
        if flow is None:  # no plan: run without idempotency, or refused when planned
            if item.error is not None:
                run_errors[index] = item.error
            elif not stopped:
                outcome = yield _Turn(item, None)
                if isinstance(outcome, _Raised):
                    run_errors[index] = outcome.error
            stopped = stopped or (batch.stop_on_failure and index in run_errors)
            continue
        if stopped or abort is not None:
            yield from _skip(flow)
            continue
        while flow.op is not None and type(flow.op) is not RunOp:
            if type(flow.op) is ClaimOp:  # a repeated key: write the earlier record first
                yield from _flush(flows, flow.op.key)
            flow.feed((yield _Turn(item, flow.op)))
        if flow.op is not None:
            outcome = yield _Turn(item, flow.op)
            flow.done = True
            if isinstance(outcome, _Raised):
                if isinstance(outcome.error, AwaitableResultError):
                    abort = outcome.error
                run_errors[index] = outcome.error
            flow.feed(outcome)
        error = run_errors.get(index, flow.error)
        stopped = stopped or (batch.stop_on_failure and error is not None)

    # 3. The completions and releases the invocations yielded, grouped.
    yield from _flush(flows, None)
    if abort is not None:
        raise abort

    for index, item in enumerate(batch.items):
        ended = flows.get(index)
        error = run_errors.get(index) if ended is None else ended.error
        if error is None:
            continue
        if not isinstance(error, _Skipped):
            _report(batch, item, error)
        failed.append(item.identifier)
        if batch.stop_on_failure:
            failed.extend(later.identifier for later in batch.items[index + 1 :])
            break
    return {"batchItemFailures": [{"itemIdentifier": i} for i in failed]}


def _skip(flow: _Flow) -> Generator[_Request, Any, None]:
    """End a record that must not run: a claimed one is released by its protocol (the
    release is grouped with the others); one not claimed yet is closed."""
    flow.done = True
    if flow.op is None:
        return
    if type(flow.op) is RunOp:
        flow.feed(_Raised(_Skipped()))
    else:
        flow.machine.close()
        flow.op, flow.error = None, _Skipped()
    yield from ()


def _flush(flows: Mapping[int, _Flow], key: str | None) -> Generator[_Request, Any, None]:
    """Send the completions and releases pending (of ``key`` only, unless ``None``): one
    request for the completions, one for the releases, again while any invocation yields
    another; any other operation is performed alone."""
    while True:
        waiting = [
            (i, f)
            for i, f in flows.items()
            if f.op is not None
            and type(f.op) is not RunOp
            and f.done
            and (key is None or f.op.key == key)  # type: ignore[union-attr]
        ]
        if not waiting:
            return
        seen: set[str] = set()
        completes: list[_Flow] = []
        releases: list[_Flow] = []
        others: list[_Flow] = []
        for _, f in waiting:
            op = f.op
            if type(op) is CompleteOp and op.key not in seen:
                seen.add(op.key)
                completes.append(f)
            elif type(op) is ReleaseOp and op.key not in seen:
                seen.add(op.key)
                releases.append(f)
            elif type(op) not in (CompleteOp, ReleaseOp):
                others.append(f)
        if completes:
            results = yield _Completes([f.op for f in completes])  # type: ignore[misc]
            for f, result in zip(completes, results, strict=True):
                f.feed(result)
        if releases:
            results = yield _Releases([f.op for f in releases])  # type: ignore[misc]
            for f, result in zip(releases, results, strict=True):
                f.feed(result)
        for f in others:
            f.feed((yield _Turn(_NO_ITEM, f.op)))


_NO_ITEM = _Item(None, None, None)


def _wrap(results: Sequence[Any]) -> list[Any]:
    return [_Raised(r) if isinstance(r, BaseException) else r for r in results]


def _batched(batch: _Batch) -> BatchClaims | None:
    store = batch.store
    return store if batch.batch_claims and isinstance(store, BatchClaims) else None


def _sync_requests(batch: _Batch, body: Callable[[Any], Any]) -> Callable[[_Request], Any]:
    """The I/O of :func:`_lockstep`'s requests, synchronously."""
    assert batch.store is not None
    store, many = batch.store, _batched(batch)

    def grouped(call: Callable[[Any], list[Any]], ops: list[Any]) -> list[Any]:
        try:
            return _wrap(call(ops))
        except Exception as exc:  # the request failed: every item of it did
            return [_Raised(exc)] * len(ops)

    def step(request: _Request) -> Any:
        if type(request) is _Claims:
            if many is None:
                return _wrap(claim_each(store, request.ops))
            return grouped(many.claim_many, request.ops)
        if type(request) is _Completes:
            if many is None:
                return _wrap(complete_each(store, request.ops))
            return grouped(many.complete_many, request.ops)
        if type(request) is _Releases:
            if many is None:
                return _wrap(release_each(store, request.ops))
            return grouped(many.release_many, request.ops)
        assert type(request) is _Turn
        op, item = request.op, request.item
        try:
            if op is None:
                return body(item.record)
            if type(op) is RunOp:
                call = functools.partial(body, item.record)
                return run_op(op, store, call, heartbeat=batch.heartbeat)
            if type(op) is ClaimOp:
                return store.claim(op.key, op.fingerprint, lease=op.lease, ttl=op.ttl)
            if type(op) is CompleteOp:
                return store.complete(op.key, op.fence, op.result, ttl=op.ttl)
            if type(op) is ReleaseOp:
                return store.release(op.key, op.fence)
            if type(op) is SleepOp:
                time.sleep(op.seconds)
            return None
        except Exception as exc:
            return _Raised(exc)

    return step


def _async_requests(
    batch: _Batch, handler: Callable[[Any], Awaitable[Any]]
) -> Callable[[_Request], Awaitable[Any]]:
    """The I/O of :func:`_lockstep`'s requests, on the running event loop."""
    assert batch.store is not None
    store, many = batch.store, _batched(batch)

    async def grouped(call: Callable[[Any], Awaitable[list[Any]]], ops: list[Any]) -> list[Any]:
        try:
            return _wrap(await call(ops))
        except Exception as exc:
            return [_Raised(exc)] * len(ops)

    async def step(request: _Request) -> Any:
        if type(request) is _Claims:
            if many is None:
                return _wrap(await aclaim_each(store, request.ops))
            return await grouped(many.aclaim_many, request.ops)
        if type(request) is _Completes:
            if many is None:
                return _wrap(await acomplete_each(store, request.ops))
            return await grouped(many.acomplete_many, request.ops)
        if type(request) is _Releases:
            if many is None:
                return _wrap(await arelease_each(store, request.ops))
            return await grouped(many.arelease_many, request.ops)
        assert type(request) is _Turn
        op, item = request.op, request.item
        try:
            if op is None:
                return await handler(item.record)
            if type(op) is RunOp:
                call = functools.partial(handler, item.record)
                return await arun_op(op, store, call, heartbeat=batch.heartbeat)
            if type(op) is ClaimOp:
                return await store.aclaim(op.key, op.fingerprint, lease=op.lease, ttl=op.ttl)
            if type(op) is CompleteOp:
                return await store.acomplete(op.key, op.fence, op.result, ttl=op.ttl)
            if type(op) is ReleaseOp:
                return await store.arelease(op.key, op.fence)
            if type(op) is SleepOp:
                import asyncio

                await asyncio.sleep(op.seconds)
            return None
        except Exception as exc:
            return _Raised(exc)

    return step


def process_batch(
    idem: IdempotencyBase,
    event: Any,
    record_handler: Callable[[Any], Any],
    *,
    context: Any = None,
    lease_margin: float = DEFAULT_LEASE_MARGIN,
    stop_on_failure: bool | None = None,
    batch_claims: bool = True,
    **options: Any,
) -> BatchResponse:
    """See :meth:`idempotence.Idempotency.process_batch`. ``batch_claims=False`` sends a
    claim and a completion request per record instead of one per batch."""
    if is_async_callable(record_handler):
        raise TypeError(
            "process_batch got an async record handler; use aprocess_batch (await "
            "idem.aprocess_batch(event, handler, context=context)) so each record runs"
        )
    batch = _prepare(
        idem, event, record_handler, context, lease_margin, stop_on_failure, options, batch_claims
    )

    def body(record: Any) -> Any:
        return sync_result(record_handler(record), "the record handler given to process_batch")

    if batch.store is not None and batch_claims:
        return drive(_lockstep(batch), _sync_requests(batch, body), catch=())

    def step(item: _Item) -> Exception | None:
        """Run one record; its failure is the outcome ``_steps`` receives."""
        try:
            if item.plan is None or batch.store is None:
                body(item.record)
            else:
                run(
                    item.plan,
                    batch.store,
                    functools.partial(body, item.record),
                    heartbeat=batch.heartbeat,
                )
        except AwaitableResultError:
            raise  # a programming error, not a record failure; the claim was released
        except Exception as exc:
            return exc
        return None

    return drive(_steps(batch), step)


async def aprocess_batch(
    idem: IdempotencyBase,
    event: Any,
    record_handler: Callable[[Any], Awaitable[Any]],
    *,
    context: Any = None,
    lease_margin: float = DEFAULT_LEASE_MARGIN,
    stop_on_failure: bool | None = None,
    batch_claims: bool = True,
    **options: Any,
) -> BatchResponse:
    """See :meth:`idempotence.Idempotency.aprocess_batch`."""
    batch = _prepare(
        idem, event, record_handler, context, lease_margin, stop_on_failure, options, batch_claims
    )
    if batch.store is not None and batch_claims:
        return await adrive(_lockstep(batch), _async_requests(batch, record_handler), catch=())

    async def step(item: _Item) -> Exception | None:
        try:
            if item.plan is None or batch.store is None:
                await record_handler(item.record)
            else:
                body = functools.partial(record_handler, item.record)
                await arun(item.plan, batch.store, body, heartbeat=batch.heartbeat)
        except Exception as exc:
            return exc
        return None

    return await adrive(_steps(batch), step)
