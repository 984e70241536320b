"""The Lambda event sources: one table says how each is detected, what identifies its
records, what they say, and how a partial batch response names them. Pure: looks at the
event's shape only.

The key of a record is derived from its **stable id**, the fingerprint from its
**content**. Both are *selected* from the record (an allow-list), so per-delivery fields
never enter them: SQS receipt handles, ``ApproximateReceiveCount`` and
``ApproximateFirstReceiveTimestamp``, request ids, or any field AWS adds later. A
redelivered batch with new receipt handles therefore has the same keys and fingerprints.

Per source (the rows of :data:`SOURCES`): *detected by*; *stable id* -> key; *content* ->
fingerprint; *item identifier* of a partial batch response; *FIFO* (stop at the first
failure):

- SQS: ``Records[0].eventSource`` ``aws:sqs``; FIFO queue: queue ARN +
  ``attributes.MessageDeduplicationId``, standard queue: ``messageId``; ``body`` +
  ``messageAttributes``; ``messageId``; FIFO when the queue ARN ends in ``.fifo``.
- SNS: ``EventSource`` ``aws:sns``; ``Sns.MessageId``; ``Sns`` topic, subject, message and
  attributes; no batch mode.
- S3: ``aws:s3``; bucket + object key + ``sequencer``; ``eventName`` + ``s3``; no batch mode.
- Kinesis: ``aws:kinesis``; ``eventID``; ``kinesis`` partition key, data and sequence
  number; ``kinesis.sequenceNumber``.
- DynamoDB Streams: ``aws:dynamodb``; ``eventID``; ``eventName`` + ``dynamodb``;
  ``dynamodb.SequenceNumber``.
- Amazon MSK (``eventSource`` ``aws:kafka``) and self-managed Kafka (``SelfManagedKafka``),
  records grouped by topic-partition under ``records``: topic + partition + offset;
  ``key``, ``value`` (both base64, as delivered) and ``headers``;
  ``{"partition": "<topic>-<partition>", "offset": <offset>}`` (Lambda resumes each
  reported topic-partition from that offset).
- EventBridge: ``detail-type`` + ``source`` + ``id`` (one event, no records); ``id``; the
  event; no batch mode.

Fields kept out of the content: SQS ``receiptHandle``, ``attributes`` (receive counts and
timestamps) and ``md5OfBody``; Kinesis ``approximateArrivalTimestamp`` and the record's
``eventID``/ARN fields; Kafka ``timestamp``/``timestampType`` and the event's
``bootstrapServers``/``eventSourceArn``; for every source, the fields of the id (already in
the key). HTTP events (API Gateway REST and HTTP APIs, ALB, function URLs) are detected
here and converted by ``_http``.

One file (over 400 lines): it is the table of event sources and the small per-source
extractors its rows name; split, every row would import its functions from another private
module.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import InvalidKeyError, MissingKeyError

__all__ = [
    "BATCH_SOURCES",
    "HTTP_SOURCES",
    "RECORD_SOURCES",
    "SOURCES",
    "EventSource",
    "Source",
    "detect",
    "event_content",
    "event_key_material",
    "item_identifier",
    "record_content",
    "record_id",
    "records_of",
]


class Source(str, enum.Enum):
    """An event source, as detected by :func:`detect`."""

    API_GATEWAY_REST = "apigateway-rest"
    API_GATEWAY_HTTP = "apigateway-http"
    ALB = "alb"
    FUNCTION_URL = "function-url"
    SQS = "sqs"
    SNS = "sns"
    EVENTBRIDGE = "eventbridge"
    S3 = "s3"
    KINESIS = "kinesis"
    DYNAMODB_STREAMS = "dynamodb-streams"
    MSK = "msk"
    SELF_MANAGED_KAFKA = "self-managed-kafka"
    UNKNOWN = "unknown"


def _get(record: Any, *path: str) -> Any:
    """``record[path[0]][path[1]]...``, or ``None`` where a step is missing or no mapping
    (also used on whole events by ``_http``)."""
    value = record
    for name in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


def _required(source: Source, record: Any, *path: str, kind: type = str) -> Any:
    """The non-empty value of type ``kind`` at ``path``;
    :class:`~idempotence.MissingKeyError` when it is absent,
    :class:`~idempotence.InvalidKeyError` when it has another type. The messages name the
    field, never the record's content."""
    value = _get(record, *path)
    where = ".".join(path)
    if value is None or value == "":
        raise MissingKeyError(
            f"{source.value} record has no {where}; is this a {source.value} event in AWS's "
            "format? Pass key= to key it on another field"
        )
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidKeyError(
            f"{source.value} record's {where} is a {type(value).__name__}, not "
            f"{'a string' if kind is str else 'an integer'}"
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


# -- the table's cells ----------------------------------------------------------------------
def _sqs_id(s: Source, r: Any) -> list[Any]:
    if _get(r, "attributes", "MessageDeduplicationId"):  # FIFO: the producer's dedup id
        arn = _required(s, r, "eventSourceARN")
        return [arn, "dedup", _required(s, r, "attributes", "MessageDeduplicationId")]
    return [_required(s, r, "messageId")]


def _sqs_content(s: Source, r: Any) -> Any:
    if not isinstance(_get(r, "body"), str):
        _required(s, r, "body")  # raises: absent, or not a string
    return {"body": _get(r, "body"), "messageAttributes": _get(r, "messageAttributes") or {}}


def _sqs_fifo(records: Sequence[Any]) -> bool:
    """An SQS batch from a FIFO queue (its ARN ends in ``.fifo``)."""
    arn = _get(records[0], "eventSourceARN") if records else None
    return isinstance(arn, str) and arn.endswith(".fifo")


def _entity_fields(name: str, *fields: str) -> Callable[[Source, Any], Any]:
    """Content: the named fields of the record's ``name`` object."""

    def content(s: Source, r: Any) -> Any:
        entity = _entity(s, r, name)
        return {k: entity.get(k) for k in fields}

    return content


def _event_name_and(name: str) -> Callable[[Source, Any], Any]:
    """Content: ``eventName`` and the record's whole ``name`` object."""
    return lambda s, r: {"eventName": _get(r, "eventName"), name: _entity(s, r, name)}


def _fields(*paths: tuple[str, ...]) -> Callable[[Source, Any], list[Any]]:
    """Stable id: the required string fields at ``paths``."""
    return lambda s, r: [_required(s, r, *path) for path in paths]


def _in_entity(name: str, *path: str) -> Callable[[Source, Any], Any]:
    """Item identifier: the required string at ``name.path`` (the object checked first)."""

    def identifier(s: Source, r: Any) -> Any:
        _entity(s, r, name)
        return _required(s, r, name, *path)

    return identifier


def _kafka_id(s: Source, r: Any) -> list[Any]:
    return [
        _required(s, r, "topic"),
        _required(s, r, "partition", kind=int),
        _required(s, r, "offset", kind=int),
    ]


def _kafka_content(s: Source, r: Any) -> Any:
    return {k: _get(r, k) for k in ("key", "value", "headers")}


def _kafka_item(s: Source, r: Any) -> Any:
    """Lambda resumes each reported topic-partition from the reported offset."""
    topic, partition, offset = _kafka_id(s, r)
    return {"partition": f"{topic}-{partition}", "offset": offset}


def _records_list(event: Mapping[str, Any]) -> list[Any]:
    records = event.get("Records")
    return records if isinstance(records, list) else []


def _kafka_records(event: Mapping[str, Any]) -> list[Any]:
    """Kafka events group records by ``"<topic>-<partition>"``: in the event's order."""
    groups = event.get("records")
    if not isinstance(groups, Mapping):
        return []
    return [r for group in groups.values() if isinstance(group, list) for r in group]


@dataclass(frozen=True, slots=True)
class EventSource:
    """One row of :data:`SOURCES`: everything the adapter knows about an event source.

    ``names``: the ``eventSource`` values that name it (records sources);
    ``records(event)``: its records, in order (``None``: the event itself is the item);
    ``record_id(source, record)`` / ``content(source, record)``: the stable id and the
    fingerprint content of one record (raising :class:`~idempotence.MissingKeyError` /
    :class:`~idempotence.InvalidKeyError` for a malformed record, never quoting it);
    ``item_identifier(source, record)``: what a partial batch response reports (``None``:
    no batch mode); ``fifo(records)``: whether a batch must stop at its first failure.
    """

    source: Source
    names: tuple[str, ...]
    records: Callable[[Mapping[str, Any]], list[Any]] | None
    record_id: Callable[[Source, Any], list[Any]]
    content: Callable[[Source, Any], Any]
    item_identifier: Callable[[Source, Any], Any] | None = None
    fifo: Callable[[Sequence[Any]], bool] | None = None


_KAFKA = {
    "records": _kafka_records,
    "record_id": _kafka_id,
    "content": _kafka_content,
    "item_identifier": _kafka_item,
}

#: The event sources with records (or, for EventBridge, one identified event).
SOURCES: Mapping[Source, EventSource] = {
    row.source: row
    for row in (
        EventSource(
            Source.SQS,
            ("aws:sqs",),
            _records_list,
            _sqs_id,
            _sqs_content,
            lambda s, r: _required(s, r, "messageId"),
            _sqs_fifo,
        ),
        EventSource(
            Source.SNS,
            ("aws:sns",),
            _records_list,
            _fields(("Sns", "MessageId")),
            _entity_fields("Sns", "TopicArn", "Subject", "Message", "MessageAttributes"),
        ),
        EventSource(
            Source.S3,
            ("aws:s3",),
            _records_list,
            _fields(
                ("s3", "bucket", "name"), ("s3", "object", "key"), ("s3", "object", "sequencer")
            ),
            _event_name_and("s3"),
        ),
        EventSource(
            Source.KINESIS,
            ("aws:kinesis",),
            _records_list,
            _fields(("eventID",)),
            _entity_fields("kinesis", "partitionKey", "data", "sequenceNumber"),
            _in_entity("kinesis", "sequenceNumber"),
        ),
        EventSource(
            Source.DYNAMODB_STREAMS,
            ("aws:dynamodb",),
            _records_list,
            _fields(("eventID",)),
            _event_name_and("dynamodb"),
            _in_entity("dynamodb", "SequenceNumber"),
        ),
        EventSource(Source.MSK, ("aws:kafka",), **_KAFKA),  # type: ignore[arg-type]
        EventSource(
            Source.SELF_MANAGED_KAFKA,
            ("SelfManagedKafka", "aws:SelfManagedKafka"),
            **_KAFKA,  # type: ignore[arg-type]
        ),
        EventSource(Source.EVENTBRIDGE, (), None, _fields(("id",)), lambda s, event: event),
    )
}

#: Sources whose events are HTTP requests (answered with proxy responses).
HTTP_SOURCES = frozenset(
    {Source.API_GATEWAY_REST, Source.API_GATEWAY_HTTP, Source.ALB, Source.FUNCTION_URL}
)
#: Sources whose events carry a batch of records.
RECORD_SOURCES = frozenset(s for s, row in SOURCES.items() if row.records is not None)
#: Sources :meth:`~idempotence.Idempotency.process_batch` handles (partial batch responses).
BATCH_SOURCES = frozenset(s for s, row in SOURCES.items() if row.item_identifier is not None)

_BY_RECORD_NAME = {
    name: s for s, row in SOURCES.items() if row.records is _records_list for name in row.names
}
_BY_EVENT_NAME = {
    name: s for s, row in SOURCES.items() if row.records is _kafka_records for name in row.names
}


def detect(event: Any) -> Source:
    """The source of ``event`` (a decoded Lambda event); :attr:`Source.UNKNOWN` when it
    matches no documented format (see the module table)."""
    if not isinstance(event, Mapping):
        return Source.UNKNOWN
    records = event.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], Mapping):
        first = records[0]
        name = first.get("eventSource", first.get("EventSource"))
        return (
            _BY_RECORD_NAME.get(name, Source.UNKNOWN) if isinstance(name, str) else Source.UNKNOWN
        )
    name = event.get("eventSource")
    if isinstance(name, str) and isinstance(event.get("records"), Mapping):
        return _BY_EVENT_NAME.get(name, Source.UNKNOWN)
    context = event.get("requestContext")
    if isinstance(context, Mapping):
        if isinstance(context.get("elb"), Mapping):
            return Source.ALB
        if event.get("version") == "2.0" and isinstance(context.get("http"), Mapping):
            domain = context.get("domainName")
            if isinstance(domain, str) and ".lambda-url." in domain:
                return Source.FUNCTION_URL
            return Source.API_GATEWAY_HTTP
        if isinstance(event.get("httpMethod"), str):
            return Source.API_GATEWAY_REST
    if "detail-type" in event and "source" in event and isinstance(event.get("id"), str):
        return Source.EVENTBRIDGE
    return Source.UNKNOWN


def _row(source: Source) -> EventSource:
    row = SOURCES.get(source)
    if row is None:
        raise ValueError(f"{source.value} events have no records with stable ids")
    return row


def records_of(source: Source, event: Any) -> list[Any]:
    """The records of a batch ``event`` of ``source``, in order (Kafka: every
    topic-partition's records, in the event's order)."""
    row = _row(source)
    return row.records(event) if row.records is not None else [event]


def record_id(source: Source, record: Any) -> Any:
    """The stable key material of one record (see the module table), tagged with the source.

    Raises :class:`~idempotence.MissingKeyError` if the record lacks its id field.
    """
    return [source.value, *_row(source).record_id(source, record)]


def record_content(source: Source, record: Any) -> Any:
    """What a record says (the fingerprint material), without per-delivery fields (see the
    module table).

    Raises :class:`~idempotence.MissingKeyError` / :class:`~idempotence.InvalidKeyError`
    for a record without its source's object (``Sns``, ``s3``, ``kinesis``, ``dynamodb``)
    or, for SQS, without a string ``body``.
    """
    row = SOURCES.get(source)
    return record if row is None else row.content(source, record)


def item_identifier(source: Source, record: Any) -> Any:
    """The ``itemIdentifier`` Lambda expects for this record in a partial batch response:
    SQS ``messageId``; Kinesis ``kinesis.sequenceNumber``; DynamoDB Streams
    ``dynamodb.SequenceNumber``; Kafka ``{"partition": "<topic>-<partition>", "offset":
    <offset>}``."""
    row = SOURCES.get(source)
    if row is None or row.item_identifier is None:
        raise ValueError(f"{source.value} does not support partial batch responses")
    return row.item_identifier(source, record)


def is_fifo(source: Source, records: Sequence[Any]) -> bool:
    """Whether a batch of ``source`` must stop at its first failure (an SQS FIFO queue)."""
    fifo = _row(source).fifo
    return fifo is not None and fifo(records)


def event_key_material(source: Source, event: Any) -> Any:
    """Key material of a whole event: the ordered list of its record ids for record
    sources, the event ``id`` for EventBridge, the whole event otherwise."""
    if source in RECORD_SOURCES:
        return [record_id(source, r) for r in records_of(source, event)]
    if source in SOURCES:
        return record_id(source, event)
    return event


def event_content(source: Source, event: Any) -> Any:
    """Fingerprint material of a whole event: the content of each record in order for
    record sources, the event itself otherwise."""
    if source in RECORD_SOURCES:
        return [record_content(source, r) for r in records_of(source, event)]
    return event
