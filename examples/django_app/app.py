"""Django in one file: settings, a view, URLs, and the WSGI/ASGI applications wrapped in
the idempotency middleware.

Run locally: python app.py runserver      (from this directory)
Production:  gunicorn app:application  /  uvicorn app:asgi_application

The store comes from ``IDEMPOTENCE_STORE``, else a SQLite file.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only-not-secret",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        WSGI_APPLICATION=f"{__name__}.application",
    )

import django

django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

from idempotence import Idempotency  # noqa: E402
from idempotence.http import IdempotencyMiddleware, WSGIIdempotencyMiddleware  # noqa: E402

ORDERS: dict[str, dict[str, Any]] = {}


def orders(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return JsonResponse(list(ORDERS.values()), safe=False)
    data = json.loads(request.body)
    order = {"id": str(uuid.uuid4()), "item": data["item"], "quantity": data.get("quantity", 1)}
    ORDERS[order["id"]] = order  # the side effect that must happen once
    return JsonResponse(order, status=201)


urlpatterns = [path("orders", orders)]

idempotency = Idempotency(ttl=24 * 3600)
# required=True: POST/PATCH without Idempotency-Key -> 400
application = WSGIIdempotencyMiddleware(get_wsgi_application(), idempotency, required=True)
asgi_application = IdempotencyMiddleware(get_asgi_application(), idempotency, required=True)

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
