"""A moto DynamoDB (and any other AWS service moto serves) endpoint for the tests.

``start_moto_server()`` runs moto's server in this process, on a free loopback port, in a
background thread, and returns ``(endpoint_url, stop)``. Requests are serialised by a lock:
moto checks a condition and then writes without locking, so two concurrent conditional
writes could both succeed there, while real DynamoDB is atomic per item.

The session fixture ``dynamodb_endpoint`` starts one server per test session and points the
AWS SDKs at fake credentials (``AWS_ACCESS_KEY_ID=testing``..., region ``us-east-1``) in
``os.environ`` for the rest of the session, so clients built from the default credential
chain, and processes spawned by tests, reach moto. The variables are restored when the
session ends. Reuse it from a conftest with::

    from tests.moto_server import dynamodb_endpoint  # noqa: F401
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from tests.conftest import backend_unavailable

__all__ = ["FAKE_AWS_ENV", "dynamodb_endpoint", "start_moto_server"]

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    # Never read a developer's ~/.aws (profiles, credential_process, SSO...).
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_UNSET_AWS_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


class _Serialized:
    """WSGI middleware running one request at a time (the whole response is built under the
    lock), which makes each moto request atomic as DynamoDB's are."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        def start(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            # moto sets `Server` and werkzeug adds its own; strict HTTP parsers (aiohttp's
            # pure-Python one, used in dev mode) reject the duplicate.
            return start_response(status, [h for h in headers if h[0].lower() != "server"], *args)

        with self.lock:
            response = self.app(environ, start)
            try:
                return list(response)
            finally:
                close = getattr(response, "close", None)
                if close is not None:
                    close()


def start_moto_server(host: str = "127.0.0.1") -> tuple[str, Callable[[], None]]:
    """Start moto's server in a background thread on a free port of ``host``.

    Returns ``(endpoint_url, stop)``; ``stop()`` shuts the server down and joins the thread.
    Raises ``ImportError`` without ``moto[server]`` and ``OSError`` if it cannot listen.
    """
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    app = _Serialized(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="moto-server", daemon=True)
    thread.start()
    port = server.server_address[1]

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    return f"http://{host}:{port}", stop


@pytest.fixture(scope="session")
def dynamodb_endpoint() -> Iterator[str]:
    """URL of a moto server shared by the session, with fake AWS credentials in the
    environment (see the module docstring). Skips (or fails in CI) if moto cannot start."""
    with pytest.MonkeyPatch.context() as env:
        for name in _UNSET_AWS_ENV:
            env.delenv(name, raising=False)
        for name, value in FAKE_AWS_ENV.items():
            env.setenv(name, value)
        try:
            url, stop = start_moto_server()
        except (ImportError, OSError) as exc:
            backend_unavailable(f"moto server could not start: {type(exc).__name__}: {exc}")
        try:
            yield url
        finally:
            stop()
