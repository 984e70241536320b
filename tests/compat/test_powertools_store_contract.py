"""The Powertools-layout stores pass the store conformance suite (sync and async), on moto
DynamoDB (simple and composite keys) and Redis."""

from __future__ import annotations

from typing import Any

import pytest

from idempotence.compat import powertools as ours
from idempotence.compat.powertools import DynamoDBPersistenceLayer
from idempotence.testing import ManualClock, StoreContract


class TestDynamoDBLayerContract(StoreContract):
    test_concurrent_claims_processes = None  # the layer has no URL; threads cover it

    @pytest.fixture
    def store(self, clock: ManualClock, ddb: Any, pt_table: str) -> DynamoDBPersistenceLayer:
        layer = DynamoDBPersistenceLayer(pt_table, boto3_client=ddb, clock=clock)
        layer.payload_validation_enabled = True  # fingerprints are kept (validation hash)
        return layer


class TestDynamoDBLayerCompositeContract(StoreContract):
    test_concurrent_claims_processes = None

    @pytest.fixture
    def store(
        self, clock: ManualClock, ddb: Any, pt_composite_table: str
    ) -> DynamoDBPersistenceLayer:
        layer = DynamoDBPersistenceLayer(
            pt_composite_table, key_attr="pk", sort_key_attr="sk", boto3_client=ddb, clock=clock
        )
        layer.payload_validation_enabled = True
        return layer


class TestRedisLayerContract(StoreContract):
    test_concurrent_claims_processes = None

    @pytest.fixture
    def store(self, clock: ManualClock, redis_client: Any) -> Any:
        layer = ours.CachePersistenceLayer(client=redis_client, clock=clock)
        layer.payload_validation_enabled = True
        return layer
