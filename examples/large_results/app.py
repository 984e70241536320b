"""Large results: compressed above 8 KiB, offloaded to S3 when DynamoDB cannot keep them.

The bucket's lifecycle rule (lifecycle.json, template.yaml) deletes objects whose record
expired without ``forget``. Run by tests/stores/test_offload.py against moto.
"""

from __future__ import annotations

import os
import uuid

from idempotence import Idempotency
from idempotence.stores import DynamoDBStore, LargeResultStore

store = LargeResultStore(
    DynamoDBStore(os.environ.get("IDEMPOTENCY_TABLE", "idempotency")),
    os.environ.get("IDEMPOTENCY_OFFLOAD", "s3://my-idempotency-results/results/"),
    compress_over=8 * 1024,  # zlib above 8 KiB (the default)
    max_offload_bytes=100 * 1024 * 1024,  # larger results are not stored (the default)
)
idem = Idempotency(store, ttl=24 * 3600)


@idem(key="request_id")
def build_report(request_id: str, rows: int) -> list[dict[str, object]]:
    return [{"row": n, "id": uuid.uuid4().hex} for n in range(rows)]


# The same store from a URL (e.g. in IDEMPOTENCE_STORE):
#   dynamodb://idempotency?offload=s3://my-idempotency-results/results/&compress_over=8192
