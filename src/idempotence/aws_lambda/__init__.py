"""AWS Lambda: idempotent handlers keyed by their event source, and batch processing.

- :meth:`Idempotency.handler <idempotence.Idempotency.handler>` /
  :func:`~idempotence.idempotent_handler`: decorate ``handler(event, context)``.
- :meth:`Idempotency.process_batch <idempotence.Idempotency.process_batch>` /
  ``aprocess_batch``: one idempotent execution per SQS, Kinesis, DynamoDB Streams or Kafka
  (Amazon MSK, self-managed) record, with a partial batch response.
- :data:`SOURCES` (one :class:`EventSource` per source), :func:`detect`, :class:`Source`,
  :func:`record_id`, :func:`record_content`, :func:`item_identifier`, :func:`records_of`:
  the pure building blocks (event source detection, stable ids).

This adapter is built on :mod:`idempotence.engine` and :mod:`idempotence.http`; the
:class:`~idempotence.Idempotency` facade imports it on first use. See ``docs/lambda.md``.
"""

from __future__ import annotations

from ._batch import BatchResponse, aprocess_batch, process_batch
from ._handler import decorate_handler
from ._sources import (
    BATCH_SOURCES,
    HTTP_SOURCES,
    RECORD_SOURCES,
    SOURCES,
    EventSource,
    Source,
    detect,
    item_identifier,
    record_content,
    record_id,
    records_of,
)

__all__ = [
    "BATCH_SOURCES",
    "HTTP_SOURCES",
    "RECORD_SOURCES",
    "SOURCES",
    "BatchResponse",
    "EventSource",
    "Source",
    "aprocess_batch",
    "decorate_handler",
    "detect",
    "item_identifier",
    "process_batch",
    "record_content",
    "record_id",
    "records_of",
]
