"""The code docs/migrating-from-powertools.md includes: the changed import, run."""

from __future__ import annotations

import os
from typing import Any

import pytest

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.usefixtures("function_name"),
]


def test_the_import_change(
    monkeypatch: pytest.MonkeyPatch, dynamodb_endpoint: str, pt_table: str
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint)
    monkeypatch.setenv("IDEMPOTENCY_TABLE", pt_table)
    # --8<-- [start:import]
    # from aws_lambda_powertools.utilities.idempotency import (
    from idempotence.compat.powertools import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent,
    )

    persistence_layer = DynamoDBPersistenceLayer(table_name=os.environ["IDEMPOTENCY_TABLE"])
    config = IdempotencyConfig(event_key_jmespath="powertools_json(body).order_id")

    @idempotent(persistence_store=persistence_layer, config=config)
    def handler(event: dict, context: Any) -> dict:
        return {"statusCode": 201, "body": "created"}

    # --8<-- [end:import]
    event = {"body": '{"order_id": "o-1"}'}
    assert handler(event, None) == handler(event, None) == {"statusCode": 201, "body": "created"}


def test_every_test_the_page_cites_exists() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    page = (root / "docs" / "migrating-from-powertools.md").read_text()
    cited = set(re.findall(r"`((?:test_|Test)\w+)`", page))
    cited |= set(re.findall(r"::((?:test_|Test)\w+)`", page))
    files = [*(root / "tests").rglob("test_*.py"), root / "src" / "idempotence" / "testing.py"]
    sources = "\n".join(p.read_text() for p in files)  # the store contract lives in testing
    missing = sorted(n for n in cited if not re.search(rf"(def|class) {n}\b", sources))
    assert len(cited) > 30
    assert missing == []
