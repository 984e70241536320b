"""FastAPI: the ``Idempotency-Key`` header and its problem responses in the OpenAPI schema.

The work is done by :class:`~idempotence.http.IdempotencyMiddleware` (install it with
``app.add_middleware``); this module makes the API *describe* it:

- :func:`idempotency_openapi` documents, on every operation the middleware handles (its
  ``methods``), the header parameter (``required`` as configured) and the problem
  responses (``application/problem+json``, one per status of
  :data:`~idempotence.http.PROBLEM_TYPES`: 400, 409, 422, 503...), and marks replays
  with the ``Idempotent-Replayed`` response header.
- :data:`IdempotencyKey`, a per-route dependency (``key: IdempotencyKey``), declares the
  header on that route and hands the handler the parsed key (``None`` without a header).
  It refuses to run (``RuntimeError``, a 500) when the app has no idempotency middleware or
  the middleware does not handle the route's method, so a route that looks idempotent can
  never silently run without it.
- :func:`idempotency_responses` returns the problem responses for a route's
  ``responses=``.

::

    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware, idempotency=Idempotency(url), required=True)
    idempotency_openapi(app)
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Annotated, Any

from .._errors import MissingDependencyError
from . import (
    PROBLEM_TYPES,
    REPLAYED_HEADER,
    HTTPIdempotency,
    IdempotencyMiddleware,
    parse_idempotency_key,
)

try:
    from fastapi import Depends, FastAPI, Header, Request
except ImportError as exc:  # pragma: no cover - exercised only without FastAPI
    raise MissingDependencyError(
        "'fastapi' is not installed, and idempotence.http.fastapi needs it: pip install fastapi"
    ) from exc

__all__ = [
    "PROBLEM_SCHEMA_NAME",
    "IdempotencyKey",
    "idempotency_key",
    "idempotency_openapi",
    "idempotency_responses",
]

PROBLEM_SCHEMA_NAME = "IdempotencyProblem"
"""Name of the problem-details schema added to ``components.schemas``."""

_PROBLEM_MEDIA_TYPE = "application/problem+json"
_DEFAULT_HEADER = "Idempotency-Key"
_DEFAULT_METHODS = ("POST", "PATCH")
_HEADER_DESCRIPTION = (
    'A unique key per operation (an RFC 8941 string such as `"8e03978e"`, or a bare token; '
    "1-255 printable ASCII characters), reused on retries: a retry of the same request gets "
    "the first response back, with `Idempotent-Replayed: true`, and the operation runs once."
)

_PROBLEM_SCHEMA: dict[str, Any] = {
    "title": PROBLEM_SCHEMA_NAME,
    "type": "object",
    "description": "RFC 9457 problem details of a request refused by the idempotency layer.",
    "properties": {
        "type": {"type": "string", "example": "urn:idempotence:problem:in-progress"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "retry_same_key": {
            "type": "boolean",
            "description": "Whether retrying with the same Idempotency-Key can succeed.",
        },
    },
    "required": ["type", "title", "status", "retry_same_key"],
}


@dataclass(frozen=True)
class _Options:
    methods: frozenset[str]
    header: str
    required: bool


def _middleware_options(app: Any) -> _Options | None:
    """The options of the :class:`IdempotencyMiddleware` installed on ``app``, if any."""
    for middleware in getattr(app, "user_middleware", ()):
        if middleware.cls is not IdempotencyMiddleware:
            continue
        args = tuple(getattr(middleware, "args", ()))
        kwargs = dict(getattr(middleware, "kwargs", {}) or getattr(middleware, "options", {}))
        engine = kwargs.get("idempotency", args[0] if args else None)
        if isinstance(engine, HTTPIdempotency):
            return _Options(frozenset(engine.methods), engine.header, engine.required)
        return _Options(
            frozenset(m.upper() for m in kwargs.get("methods", _DEFAULT_METHODS)),
            kwargs.get("header", _DEFAULT_HEADER),
            bool(kwargs.get("required", False)),
        )
    return None


def _problem_names(status: int) -> list[str]:
    return sorted(name for name, (code, _, _) in PROBLEM_TYPES.items() if code == status)


def idempotency_responses() -> dict[int | str, dict[str, Any]]:
    """The problem responses the middleware can answer with, by status, for a route's
    ``responses=`` (``@app.post(..., responses=idempotency_responses())``).

    Each is ``application/problem+json`` with the ``IdempotencyProblem`` schema and lists
    the problem ``type`` values it carries; 409 and 503 also document ``Retry-After``.
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted({code for code, _, _ in PROBLEM_TYPES.values()}):
        names = _problem_names(status)
        titles = "; ".join(
            f"`urn:idempotence:problem:{name}`: {PROBLEM_TYPES[name][1]}" for name in names
        )
        response: dict[str, Any] = {
            "description": f"Refused by the idempotency layer ({titles}).",
            "content": {_PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_SCHEMA}},
        }
        if any(PROBLEM_TYPES[name][2] for name in names):
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying with the same key.",
                    "schema": {"type": "integer"},
                }
            }
        responses[status] = response
    return responses


def _merge_response(operation: dict[str, Any], status: str, problem: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    existing = responses.get(status)
    if existing is None:
        responses[status] = problem
        return
    # e.g. FastAPI's own 422 (validation error, application/json): keep it, add ours.
    existing["description"] = f"{existing.get('description', '')} Or: {problem['description']}"
    existing.setdefault("content", {}).update(problem["content"])
    if "headers" in problem:
        existing.setdefault("headers", {}).update(problem["headers"])


def _document(operation: dict[str, Any], options: _Options) -> None:
    parameters: list[dict[str, Any]] = operation.setdefault("parameters", [])
    lname = options.header.lower()
    for parameter in list(parameters):
        # The dependency declares the default header name; the middleware's wins.
        if parameter.get("in") == "header" and parameter.get("name", "").lower() in {
            lname,
            _DEFAULT_HEADER.lower(),
        }:
            parameters.remove(parameter)
    parameters.append(
        {
            "name": options.header,
            "in": "header",
            "required": options.required,
            "description": _HEADER_DESCRIPTION,
            "schema": {"type": "string", "minLength": 1},
        }
    )
    ref = {"$ref": f"#/components/schemas/{PROBLEM_SCHEMA_NAME}"}
    for status, problem in idempotency_responses().items():
        problem = {**problem, "content": {_PROBLEM_MEDIA_TYPE: {"schema": ref}}}
        _merge_response(operation, str(status), problem)
    for status, response in operation["responses"].items():
        if str(status).startswith("2"):
            response.setdefault("headers", {})[REPLAYED_HEADER] = {
                "description": "`true` when this is the stored response of an earlier request "
                "with the same key (the operation did not run again).",
                "schema": {"type": "string", "enum": ["true"]},
            }


def _uses_dependency(operation: dict[str, Any], marked: set[str]) -> bool:
    return operation.get("operationId") in marked


def idempotency_openapi(
    app: FastAPI,
    *,
    methods: Collection[str] | None = None,
    header: str | None = None,
    required: bool | None = None,
) -> None:
    """Make ``app.openapi()`` document the idempotency middleware.

    Every operation whose method the installed :class:`IdempotencyMiddleware` handles
    (and every route using :data:`IdempotencyKey`) gets the header parameter (named and
    ``required`` as the middleware is configured), the problem responses of
    :func:`idempotency_responses` (merged into FastAPI's own 422), and the
    ``Idempotent-Replayed`` header on its 2xx responses. The options are read from the
    middleware when the schema is first generated, so call this before or after
    ``add_middleware``; ``methods``, ``header`` and ``required`` override them (for an app
    whose middleware is installed elsewhere, e.g. around the ASGI app by hand).

    Raises ``RuntimeError`` when the schema is generated if no option source exists (no
    middleware on the app and no override).
    """
    original: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        found = _middleware_options(app)
        if found is None and methods is None:
            raise RuntimeError(
                "idempotency_openapi: the app has no IdempotencyMiddleware; add it with "
                "app.add_middleware(IdempotencyMiddleware, ...) or pass methods="
            )
        options = _Options(
            frozenset(m.upper() for m in methods) if methods is not None else found.methods,  # type: ignore[union-attr]
            header or (found.header if found else _DEFAULT_HEADER),
            required if required is not None else bool(found and found.required),
        )
        schema = original()
        marked = _dependency_operation_ids(app)
        for path_item in schema.get("paths", {}).values():
            for method, operation in path_item.items():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                if method.upper() in options.methods or _uses_dependency(operation, marked):
                    _document(operation, options)
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault(PROBLEM_SCHEMA_NAME, _PROBLEM_SCHEMA)
        app.openapi_schema = schema
        return schema

    app.openapi_schema = None  # a schema generated before this call is regenerated
    app.openapi = openapi  # type: ignore[method-assign]


def _dependency_operation_ids(app: FastAPI) -> set[str]:
    from fastapi.routing import APIRoute

    marked: set[str] = set()
    for route in app.routes:
        if isinstance(route, APIRoute) and _depends_on_key(route.dependant):
            marked.add(route.operation_id or route.unique_id)
    return marked


def _depends_on_key(dependant: Any) -> bool:
    return any(
        d.call is idempotency_key or _depends_on_key(d)
        for d in getattr(dependant, "dependencies", ())
    )


def idempotency_key(
    request: Request,
    idempotency_key: Annotated[
        str | None, Header(alias=_DEFAULT_HEADER, description=_HEADER_DESCRIPTION)
    ] = None,
) -> str | None:
    """The dependency behind :data:`IdempotencyKey`: the request's key, or ``None``.

    By the time a route runs, the middleware has validated the header (a malformed one got
    400), so this returns the parsed key. Raises ``RuntimeError`` (a 500) when the app has
    no :class:`IdempotencyMiddleware` or the middleware does not handle the request's
    method: the route would otherwise run without the idempotency it declares.
    """
    options = _middleware_options(request.app)
    if options is None:
        raise RuntimeError(
            "this route depends on IdempotencyKey but the app has no IdempotencyMiddleware: "
            "add it with app.add_middleware(IdempotencyMiddleware, ...)"
        )
    if request.method.upper() not in options.methods:
        raise RuntimeError(
            f"this route depends on IdempotencyKey but the IdempotencyMiddleware does not "
            f"handle {request.method.upper()} requests: add the method to its methods="
        )
    return parse_idempotency_key(request.headers.get(options.header))


IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]
"""Per-route dependency: ``async def create(order: Order, key: IdempotencyKey)``.

Declares the ``Idempotency-Key`` header on the route (and marks the route for
:func:`idempotency_openapi`), and gives the handler the parsed key, or ``None`` when the
request has none. See :func:`idempotency_key` for when it refuses to run."""
