"""Django with the idempotency middleware as a ``MIDDLEWARE`` entry, configured in settings.

The settings below are what a project's ``settings.py`` adds; the view is a plain Django
view. Run locally: python settings_app.py runserver      (from this directory)
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

# -- settings.py -------------------------------------------------------------------------
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    # after django.contrib.auth's AuthenticationMiddleware when you use it: keys are then
    # scoped to the logged-in user
    "idempotence.http.django.IdempotencyMiddleware",
]
IDEMPOTENCE_HTTP = {
    "idempotency": None,  # the default store (IDEMPOTENCE_STORE), or a URL, store, Idempotency
    "required": True,  # POST/PATCH without Idempotency-Key -> 400
}

# -- views.py and urls.py ----------------------------------------------------------------
PAYMENTS: dict[str, dict[str, Any]] = {}


def payments(request: HttpRequest) -> HttpResponse:
    data = json.loads(request.body)
    payment = {"id": str(uuid.uuid4()), "order_id": data["order_id"]}
    PAYMENTS[payment["id"]] = payment  # the side effect that must happen once
    return JsonResponse(payment, status=201)


urlpatterns = [path("payments", payments)]

if __name__ == "__main__":
    from django.conf import settings

    settings.configure(
        DEBUG=True,
        SECRET_KEY="example-only-not-secret",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=MIDDLEWARE,
        IDEMPOTENCE_HTTP=IDEMPOTENCE_HTTP,
    )
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
