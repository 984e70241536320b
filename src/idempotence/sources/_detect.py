"""Which AWS service sent a Lambda event. Pure: looks at the event's shape only.

Detection follows the documented event formats:

- API Gateway REST API (and HTTP API with payload format 1.0): ``httpMethod`` +
  ``requestContext`` (no ``elb``);
- API Gateway HTTP API (payload format 2.0): ``version == "2.0"`` + ``requestContext.http``;
- Lambda function URL: as HTTP API 2.0, with ``requestContext.domainName`` under
  ``.lambda-url.``;
- Application Load Balancer: ``requestContext.elb``;
- SQS, SNS, S3, Kinesis, DynamoDB Streams: ``Records[0].eventSource`` (``EventSource`` for
  SNS) is ``aws:sqs``, ``aws:sns``, ``aws:s3``, ``aws:kinesis``, ``aws:dynamodb``;
- EventBridge (and CloudWatch Events): ``detail-type`` + ``source`` + ``id``;
- anything else is :attr:`Source.UNKNOWN`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

__all__ = ["HTTP_SOURCES", "RECORD_SOURCES", "Source", "detect"]


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
    UNKNOWN = "unknown"


#: Sources whose events are HTTP requests (answered with proxy responses).
HTTP_SOURCES = frozenset(
    {Source.API_GATEWAY_REST, Source.API_GATEWAY_HTTP, Source.ALB, Source.FUNCTION_URL}
)
#: Sources whose events carry a ``Records`` list.
RECORD_SOURCES = frozenset(
    {Source.SQS, Source.SNS, Source.S3, Source.KINESIS, Source.DYNAMODB_STREAMS}
)

_RECORD_SOURCE_NAMES = {
    "aws:sqs": Source.SQS,
    "aws:sns": Source.SNS,
    "aws:s3": Source.S3,
    "aws:kinesis": Source.KINESIS,
    "aws:dynamodb": Source.DYNAMODB_STREAMS,
}


def detect(event: Any) -> Source:
    """The source of ``event`` (a decoded Lambda event); :attr:`Source.UNKNOWN` when it
    matches no documented format."""
    if not isinstance(event, Mapping):
        return Source.UNKNOWN
    records = event.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], Mapping):
        first = records[0]
        name = first.get("eventSource", first.get("EventSource"))
        if not isinstance(name, str):
            return Source.UNKNOWN
        return _RECORD_SOURCE_NAMES.get(name, Source.UNKNOWN)
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
