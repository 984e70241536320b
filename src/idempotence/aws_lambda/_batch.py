"""Batch processing: each record of an SQS, Kinesis, DynamoDB Streams or Kafka (Amazon MSK,
self-managed) batch idempotent on its own id, with a partial batch response.

The decisions (which records failed, where a FIFO batch stops, what is reported) live in
one generator, :func:`_steps`, which yields the records to run and receives each outcome;
:func:`process_batch` and :func:`aprocess_batch` only drive it (with
:func:`~idempotence.engine.drive` / :func:`~idempotence.engine.adrive`), running each
record through the engine with :func:`~idempotence.engine.run` or ``arun``.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine import IdempotencyBase, Operation, Plan, adrive, arun, drive, is_disabled, run
from ..stores import Store
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


def _prepare(
    idem: IdempotencyBase,
    event: Any,
    record_handler: Callable[..., Any],
    context: Any,
    lease_margin: float,
    stop_on_failure: bool | None,
    options: dict[str, Any],
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
    return _Batch(store, items, stop_on_failure, config.heartbeat, source)


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
        log.warning(
            "%s record %s failed; reported in batchItemFailures",
            batch.source.value,
            item.identifier,
            exc_info=error,
        )
        failed.append(item.identifier)
        if batch.stop_on_failure:
            failed.extend(later.identifier for later in items[index + 1 :])
            break
    return {"batchItemFailures": [{"itemIdentifier": i} for i in failed]}


def process_batch(
    idem: IdempotencyBase,
    event: Any,
    record_handler: Callable[[Any], Any],
    *,
    context: Any = None,
    lease_margin: float = DEFAULT_LEASE_MARGIN,
    stop_on_failure: bool | None = None,
    **options: Any,
) -> BatchResponse:
    """See :meth:`idempotence.Idempotency.process_batch`."""
    if is_async_callable(record_handler):
        raise TypeError(
            "process_batch got an async record handler; use aprocess_batch (await "
            "idem.aprocess_batch(event, handler, context=context)) so each record runs"
        )
    batch = _prepare(idem, event, record_handler, context, lease_margin, stop_on_failure, options)

    def body(record: Any) -> Any:
        return sync_result(record_handler(record), "the record handler given to process_batch")

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
    **options: Any,
) -> BatchResponse:
    """See :meth:`idempotence.Idempotency.aprocess_batch`."""
    batch = _prepare(idem, event, record_handler, context, lease_margin, stop_on_failure, options)

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
