"""FastAPI: an idempotent ``POST /orders`` behind ``IdempotencyMiddleware``.

Run locally:   uvicorn app:app          (from this directory)
On AWS Lambda: handler = app.handler    (API Gateway REST or HTTP API, through Mangum)

The store comes from ``IDEMPOTENCE_STORE`` (e.g. ``dynamodb://idempotency`` on Lambda,
``redis://...``), else a SQLite file.
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from mangum import Mangum
from pydantic import BaseModel

from idempotence import Idempotency
from idempotence.http import IdempotencyMiddleware


class OrderIn(BaseModel):
    item: str
    quantity: int = 1


class Order(OrderIn):
    id: str


def create_app(idempotency: Idempotency | None = None) -> FastAPI:
    app = FastAPI()
    app.state.orders = {}
    app.add_middleware(
        IdempotencyMiddleware,
        idempotency=idempotency or Idempotency(ttl=24 * 3600),
        required=True,  # POST/PATCH without Idempotency-Key -> 400
    )

    @app.post("/orders", status_code=201)
    async def create_order(order: OrderIn) -> Order:
        created = Order(id=str(uuid.uuid4()), **order.model_dump())
        app.state.orders[created.id] = created  # the side effect that must happen once
        return created

    @app.get("/orders/{order_id}")
    async def get_order(order_id: str) -> Order:
        return app.state.orders[order_id]  # type: ignore[no-any-return]

    return app


def create_handler(app: FastAPI) -> Mangum:
    """The AWS Lambda handler (API Gateway REST/HTTP API, ALB). Problem responses
    (``application/problem+json``) are text, not base64."""
    text = ["text/", "application/json", "application/problem+json", "application/xml"]
    return Mangum(app, lifespan="off", text_mime_types=text)


app = create_app()
handler = create_handler(app)
