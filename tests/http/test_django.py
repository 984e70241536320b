"""idempotence.http.django: a MIDDLEWARE entry configured from settings, through Django's
own test clients (WSGI handler and ASGI handler)."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE = EXAMPLES / "django_app" / "settings_app.py"
MIDDLEWARE_PATH = "idempotence.http.django.IdempotencyMiddleware"


def load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if not settings.configured:
    # Django's settings are process-wide: configure them as tests/http/test_examples.py's
    # Django example does (same module name), and override them per test below.
    load(EXAMPLES / "django_app" / "app.py", "example_django_app")

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.http import (  # noqa: E402
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402

from idempotence import Idempotency  # noqa: E402
from idempotence.http import HTTPIdempotency  # noqa: E402
from idempotence.http.django import IdempotencyMiddleware, engine_from_settings  # noqa: E402
from idempotence.stores import MemoryStore  # noqa: E402


def key() -> dict[str, str]:
    return {"HTTP_IDEMPOTENCY_KEY": f'"{uuid.uuid4()}"'}


@pytest.fixture
def example() -> Iterator[types.ModuleType]:
    module = load(EXAMPLE, "django_settings_example")
    config = {**module.IDEMPOTENCE_HTTP, "idempotency": Idempotency(MemoryStore())}
    with override_settings(
        ROOT_URLCONF=module.__name__, MIDDLEWARE=module.MIDDLEWARE, IDEMPOTENCE_HTTP=config
    ):
        yield module
    sys.modules.pop(module.__name__, None)


def test_example_middleware_runs_once_and_replays(example: types.ModuleType) -> None:
    client = Client()
    headers = key()
    body = json.dumps({"order_id": "o1"})
    first = client.post("/payments", body, content_type="application/json", **headers)
    again = client.post("/payments", body, content_type="application/json", **headers)
    assert first.status_code == 201
    assert again.status_code == 201
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert again["Content-Type"] == "application/json"
    assert len(example.PAYMENTS) == 1


def test_example_refusals_are_problem_responses(example: types.ModuleType) -> None:
    client = Client()
    missing = client.post("/payments", "{}", content_type="application/json")
    assert missing.status_code == 400
    assert missing["Content-Type"] == "application/problem+json"
    assert json.loads(missing.content)["type"] == "urn:idempotence:problem:missing-key"
    headers = key()
    ok = client.post(
        "/payments", json.dumps({"order_id": "o1"}), content_type="application/json", **headers
    )
    assert ok.status_code == 201
    reused = client.post(
        "/payments", json.dumps({"order_id": "o2"}), content_type="application/json", **headers
    )
    assert reused.status_code == 422
    assert example.PAYMENTS  # the first ran
    assert len(example.PAYMENTS) == 1


async def test_example_under_asgi(example: types.ModuleType) -> None:
    client = AsyncClient()
    headers = {"Idempotency-Key": f'"{uuid.uuid4()}"'}
    body = json.dumps({"order_id": "o1"})
    first = await client.post("/payments", body, content_type="application/json", headers=headers)
    again = await client.post("/payments", body, content_type="application/json", headers=headers)
    missing = await client.post("/payments", body, content_type="application/json")
    assert missing.status_code == 400
    assert first.status_code == 201
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert len(example.PAYMENTS) == 1


# -- scoping, cookies, errors -------------------------------------------------------------
CALLS: list[str] = []


def whoami(request: HttpRequest) -> HttpResponse:
    CALLS.append(request.method or "")
    response = JsonResponse({"n": len(CALLS)}, status=201)
    response.set_cookie("seen", "1", httponly=True)
    response["X-Multi"] = "a"
    return response


def boom(request: HttpRequest) -> HttpResponse:
    CALLS.append("boom")
    raise RuntimeError("view failed")


STARTED = threading.Event()
FINISH = threading.Event()


def slow(request: HttpRequest) -> HttpResponse:
    CALLS.append("slow")
    STARTED.set()
    assert FINISH.wait(10)
    return HttpResponse(b"done", status=201, content_type="text/plain")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    CALLS.append("stream")
    return StreamingHttpResponse(iter([b"a", b"b", b"c"]), content_type="text/plain")


urlpatterns = [
    path("whoami", whoami),
    path("boom", boom),
    path("slow", slow),
    path("stream", stream),
]


class User:
    is_authenticated = True

    def __init__(self, pk: int) -> None:
        self.pk = pk


def login_middleware(get_response: Callable[[HttpRequest], Any]) -> Any:
    """Stands in for AuthenticationMiddleware: request.user from a test header."""

    def middleware(request: HttpRequest) -> Any:
        request.user = User(int(request.headers["X-Test-User"]))  # type: ignore[attr-defined]
        return get_response(request)

    return middleware


@pytest.fixture
def local() -> Iterator[None]:
    CALLS.clear()
    config = {"idempotency": Idempotency(MemoryStore()), "replay_set_cookie": True}
    with override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[f"{__name__}.login_middleware", MIDDLEWARE_PATH],
        IDEMPOTENCE_HTTP=config,
    ):
        yield


@pytest.mark.usefixtures("local")
def test_keys_are_scoped_to_the_django_user() -> None:
    client = Client()
    headers = key()
    alice = client.post("/whoami", HTTP_X_TEST_USER="1", **headers)
    bob = client.post("/whoami", HTTP_X_TEST_USER="2", **headers)
    alice_again = client.post("/whoami", HTTP_X_TEST_USER="1", **headers)
    assert CALLS == ["POST", "POST"]  # bob never gets alice's response
    assert json.loads(bob.content) == {"n": 2}
    assert alice_again.content == alice.content
    assert alice_again["Idempotent-Replayed"] == "true"


@pytest.mark.usefixtures("local")
def test_cookies_and_headers_are_replayed() -> None:
    client = Client()
    headers = key()
    first = client.post("/whoami", HTTP_X_TEST_USER="1", **headers)
    again = Client().post("/whoami", HTTP_X_TEST_USER="1", **headers)
    assert again["X-Multi"] == "a"
    assert again.cookies["seen"].value == "1"
    assert again.cookies["seen"]["httponly"]
    assert first.cookies["seen"].value == "1"
    assert len(CALLS) == 1


@pytest.mark.usefixtures("local")
def test_a_failing_view_is_not_kept() -> None:
    client = Client(raise_request_exception=False)
    headers = key()
    assert client.post("/boom", HTTP_X_TEST_USER="1", **headers).status_code == 500
    assert client.post("/boom", HTTP_X_TEST_USER="1", **headers).status_code == 500
    assert CALLS == ["boom", "boom"]  # released: the retry ran again


@pytest.mark.usefixtures("local")
def test_other_methods_and_keyless_requests_pass_through() -> None:
    client = Client()
    client.get("/whoami", HTTP_X_TEST_USER="1")
    client.post("/whoami", HTTP_X_TEST_USER="1")
    client.post("/whoami", HTTP_X_TEST_USER="1")
    assert CALLS == ["GET", "POST", "POST"]


def test_settings_are_checked() -> None:
    with (
        override_settings(IDEMPOTENCE_HTTP={"requird": True}),
        pytest.raises(ImproperlyConfigured, match="requird"),
    ):
        engine_from_settings()
    with override_settings(IDEMPOTENCE_HTTP=["x"]), pytest.raises(ImproperlyConfigured):
        engine_from_settings()
    engine = HTTPIdempotency(Idempotency(MemoryStore()), required=True)
    with override_settings(IDEMPOTENCE_HTTP=engine):
        assert engine_from_settings() is engine
        assert IdempotencyMiddleware(lambda request: HttpResponse()).engine is engine


@pytest.mark.usefixtures("local")
def test_a_duplicate_while_running_gets_409_with_retry_after() -> None:
    STARTED.clear()
    FINISH.clear()
    headers = key()
    results: list[HttpResponse] = []
    first = threading.Thread(
        target=lambda: results.append(Client().post("/slow", HTTP_X_TEST_USER="1", **headers))
    )
    first.start()
    try:
        assert STARTED.wait(10)
        duplicate = Client().post("/slow", HTTP_X_TEST_USER="1", **headers)
    finally:
        FINISH.set()
        first.join(10)
    assert duplicate.status_code == 409
    assert duplicate["Content-Type"] == "application/problem+json"
    assert int(duplicate["Retry-After"]) >= 1
    assert results[0].status_code == 201
    assert CALLS == ["slow"]


@pytest.mark.usefixtures("local")
def test_streaming_responses_are_buffered_and_replayed() -> None:
    headers = key()
    first = Client().post("/stream", HTTP_X_TEST_USER="1", **headers)
    again = Client().post("/stream", HTTP_X_TEST_USER="1", **headers)
    assert first.content == again.content == b"abc"
    assert again["Idempotent-Replayed"] == "true"
    assert CALLS == ["stream"]


@pytest.mark.usefixtures("local")
def test_a_malformed_key_is_refused_before_the_view() -> None:
    response = Client().post("/whoami", HTTP_X_TEST_USER="1", HTTP_IDEMPOTENCY_KEY='"unterminated')
    assert response.status_code == 400
    assert json.loads(response.content)["type"] == "urn:idempotence:problem:invalid-key"
    assert CALLS == []
