"""FastAPI with the idempotency middleware described in its OpenAPI schema.

``idempotency_openapi(app)`` documents the ``Idempotency-Key`` header and the problem
responses (400, 409, 422, 500, 503) on every POST/PATCH operation; the ``IdempotencyKey``
dependency declares the header on one route and hands the handler the key.

Run locally: uvicorn documented:app      (from this directory), then open /docs
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from pydantic import BaseModel

from idempotence import Idempotency
from idempotence.http import IdempotencyMiddleware
from idempotence.http.fastapi import IdempotencyKey, idempotency_openapi


class PaymentIn(BaseModel):
    order_id: str
    amount_cents: int


class Payment(PaymentIn):
    id: str
    idempotency_key: str | None


def create_app(idempotency: Idempotency | None = None) -> FastAPI:
    app = FastAPI(title="payments")
    app.state.payments = {}
    app.add_middleware(
        IdempotencyMiddleware,
        idempotency=idempotency or Idempotency(ttl=24 * 3600),
        required=True,
    )
    idempotency_openapi(app)  # the header and the problem responses in /openapi.json

    @app.post("/payments", status_code=201)
    async def pay(payment: PaymentIn, key: IdempotencyKey) -> Payment:
        # key: the client's Idempotency-Key (already validated by the middleware), e.g.
        # to pass on to a payment provider as its own idempotency key.
        created = Payment(id=str(uuid.uuid4()), idempotency_key=key, **payment.model_dump())
        app.state.payments[created.id] = created  # the side effect that must happen once
        return created

    return app


app = create_app()
