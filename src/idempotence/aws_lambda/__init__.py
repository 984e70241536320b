"""AWS Lambda: idempotent handlers keyed by their event source, and batch processing.

- :meth:`Idempotency.handler <idempotence.Idempotency.handler>` /
  :func:`~idempotence.idempotent_handler`: decorate ``handler(event, context)``.
- :meth:`Idempotency.process_batch <idempotence.Idempotency.process_batch>` /
  ``aprocess_batch``: one idempotent execution per SQS, Kinesis or DynamoDB Streams record,
  with a partial batch response.
- :func:`detect`, :class:`Source`, :func:`record_id`, :func:`record_content`,
  :func:`item_identifier`: the pure building blocks (event source detection, stable ids).

See ``docs/lambda.md``.
"""

from __future__ import annotations

from ._batch import BatchResponse
from ._detect import HTTP_SOURCES, RECORD_SOURCES, Source, detect
from ._records import BATCH_SOURCES, item_identifier, record_content, record_id

__all__ = [
    "BATCH_SOURCES",
    "HTTP_SOURCES",
    "RECORD_SOURCES",
    "BatchResponse",
    "Source",
    "detect",
    "item_identifier",
    "record_content",
    "record_id",
]
