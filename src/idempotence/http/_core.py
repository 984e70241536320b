"""The transport-neutral, sans-I/O HTTP layer (draft-ietf-httpapi-idempotency-key-header).

:class:`HTTPIdempotency` is the engine every HTTP adapter shares (ASGI and WSGI middleware,
the Lambda API Gateway mode). An adapter turns its request into an :class:`HTTPRequest`,
calls :meth:`HTTPIdempotency.run` (or ``arun``) with a function that produces the app's
:class:`HTTPResponse`, and sends back what it returns. Everything between - the header,
the key, the fingerprint, the claim, replays, refusals - happens here, on the shared
:class:`~idempotence._protocol.Plan` and the same sync/async shells as the decorators.

Responses the engine answers itself (``application/problem+json``, RFC 9457)::

    400  missing-key (required=True) / invalid-key    fix the request, no retry as is
    400  invalid-request: unusable method/path/query  fix the request
    413  request-too-large (max_request_bytes)       send less, no retry as is
    422  key-reused: same key, another payload         use a new key for a new operation
    409  in-progress + Retry-After                     retry later with the same key
    503  store-unavailable + Retry-After (fail closed) retry later with the same key
    500  response-not-stored                           do not retry: it ran once already
    500  record-corrupt                                do not retry; an operator must look
    500  callback-failed: scope/keep raised            an operator must look (see the log)

Each problem has ``type`` ``urn:idempotence:problem:<name>`` and the extension member
``retry_same_key`` (``true`` for 409/503) so a client knows whether to retry with the key.

One file (over 400 lines): :class:`HTTPIdempotency` (about 420 lines) is built on the
request/response types, key parsing and problem documents defined beside it, and every
adapter imports them as one unit.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from .._codec import (
    KIND_NOT_STORED,
    KIND_VALUE,
    JSONSerializer,
    UnencodableError,
    envelope,
    open_envelope,
)
from .._errors import (
    AlreadyInProgressError,
    CorruptRecordError,
    IdempotencyError,
    InvalidKeyError,
    KeyReuseError,
    StoreError,
)
from .._keys import check_namespace, digest, loads_exact
from .._record import Record
from ..base import IdempotencyBase
from ..engine import LocalCache, Plan, is_disabled, not_stored
from ..engine import arun as run_async
from ..engine import run as run_sync
from ..stores import Store

__all__ = [
    "DEFAULT_CREDENTIAL_HEADERS",
    "HOP_BY_HOP_HEADERS",
    "NEVER_KEPT_STATUSES",
    "PROBLEM_TYPES",
    "REPLAYED_HEADER",
    "HTTPIdempotency",
    "HTTPRequest",
    "HTTPResponse",
    "parse_idempotency_key",
    "problem",
    "request_scope",
]

log = logging.getLogger("idempotence.http")
#: The outcome named in the log when the app's response was not kept (docs/observability.md).
_OUTCOMES = {
    "LeaseLostError": "lease_lost",
    "ResultNotStoredError": "not_stored",
    "ResultTooLargeError": "not_stored",
}

#: Header added to every replayed response.
REPLAYED_HEADER = "Idempotent-Replayed"

#: Headers never stored nor replayed (RFC 9110 section 7.6.1; ``Proxy-*`` too).
HOP_BY_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)

_PROBLEM_PREFIX = "urn:idempotence:problem:"

#: problem name -> (status, title, retry with the same key?)
PROBLEM_TYPES: dict[str, tuple[int, str, bool]] = {
    "missing-key": (400, "Idempotency-Key header is required", False),
    "invalid-key": (400, "Idempotency-Key header is malformed", False),
    "invalid-request": (400, "The request's method, path or query cannot be used", False),
    "request-too-large": (413, "The request body is larger than this endpoint accepts", False),
    "key-reused": (422, "Idempotency-Key was already used with another request", False),
    "in-progress": (409, "A request with this Idempotency-Key is still being processed", True),
    "store-unavailable": (503, "The idempotency store is unavailable", True),
    "response-not-stored": (
        500,
        "The request was processed, but its response could not be kept for replay",
        False,
    ),
    "record-corrupt": (500, "The stored response for this Idempotency-Key is unreadable", False),
    "callback-failed": (500, "The server's idempotency configuration failed", False),
}

#: Statuses never kept by the default ``keep``, besides every status >= 500: the caller
#: was not let in (401, 403), or the server asks for a retry (408, 425, 429). The key is
#: released and the next request with it runs fresh.
NEVER_KEPT_STATUSES = frozenset({401, 403, 408, 425, 429})

#: Request headers whose values identify the caller by default (see :func:`request_scope`).
DEFAULT_CREDENTIAL_HEADERS = ("authorization", "x-api-key")

#: The HMAC key of credential scopes when no ``scope_secret`` is given.
_SCOPE_LABEL = b"idempotence.http.scope.v1"

_MAX_KEY = 255
_STORE_RETRY_AFTER = 1
_MIN_STATUS, _MAX_STATUS = 100, 999
_SERIALIZER = JSONSerializer()
_JSON_TYPE = re.compile(r"^\s*application/([\w.+-]+\+)?json\s*(;|$)", re.IGNORECASE)


# -- the header ---------------------------------------------------------------------------
def parse_idempotency_key(value: str | None) -> str | None:
    """The key carried by an ``Idempotency-Key`` header value, or ``None`` if absent.

    Accepts an RFC 8941 sf-string (``"abc"``, with ``\\"`` and ``\\\\`` escapes, as the
    draft specifies) or, leniently, a bare token as many clients send (``abc``; visible
    ASCII without quotes, backslashes or commas, so that two header lines joined with ``,``
    are refused). The key itself must be 1-255 printable ASCII characters. Surrounding
    spaces and tabs are ignored. Raises :class:`~idempotence.InvalidKeyError` otherwise.
    """
    if value is None:
        return None
    text = value.strip(" \t")
    if text.startswith('"'):
        out: list[str] = []
        i, n = 1, len(text)
        while True:
            if i >= n:
                raise InvalidKeyError("Idempotency-Key: unterminated quoted string")
            ch = text[i]
            if ch == "\\":
                if i + 1 >= n or text[i + 1] not in '"\\':
                    raise InvalidKeyError(
                        'Idempotency-Key: only \\" and \\\\ escapes are allowed in a string'
                    )
                out.append(text[i + 1])
                i += 2
            elif ch == '"':
                if i + 1 != n:
                    raise InvalidKeyError(
                        "Idempotency-Key: unexpected characters after the quoted string"
                    )
                break
            elif " " <= ch <= "~":
                out.append(ch)
                i += 1
            else:
                raise InvalidKeyError(
                    "Idempotency-Key: the key must be printable ASCII (0x20-0x7E)"
                )
        key = "".join(out)
    else:
        key = text
        if any(not ("!" <= ch <= "~") or ch in '"\\,' for ch in key):
            raise InvalidKeyError(
                "Idempotency-Key: a bare key must be visible ASCII without quotes, "
                'backslashes or commas; send it quoted ("...") otherwise'
            )
    if not 1 <= len(key) <= _MAX_KEY:
        raise InvalidKeyError(f"Idempotency-Key: the key must be 1-{_MAX_KEY} characters long")
    return key


# -- requests and responses ---------------------------------------------------------------
@dataclass(frozen=True)
class HTTPRequest:
    """An HTTP request as the engine sees it.

    ``path`` excludes the query string, ``query`` is the raw query string without ``?``;
    ``headers`` keep their order and repetitions (names compare case-insensitively);
    ``principal`` is the caller's identity when the transport knows it (e.g. an API Gateway
    authorizer's principal) and scopes keys by default.
    """

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    principal: str | None = None

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        values = self.header_values(name)
        return values[0] if values else None


@dataclass(frozen=True)
class HTTPResponse:
    """An HTTP response: status, headers (in order, repeatable) and the whole body.

    :meth:`encode` frames it for the store in the same envelope as function results
    (``KIND_VALUE``, then the JSON serializer's bytes of
    ``{"status": ..., "headers": [[name, value], ...], "body": {"$bytes": base64}}``);
    :meth:`decode` reverses it.
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)

    def encode(self) -> bytes:
        """The stored form of this response."""
        return envelope(
            KIND_VALUE,
            _SERIALIZER.encode(
                {
                    "status": self.status,
                    "headers": [[k, v] for k, v in self.headers],
                    "body": bytes(self.body),
                }
            ),
        )

    @classmethod
    def decode(cls, data: bytes) -> HTTPResponse:
        """Rebuild a response from :meth:`encode`'s bytes; raises
        :class:`~idempotence.CorruptRecordError` if they are not one."""
        kind, body = open_envelope(data)
        if kind != KIND_VALUE:
            raise CorruptRecordError(f"stored record is not an HTTP response (kind {kind!r})")
        try:
            value = _SERIALIZER.decode(body, None)
            status = value["status"]
            raw_headers = value["headers"]
            payload = value["body"]
            if type(status) is not int or not _MIN_STATUS <= status <= _MAX_STATUS:
                raise ValueError("status is not an HTTP status code")
            if not isinstance(payload, bytes) or not isinstance(raw_headers, list):
                raise TypeError("unexpected field types")
            headers: list[tuple[str, str]] = []
            for pair in raw_headers:
                if (
                    not isinstance(pair, list)
                    or len(pair) != 2
                    or not all(isinstance(x, str) for x in pair)
                ):
                    raise TypeError("a header is not a [name, value] pair of strings")
                pair[0].encode("latin-1")  # what every transport can send (else ValueError)
                pair[1].encode("latin-1")
                headers.append((pair[0], pair[1]))
        except CorruptRecordError:
            raise
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
            # The type only: the message of a decoding error may quote the record's bytes.
            raise CorruptRecordError(
                f"stored HTTP response is corrupt ({type(exc).__name__})"
            ) from exc
        return cls(status, headers, payload)


def problem(
    name: str,
    detail: str,
    *,
    retry_after: float | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> HTTPResponse:
    """An ``application/problem+json`` response for one of :data:`PROBLEM_TYPES`."""
    status, title, retry = PROBLEM_TYPES[name]
    body = json.dumps(
        {
            "type": _PROBLEM_PREFIX + name,
            "title": title,
            "status": status,
            "detail": detail,
            "retry_same_key": retry,
        },
        separators=(",", ":"),
    ).encode("utf-8")
    out = [
        ("content-type", "application/problem+json"),
        ("content-length", str(len(body))),
        ("cache-control", "no-store"),
    ]
    if retry_after is not None:
        out.append(("retry-after", str(max(1, math.ceil(retry_after)))))
    out.extend(headers)
    return HTTPResponse(status, out, body)


# -- the scope ----------------------------------------------------------------------------
def _cookies(request: HTTPRequest) -> list[tuple[str, str]]:
    """``(name, value)`` of every cookie in the ``Cookie`` headers, in order (RFC 6265
    syntax, leniently: a piece without ``=`` is skipped)."""
    out = []
    for line in request.header_values("cookie"):
        for piece in line.split(";"):
            name, sep, value = piece.partition("=")
            if sep:
                out.append((name.strip(), value.strip()))
    return out


def request_scope(
    request: HTTPRequest,
    principal: str | None = None,
    *,
    credential_headers: Iterable[str] = DEFAULT_CREDENTIAL_HEADERS,
    credential_cookies: Iterable[str] = (),
    secret: bytes | str | None = None,
) -> str | None:
    """The default scope of ``request``: who is calling, so one caller never gets another
    caller's stored response.

    1. A verified principal: ``principal`` if given, else ``request.principal`` (set by the
       adapters from the stack's authentication: ASGI ``scope["user"]``, WSGI
       ``REMOTE_USER``, an API Gateway authorizer) -> ``"principal:<name>"``.
    2. Else the credentials the request carries: every value of the ``credential_headers``
       (case-insensitive) and of the cookies named in ``credential_cookies`` ->
       ``"credentials:<HMAC-SHA256 hex>"``, keyed by ``secret`` (default: a fixed library
       label), so no raw credential reaches keys, records or logs. Tokens are never decoded
       (an unverified JWT's claims say nothing about who sent it): two different tokens of
       one user are two scopes.
    3. Else ``None``: unscoped.
    """
    who = principal if principal is not None else request.principal
    if who:
        return f"principal:{who}"
    names = {h.lower() for h in credential_headers}
    material: list[list[str]] = [
        ["header", k.lower(), v] for k, v in request.headers if k.lower() in names
    ]
    wanted = set(credential_cookies)
    if wanted:
        material += [["cookie", k, v] for k, v in _cookies(request) if k in wanted]
    if not material:
        return None
    key = _SCOPE_LABEL if secret is None else secret
    if isinstance(key, str):
        key = key.encode("utf-8")
    text = json.dumps(material, ensure_ascii=True, separators=(",", ":"))
    mac = hmac.new(key, text.encode("ascii"), hashlib.sha256).hexdigest()
    return f"credentials:{mac}"


# -- the engine ---------------------------------------------------------------------------
def _is_text(value: str) -> bool:
    """Whether ``value`` is text: no lone surrogate (what undecodable bytes become under
    ``surrogateescape``), so that it hashes and logs as itself."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _default_keep(response: HTTPResponse) -> bool:
    """Keep a response unless the caller was refused (401, 403), asked to retry (408, 425,
    429) or the server failed (>= 500)."""
    return response.status < 500 and response.status not in NEVER_KEPT_STATUSES


class _Streamed(HTTPResponse):
    """A response an adapter already sent, streamed, because its body exceeded
    ``max_body_bytes``: never stored (its key completes as "not stored"), never resent."""


class HTTPIdempotency:
    """Idempotency-Key handling for any HTTP transport, over one store.

    ``idempotency`` is an :class:`~idempotence.Idempotency` (its store and its ``lease``,
    ``ttl``, ``heartbeat``, ``on_in_progress``, ``wait_timeout``, ``local_cache`` and
    ``fail_open`` apply), a :class:`~idempotence.stores.Store`, a store URL, or ``None``
    (the default store). Options:

    - ``methods``: methods the header applies to (default POST and PATCH); other requests
      pass through untouched.
    - ``header``: the header name (default ``Idempotency-Key``).
    - ``required``: a request without the header gets 400; ``False`` (default) runs it
      normally, without idempotency.
    - ``scope``: ``request -> str | None``, the caller identity mixed into the key so one
      caller can never replay another's response. Default: :func:`request_scope` - the
      verified ``request.principal``, else a keyed hash of the request's credentials
      (``credential_headers``, default ``Authorization`` and ``X-Api-Key``, and the cookies
      named in ``credential_cookies``, default none; HMAC-SHA256 keyed by ``scope_secret``,
      default a fixed library label), else unscoped. Use only an identity the app has
      verified; a stable tenant id keeps retries after a token refresh in one scope.
    - ``keep``: ``response -> bool``, whether a response is stored (default: not 401, 403,
      408, 425, 429 nor >= 500, see :data:`NEVER_KEPT_STATUSES`). A response not kept
      releases the key, so the next request with it runs again.
    - ``retry_after``: the ``Retry-After`` seconds of a 409 ``in-progress`` (default 1): a
      short polling hint, not the remaining lease.
    - ``max_request_bytes``: larger request bodies (default 10 MiB) get 413
      ``request-too-large``; the adapters stop reading the body there.
    - ``replay_headers``: ``"all"`` (default) or a collection of header names: the response
      headers stored and replayed. Hop-by-hop headers (:data:`HOP_BY_HOP_HEADERS`, the ones
      named in ``Connection``, ``Proxy-*``) are never stored; ``Set-Cookie`` only with
      ``replay_set_cookie=True`` (a replay would hand a session to whoever holds the key).
    - ``max_body_bytes``: responses with larger bodies (default 1 MiB) are completed as "not
      replayable": the first caller gets its response (the adapters stop buffering there
      and stream the rest), duplicates get 500 ``response-not-stored`` and the app never
      runs twice.
    - ``on_in_progress``: ``"raise"`` (409 + Retry-After) or ``"wait"`` for the first
      request's response (up to ``wait_timeout``); default: the Idempotency's setting.
    - ``namespace``: key prefix (default ``"http"``).

    Exceptions raised by the app propagate unchanged (the key is released). Exceptions
    raised by ``scope`` are logged and answered with 500 ``callback-failed`` (their text is
    never sent); one raised by ``keep`` is logged and completes the key as not replayable.
    Once the app has produced a response, that response is what the caller gets, even if
    the store then fails to keep it (logged as a warning).
    """

    def __init__(
        self,
        idempotency: IdempotencyBase | Store | str | None = None,
        *,
        methods: Collection[str] = ("POST", "PATCH"),
        header: str = "Idempotency-Key",
        required: bool = False,
        scope: Callable[[HTTPRequest], str | None] | None = None,
        keep: Callable[[HTTPResponse], bool] | None = None,
        replay_headers: Literal["all"] | Collection[str] = "all",
        replay_set_cookie: bool = False,
        max_body_bytes: int = 1024 * 1024,
        on_in_progress: Literal["raise", "wait"] | None = None,
        namespace: str = "http",
        credential_headers: Collection[str] = DEFAULT_CREDENTIAL_HEADERS,
        credential_cookies: Collection[str] = (),
        scope_secret: bytes | str | None = None,
        retry_after: float = 1,
        max_request_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        if isinstance(idempotency, IdempotencyBase):
            self.idempotency: IdempotencyBase = idempotency
        else:
            self.idempotency = IdempotencyBase(idempotency)
        config = self.idempotency.config
        self.methods = frozenset(m.upper() for m in methods)
        if not header or not header.isascii():
            raise ValueError(f"header must be an ASCII header name, got {header!r}")
        self.header = header
        self.required = required
        if isinstance(credential_headers, str) or isinstance(credential_cookies, str):
            raise TypeError("credential_headers/credential_cookies must be collections of names")
        self.credential_headers = tuple(h.lower() for h in credential_headers)
        self.credential_cookies = tuple(credential_cookies)
        self._scope_secret = scope_secret
        self.scope: Callable[[HTTPRequest], str | None] = (
            scope if scope is not None else self._default_scope
        )
        if not retry_after > 0 or not math.isfinite(retry_after):
            raise ValueError("retry_after must be a positive number of seconds")
        self.retry_after = retry_after
        if max_request_bytes < 0:
            raise ValueError("max_request_bytes must be >= 0")
        self.max_request_bytes = max_request_bytes
        self.keep = keep if keep is not None else _default_keep
        if replay_headers == "all":
            self.replay_headers: frozenset[str] | None = None
        elif isinstance(replay_headers, str):
            raise TypeError("replay_headers must be 'all' or a collection of header names")
        else:
            self.replay_headers = frozenset(h.lower() for h in replay_headers)
        self.replay_set_cookie = replay_set_cookie
        if max_body_bytes < 0:
            raise ValueError("max_body_bytes must be >= 0")
        self.max_body_bytes = max_body_bytes
        mode = on_in_progress if on_in_progress is not None else config.on_in_progress
        if mode not in ("raise", "wait"):
            raise ValueError(f"on_in_progress must be 'raise' or 'wait', got {mode!r}")
        self.on_in_progress = mode
        self.namespace = check_namespace(namespace)
        self._cache = LocalCache(config.local_cache) if config.local_cache else None

    @property
    def store(self) -> Store:
        """The store (resolved from a URL on first use)."""
        return self.idempotency.store

    # -- derivation -----------------------------------------------------------------------
    def _default_scope(self, request: HTTPRequest) -> str | None:
        return request_scope(
            request,
            credential_headers=self.credential_headers,
            credential_cookies=self.credential_cookies,
            secret=self._scope_secret,
        )

    def too_large(self) -> HTTPResponse:
        """The 413 ``request-too-large`` answer (adapters send it without reading on)."""
        return problem(
            "request-too-large", f"the request body exceeds {self.max_request_bytes} bytes"
        )

    def applies_to(self, method: str) -> bool:
        """Whether requests with ``method`` are handled (others pass through)."""
        return method.upper() in self.methods

    def key_for(self, request: HTTPRequest, key: str) -> str:
        """The store key of header value ``key`` sent by ``request``'s caller."""
        return self._store_key(self.scope(request), key)

    def _store_key(self, scope: str | None, key: str) -> str:
        return f"{self.namespace}#{digest([scope, key])}"

    def fingerprint_for(self, request: HTTPRequest) -> str:
        """Hash of method + path + query + body; a JSON body (by content type) that parses
        counts by its canonical form, so key order and whitespace do not matter (numbers
        keep the precision of the text: ``1.0`` and ``1.0000000000000001`` differ)."""
        body: Any = ["raw", hashlib.sha256(request.body).hexdigest()]
        ctype = request.header("content-type")
        if request.body and ctype is not None and _JSON_TYPE.match(ctype):
            with contextlib.suppress(ValueError, RecursionError, InvalidKeyError):
                body = ["json", digest(loads_exact(request.body))]
        return digest([request.method.upper(), request.path, request.query, body])

    def stored_headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The response headers kept for replays under the ``replay_headers`` policy."""
        headers = list(headers)
        dropped = set(HOP_BY_HOP_HEADERS)
        for k, v in headers:
            if k.lower() == "connection":
                dropped.update(t.strip().lower() for t in v.split(","))
        if not self.replay_set_cookie:
            dropped.add("set-cookie")
        dropped.add(REPLAYED_HEADER.lower())
        out = []
        for k, v in headers:
            name = k.lower()
            if name in dropped or name.startswith("proxy-"):
                continue
            if self.replay_headers is not None and name not in self.replay_headers:
                continue
            out.append((k, v))
        return out

    def prepare(
        self, request: HTTPRequest, *, lease: float | None = None
    ) -> Plan | HTTPResponse | None:
        """Decide before any I/O: ``None`` (run the app without idempotency), a refusal
        (a problem response to send as is), or the :class:`Plan` to run. ``lease``
        overrides the configured lease for this request (the Lambda adapter passes the
        invocation's remaining time)."""
        if not self.applies_to(request.method) or is_disabled():
            return None
        values = request.header_values(self.header)
        if not values:
            if self.required:
                return problem(
                    "missing-key",
                    f"{request.method.upper()} requests must carry an {self.header} header "
                    "(a unique value per operation, reused on its retries)",
                )
            return None
        if len(values) > 1:
            return problem("invalid-key", f"send exactly one {self.header} header")
        try:
            key = parse_idempotency_key(values[0])
        except InvalidKeyError as exc:
            return problem("invalid-key", str(exc))
        if key is None:  # pragma: no cover - values[0] is a str
            return None
        if len(request.body) > self.max_request_bytes:
            return self.too_large()
        if not all(_is_text(part) for part in (request.method, request.path, request.query)):
            return problem(
                "invalid-request", "the request's method, path or query is not valid text"
            )
        try:
            scope = self.scope(request)
            if scope is not None and not isinstance(scope, str):
                raise TypeError(f"scope returned {type(scope).__name__}, not str or None")
        except Exception:
            log.exception("the scope callback raised; answering 500 callback-failed")
            return problem(
                "callback-failed", "the server could not scope this request; see its log"
            )
        try:
            store_key = self._store_key(scope, key)
            fingerprint = self.fingerprint_for(request)
        except InvalidKeyError:  # a lone surrogate, say: not a text any hash can take
            return problem(
                "invalid-request",
                "the request's method, path, query or scope is not valid text",
            )
        c = self.idempotency.config
        return Plan(
            key=store_key,
            fingerprint=fingerprint,
            lease=c.lease_s if lease is None else lease,
            ttl=c.ttl_s,
            encode=self._encode,
            replay=self._replay,
            encode_not_stored=not_stored,
            should_store=self._should_store,
            wait=self.on_in_progress == "wait",
            wait_timeout=c.wait_timeout_s,
            cache=self._cache,
            fail_open=c.fail_open,
        )

    # -- results --------------------------------------------------------------------------
    def _should_store(self, result: Any) -> bool:
        response = _response(result)
        try:
            return bool(self.keep(response))
        except Exception as exc:
            log.exception("the keep callback raised; the key is completed as not replayable")
            # Only the type: the text of a user's exception is not stored nor sent.
            raise UnencodableError(
                f"the keep callback raised {type(exc).__name__} (see the server log)"
            ) from None

    def _encode(self, result: Any) -> bytes:
        response = _response(result)
        if isinstance(response, _Streamed):
            raise UnencodableError(
                f"the response body exceeded max_body_bytes ({self.max_body_bytes}) and was "
                "streamed to the first caller"
            )
        if len(response.body) > self.max_body_bytes:
            raise UnencodableError(
                f"the response body is {len(response.body)} bytes, more than max_body_bytes "
                f"({self.max_body_bytes})"
            )
        data = HTTPResponse(
            response.status, self.stored_headers(response.headers), response.body
        ).encode()
        limit = self.store.max_result_bytes
        if len(data) > limit:
            raise UnencodableError(
                f"the encoded response is {len(data)} bytes, more than this store keeps "
                f"({limit} bytes)"
            )
        return data

    def _replay(self, record: Record) -> HTTPResponse:
        data = record.result
        try:
            if data is None:
                raise CorruptRecordError("completed record holds no response")
            kind, _ = open_envelope(data)
            if kind == KIND_NOT_STORED:
                return problem(
                    "response-not-stored",
                    "a request with this key was processed, but its response could not be "
                    "kept (too large, or the keep callback failed: see the server log); it "
                    "is not run again. Check the resource's state instead of retrying.",
                )
            stored = HTTPResponse.decode(data)
        except (CorruptRecordError, RecursionError, ValueError, TypeError) as exc:
            log.error(
                "a stored HTTP response is corrupt (%s)",
                type(exc).__name__,
                extra=self._log_fields("record_corrupt"),
            )
            return problem("record-corrupt", "the stored response cannot be read")
        headers = [*stored.headers, (REPLAYED_HEADER, "true")]
        return HTTPResponse(stored.status, headers, stored.body)

    def _log_fields(self, outcome: str) -> dict[str, str]:
        """``extra=`` fields of a record about one request (docs/observability.md)."""
        return {"idempotence_outcome": outcome, "idempotence_namespace": self.namespace}

    def _refusal(self, exc: IdempotencyError, produced: list[HTTPResponse]) -> HTTPResponse:
        """The answer when the protocol raised one of our errors (not the app)."""
        if produced:  # the app ran: its response is the truth, whatever the store did next
            log.warning(
                "returning the app's response although the store did not keep it (%s)",
                type(exc).__name__,
                extra=self._log_fields(_OUTCOMES.get(type(exc).__name__, "store_error")),
            )
            return produced[0]
        if isinstance(exc, KeyReuseError):
            return problem(
                "key-reused",
                f"this {self.header} was used with a different request (method, path, query "
                "or body); use a new key for a new operation",
            )
        if isinstance(exc, AlreadyInProgressError):
            return problem(
                "in-progress",
                f"a request with this {self.header} is still being processed; retry later "
                "with the same key",
                retry_after=self.retry_after,
            )
        if isinstance(exc, StoreError):
            log.error(
                "idempotency store failed (%s); refusing the request (fail closed)",
                type(exc).__name__,
                extra=self._log_fields("store_error"),
            )
            return problem(
                "store-unavailable",
                "the request was not processed; retry later with the same key",
                retry_after=_STORE_RETRY_AFTER,
            )
        if isinstance(exc, CorruptRecordError):
            log.error(
                "a stored HTTP response is corrupt (%s)",
                type(exc).__name__,
                extra=self._log_fields("record_corrupt"),
            )
            return problem("record-corrupt", "the stored response cannot be read")
        raise exc

    # -- running --------------------------------------------------------------------------
    def run(
        self,
        request: HTTPRequest,
        call: Callable[[], HTTPResponse],
        *,
        lease: float | None = None,
    ) -> HTTPResponse:
        """Answer ``request``: ``call()`` produces the app's response and runs at most once
        per key; duplicates get the stored response (or a problem response). ``lease`` as
        for :meth:`prepare`."""
        prepared = self.prepare(request, lease=lease)
        if prepared is None:
            return call()
        if isinstance(prepared, HTTPResponse):
            return prepared
        return self.execute(prepared, call)

    async def arun(
        self,
        request: HTTPRequest,
        call: Callable[[], Awaitable[HTTPResponse]],
        *,
        lease: float | None = None,
    ) -> HTTPResponse:
        """The ``async`` twin of :meth:`run`: ``await call()`` runs at most once per key."""
        prepared = self.prepare(request, lease=lease)
        if prepared is None:
            return await call()
        if isinstance(prepared, HTTPResponse):
            return prepared
        return await self.aexecute(prepared, call)

    def execute(self, plan: Plan, call: Callable[[], HTTPResponse]) -> HTTPResponse:
        """Run a plan returned by :meth:`prepare` (for adapters that act on it first)."""
        produced: list[HTTPResponse] = []
        app_raised: list[bool] = []

        def body() -> HTTPResponse:
            try:
                response = _response(call())
            except BaseException:
                app_raised.append(True)
                raise
            produced.append(response)
            return response

        try:
            return _response(
                run_sync(plan, self.store, body, heartbeat=self.idempotency.config.heartbeat)
            )
        except IdempotencyError as exc:
            if app_raised:
                raise
            return self._refusal(exc, produced)

    async def aexecute(
        self, plan: Plan, call: Callable[[], Awaitable[HTTPResponse]]
    ) -> HTTPResponse:
        """The ``async`` twin of :meth:`execute`."""
        produced: list[HTTPResponse] = []
        app_raised: list[bool] = []

        async def body() -> HTTPResponse:
            try:
                response = _response(await call())
            except BaseException:
                app_raised.append(True)
                raise
            produced.append(response)
            return response

        try:
            return _response(
                await run_async(plan, self.store, body, heartbeat=self.idempotency.config.heartbeat)
            )
        except IdempotencyError as exc:
            if app_raised:
                raise
            return self._refusal(exc, produced)


def _response(value: Any) -> HTTPResponse:
    if not isinstance(value, HTTPResponse):
        raise TypeError(f"the app must produce an HTTPResponse, got {type(value).__name__}")
    return value
