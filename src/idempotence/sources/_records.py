"""Stable identity and content of event-source records. Pure.

Each source names its own stable id for a record (see :func:`record_id`) and what a record
*says* (see :func:`record_content`): the key is derived from the first, the fingerprint
from the second. Both are **selected** from the record (an allow-list), so per-delivery
fields never enter them: SQS receipt handles, ``ApproximateReceiveCount`` and
``ApproximateFirstReceiveTimestamp``, request ids, or any field AWS adds later. A
redelivered batch with new receipt handles therefore has the same keys and fingerprints.

=================  ===================================================  ====================
source             key material (per record)                            batch item identifier
=================  ===================================================  ====================
SQS FIFO           queue ARN + ``attributes.MessageDeduplicationId``    ``messageId``
SQS standard       ``messageId``                                        ``messageId``
SNS                ``Sns.MessageId``                                    -
S3                 bucket + object key + ``sequencer``                  -
Kinesis            ``eventID``                                          ``kinesis.sequenceNumber``
DynamoDB Streams   ``eventID``                                          ``dynamodb.SequenceNumber``
EventBridge        ``id`` (one event, no records)                       -
=================  ===================================================  ====================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import InvalidKeyError, MissingKeyError
from ._detect import RECORD_SOURCES, Source

__all__ = [
    "BATCH_SOURCES",
    "event_content",
    "event_key_material",
    "is_fifo",
    "item_identifier",
    "record_content",
    "record_id",
]

#: Sources :meth:`~idempotence.Idempotency.process_batch` handles (partial batch responses).
BATCH_SOURCES = frozenset({Source.SQS, Source.KINESIS, Source.DYNAMODB_STREAMS})


def _get(record: Any, *path: str) -> Any:
    """``record[path[0]][path[1]]...``, or ``None`` where a step is missing or no mapping
    (also used on whole events by ``_http``)."""
    value = record
    for name in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


def _required(source: Source, record: Any, *path: str) -> str:
    """The non-empty string at ``path``; :class:`~idempotence.MissingKeyError` when it is
    absent, :class:`~idempotence.InvalidKeyError` when it is not a string. The messages
    name the field, never the record's content."""
    value = _get(record, *path)
    where = ".".join(path)
    if value is None or value == "":
        raise MissingKeyError(
            f"{source.value} record has no {where}; is this a {source.value} event in AWS's "
            "format? Pass key= to key it on another field"
        )
    if not isinstance(value, str):
        raise InvalidKeyError(
            f"{source.value} record's {where} is a {type(value).__name__}, not a string"
        )
    return value


def _entity(source: Source, record: Any, name: str) -> Mapping[str, Any]:
    """The record's ``name`` object (``kinesis``, ``dynamodb``, ``Sns``, ``s3``), which a
    record of that source always has."""
    value = _get(record, name)
    if value is None:
        raise MissingKeyError(
            f"{source.value} record has no {name} object; is this a {source.value} event "
            "in AWS's format?"
        )
    if not isinstance(value, Mapping):
        raise InvalidKeyError(
            f"{source.value} record's {name} is a {type(value).__name__}, not an object"
        )
    return value


def is_fifo(record: Any) -> bool:
    """Whether an SQS record comes from a FIFO queue (its ARN ends in ``.fifo``)."""
    arn = _get(record, "eventSourceARN")
    return isinstance(arn, str) and arn.endswith(".fifo")


def record_id(source: Source, record: Any) -> Any:
    """The stable key material of one record (see the module table), tagged with the source.

    Raises :class:`~idempotence.MissingKeyError` if the record lacks its id field.
    """
    if source is Source.SQS:
        if _get(record, "attributes", "MessageDeduplicationId"):
            return [
                source.value,
                _required(source, record, "eventSourceARN"),
                "dedup",
                _required(source, record, "attributes", "MessageDeduplicationId"),
            ]
        return [source.value, _required(source, record, "messageId")]
    if source is Source.SNS:
        return [source.value, _required(source, record, "Sns", "MessageId")]
    if source is Source.S3:
        return [
            source.value,
            _required(source, record, "s3", "bucket", "name"),
            _required(source, record, "s3", "object", "key"),
            _required(source, record, "s3", "object", "sequencer"),
        ]
    if source in (Source.KINESIS, Source.DYNAMODB_STREAMS):
        return [source.value, _required(source, record, "eventID")]
    if source is Source.EVENTBRIDGE:
        return [source.value, _required(source, record, "id")]
    raise ValueError(f"{source.value} events have no records with stable ids")


def record_content(source: Source, record: Any) -> Any:
    """What a record says (the fingerprint material), without per-delivery fields.

    SQS: body and message attributes; SNS: topic, subject, message and attributes; S3:
    event name and the ``s3`` entity; Kinesis: partition key, data and sequence number;
    DynamoDB Streams: event name and the ``dynamodb`` entity; EventBridge: the event.

    Raises :class:`~idempotence.MissingKeyError` / :class:`~idempotence.InvalidKeyError`
    for a record without its source's object (``Sns``, ``s3``, ``kinesis``, ``dynamodb``)
    or, for SQS, without a string ``body``.
    """
    if source is Source.SQS:
        if not isinstance(_get(record, "body"), str):
            _required(source, record, "body")  # raises: absent, or not a string
        return {
            "body": _get(record, "body"),
            "messageAttributes": _get(record, "messageAttributes") or {},
        }
    if source is Source.SNS:
        sns = _entity(source, record, "Sns")
        return {k: sns.get(k) for k in ("TopicArn", "Subject", "Message", "MessageAttributes")}
    if source is Source.S3:
        return {"eventName": _get(record, "eventName"), "s3": _entity(source, record, "s3")}
    if source is Source.KINESIS:
        kinesis = _entity(source, record, "kinesis")
        return {k: kinesis.get(k) for k in ("partitionKey", "data", "sequenceNumber")}
    if source is Source.DYNAMODB_STREAMS:
        return {
            "eventName": _get(record, "eventName"),
            "dynamodb": _entity(source, record, "dynamodb"),
        }
    return record


def item_identifier(source: Source, record: Any) -> str:
    """The ``itemIdentifier`` Lambda expects for this record in a partial batch response:
    SQS ``messageId``; Kinesis ``kinesis.sequenceNumber``; DynamoDB Streams
    ``dynamodb.SequenceNumber``."""
    if source is Source.SQS:
        return _required(source, record, "messageId")
    if source is Source.KINESIS:
        _entity(source, record, "kinesis")
        return _required(source, record, "kinesis", "sequenceNumber")
    if source is Source.DYNAMODB_STREAMS:
        _entity(source, record, "dynamodb")
        return _required(source, record, "dynamodb", "SequenceNumber")
    raise ValueError(f"{source.value} does not support partial batch responses")


def event_key_material(source: Source, event: Any) -> Any:
    """Key material of a whole event: the ordered list of its record ids for record
    sources, the event ``id`` for EventBridge, the whole event otherwise."""
    if source in RECORD_SOURCES:
        return [record_id(source, r) for r in event["Records"]]
    if source is Source.EVENTBRIDGE:
        return record_id(source, event)
    return event


def event_content(source: Source, event: Any) -> Any:
    """Fingerprint material of a whole event: the content of each record in order for
    record sources, the event itself otherwise."""
    if source in RECORD_SOURCES:
        return [record_content(source, r) for r in event["Records"]]
    return event
