# ruff: noqa: E501, B018  (the samples keep the page's long lines and its last expression)
"""The samples of docs/effects.md. The page includes this file's sections, so they run here
as written: state guards and row transitions on the test PostgreSQL server and SQLite, the
transaction on SQLite, DynamoDB on the moto server."""

from __future__ import annotations

import contextlib
import enum
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from idempotence import Idempotency
from idempotence.effects import StateConflictError
from idempotence.stores import MemoryStore
from tests import moto_server
from tests.conftest import POSTGRES_URL, postgres_admin_or_unavailable

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture


class OrderState(enum.Enum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"


def test_state_guard() -> None:
    pytest.importorskip("psycopg")
    postgres_admin_or_unavailable(POSTGRES_URL).close()
    from idempotence.stores import PostgresStore

    store = PostgresStore(POSTGRES_URL)  # the test server's database
    order_id = f"o-{uuid.uuid4()}"
    processed: list[str] = []

    def process(order_id: str) -> None:
        processed.append(order_id)

    try:
        # fmt: off
        # --8<-- [start:state-guard]
        from idempotence.effects import StateGuard

        orders = StateGuard(store, states=OrderState)              # a Store object or a URL
        orders.set(order_id, OrderState.PENDING)                  # initial state (unconditional)
        if orders.transition(order_id, OrderState.PENDING, OrderState.PROCESSING):
            process(order_id)                                      # only the first delivery gets here

        with orders.guard(order_id, OrderState.PENDING, OrderState.PROCESSING):
            process(order_id)   # raises StateConflictError on entry for a duplicate; if process()
                                # raises, the state goes back to PENDING, only if still PROCESSING
        # --8<-- [end:state-guard]
        # fmt: on
    except StateConflictError:
        pass  # the guard after the transition: this order already moved
    else:
        raise AssertionError("the second delivery ran")
    assert processed == [order_id]
    assert orders.get(order_id) is OrderState.PROCESSING
    orders.delete(order_id)
    store.close()


def test_row_transitions(dynamodb_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    boto3 = pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint)
    order_id = str(uuid.uuid4())
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE orders (id text PRIMARY KEY, status text)")
    conn.execute("INSERT INTO orders VALUES (?, 'PENDING')", (order_id,))
    client = boto3.client("dynamodb")
    with contextlib.suppress(client.exceptions.ResourceInUseException):  # made before
        client.create_table(
            TableName="orders",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        )
    client.put_item(TableName="orders", Item={"id": {"S": order_id}, "status": {"S": "PENDING"}})
    moves = []
    for _ in range(2):  # a duplicate finds the row moved
        # fmt: off
        # --8<-- [start:transitions]
        from idempotence.effects import dynamodb_transition, sql_transition

        # sqlite3 or psycopg connection; identifiers are quoted, values are parameters.
        moved = sql_transition(conn, "orders", "id", order_id, "status", "PENDING", "PROCESSING")
        # boto3 client; UpdateItem with ConditionExpression "#status = :expected".
        moved = dynamodb_transition(client, "orders", {"id": order_id}, "status", "PENDING", "PROCESSING")
        # --8<-- [end:transitions]
        # fmt: on
        moves.append(moved)
        row = conn.execute("SELECT status FROM orders WHERE id = ?", (order_id,)).fetchone()
        assert row == ("PROCESSING",)
    assert moves == [True, False]
    item = client.get_item(TableName="orders", Key={"id": {"S": order_id}})["Item"]
    assert item["status"] == {"S": "PROCESSING"}


def create_order(conn: sqlite3.Connection, order_id: str, order: dict[str, Any]) -> Any:
    from idempotence.effects import TransactionalIdempotency

    # fmt: off
    # --8<-- [start:transaction]
    txi = TransactionalIdempotency()          # table="idempotency"
    with txi.transaction(conn, f"orders.create#{order_id}", payload=order) as tx:
        if tx.replayed:                        # completed before: write nothing
            return tx.result
        conn.execute("INSERT INTO orders (id, item) VALUES (?, ?)", (order_id, order["item"]))
        tx.set_result({"order_id": order_id})  # committed with the insert
    # --8<-- [end:transaction]
    # fmt: on
    return tx.result


def test_transaction(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    conn.execute("CREATE TABLE orders (id text PRIMARY KEY, item text)")
    order = {"item": "book"}
    assert create_order(conn, "o-1", order) == {"order_id": "o-1"}
    assert create_order(conn, "o-1", order) == {"order_id": "o-1"}  # replayed: no insert
    assert conn.execute("SELECT id, item FROM orders").fetchall() == [("o-1", "book")]


def test_dynamodb_transaction(dynamodb_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    boto3 = pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint)
    from idempotence.stores import DynamoDBStore

    store = DynamoDBStore("idempotency")
    store.create_table()
    client = boto3.client("dynamodb")
    for table in ("orders", "payments"):
        with contextlib.suppress(client.exceptions.ResourceInUseException):  # made before
            client.create_table(
                TableName=table,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            )
    message_id, order_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"order_id": order_id, "amount_cents": 500}
    client.put_item(TableName="orders", Item={"id": {"S": order_id}, "status": {"S": "PENDING"}})
    outcomes = []
    for _ in range(2):  # the message delivered twice
        # fmt: off
        # --8<-- [start:dynamodb-transaction]
        from idempotence.effects import dynamodb_transaction, dynamodb_transition_update

        outcome = dynamodb_transaction(
            store,                                   # a DynamoDBStore: its table keeps the record
            key=f"payments.record#{message_id}",
            writes=[
                {"Put": {"TableName": "payments", "Item": {"id": {"S": message_id}, "cents": {"N": "500"}}}},
                dynamodb_transition_update("orders", {"id": order_id}, "status", "PENDING", "PAID"),
            ],
            result={"order_id": order_id},
            payload=body,
        )
        outcome.replayed, outcome.result
        # --8<-- [end:dynamodb-transaction]
        # fmt: on
        outcomes.append((outcome.replayed, outcome.result))
    assert outcomes == [(False, {"order_id": order_id}), (True, {"order_id": order_id})]
    item = client.get_item(TableName="orders", Key={"id": {"S": order_id}})["Item"]
    assert item["status"] == {"S": "PAID"}
    assert "Item" in client.get_item(TableName="payments", Key={"id": {"S": message_id}})
    store.close()


class FakeStripe:
    """The part of Stripe's client the sample calls: records the idempotency keys sent."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.PaymentIntent = self

    def create(self, *args: Any, idempotency_key: str) -> dict[str, str]:
        self.keys.append(idempotency_key)
        return {"id": f"pi_{len(self.keys)}"}


def test_child_key() -> None:
    stripe = FakeStripe()
    idem = Idempotency(MemoryStore())
    # fmt: off
    # --8<-- [start:child-key]
    from idempotence import current_key
    from idempotence.effects import child_key


    @idem(key="order_id")
    def charge(order: dict) -> dict:
        # current_key() is this invocation's idempotency key (set while any idempotent body
        # runs: decorators, Lambda handlers and batch records, HTTP middleware, transactions)
        return stripe.PaymentIntent.create(
            ..., idempotency_key=child_key(current_key(), "stripe-charge")
        )
    # --8<-- [end:child-key]
    # fmt: on
    assert charge({"order_id": 1}) == charge({"order_id": 1}) == {"id": "pi_1"}
    charge({"order_id": 2})
    first, second = stripe.keys
    assert first != second
    assert first.startswith("stripe-charge-")
    assert len(first) <= 129
    # the same parent key gives the same child key in another process or after a crash
    assert child_key(f"{charge.__module__}", "x") == child_key(f"{charge.__module__}", "x")
