"""Flask: an idempotent ``POST /orders`` behind ``WSGIIdempotencyMiddleware``.

Run locally: flask --app app run      (from this directory)

The store comes from ``IDEMPOTENCE_STORE``, else a SQLite file.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import Flask, request

from idempotence import Idempotency
from idempotence.http import WSGIIdempotencyMiddleware


def create_app(idempotency: Idempotency | None = None) -> Flask:
    app = Flask(__name__)
    orders: dict[str, dict[str, Any]] = {}
    app.extensions["orders"] = orders
    app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        idempotency or Idempotency(ttl=24 * 3600),
        required=True,  # POST/PATCH without Idempotency-Key -> 400
    )

    @app.post("/orders")
    def create_order() -> tuple[dict[str, Any], int]:
        data = request.get_json()
        order = {"id": str(uuid.uuid4()), "item": data["item"], "quantity": data.get("quantity", 1)}
        orders[order["id"]] = order  # the side effect that must happen once
        return order, 201

    @app.get("/orders/<order_id>")
    def get_order(order_id: str) -> dict[str, Any]:
        return orders[order_id]

    return app


app = create_app()
