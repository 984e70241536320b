"""``idempotent`` and ``idempotent_function`` with Powertools' signatures, over the engine
of :class:`idempotence.Idempotency` (fencing, heartbeats, async functions)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import typing
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from ... import (
    AlreadyInProgressError,
    Idempotency,
    KeyReuseError,
    MissingKeyError,
    Record,
    StoreError,
)
from ._config import IdempotencyConfig
from ._keys import dumps_response, hasher, selector, validation_selector
from ._persistence import BasePersistenceLayer, DataRecord
from .exceptions import (
    BaseError,
    IdempotencyAlreadyInProgressError,
    IdempotencyKeyError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from .serialization import BaseIdempotencySerializer, NoOpSerializer

__all__ = ["idempotent", "idempotent_function"]

F = TypeVar("F", bound=Callable[..., Any])

_TRUE = {"1", "y", "yes", "t", "true", "on"}

#: Retention of an in-progress claim without renewal: 60 s, renewed every 20 s while the
#: function runs (Powertools holds a claim for the Lambda's remaining time, or for the
#: whole expiry when no context is registered).
LEASE_SECONDS = 60.0


def _disabled() -> bool:
    """``POWERTOOLS_IDEMPOTENCY_DISABLED`` set to a true value (Powertools' ``strtobool``)."""
    return os.environ.get("POWERTOOLS_IDEMPOTENCY_DISABLED", "false").lower() in _TRUE


def _warn_disabled() -> None:
    warnings.warn(
        "Disabling idempotency is intended for development environments only and should "
        "not be used in production.",
        UserWarning,
        stacklevel=3,
    )


class _ResponseCodec:
    """Stores the response as Powertools does (``data``: JSON text of the serialized
    response) and rebuilds it with the output serializer. Unlike Powertools, falsy
    responses replay as themselves (Powertools replays ``0``, ``""``, ``[]``... as
    ``None``)."""

    def __init__(self, output: BaseIdempotencySerializer) -> None:
        self.output = output

    def encode(self, value: Any) -> bytes:
        data = self.output.to_dict(value) if value is not None else None
        return dumps_response(data).encode("utf-8")

    def decode(self, data: bytes, hint: Any) -> Any:
        value = json.loads(data)
        return self.output.from_dict(value) if value is not None else None


def _translate(exc: BaseException) -> BaseException | None:
    """The Powertools-named twin of an engine refusal (``None``: raise it as it is)."""
    if isinstance(exc, BaseError):
        return None
    key = getattr(exc, "key", None)
    if isinstance(exc, AlreadyInProgressError):
        return IdempotencyAlreadyInProgressError(str(exc), key=key, retry_after=exc.retry_after)
    if isinstance(exc, KeyReuseError):
        return IdempotencyValidationError(str(exc), key=key)
    if isinstance(exc, MissingKeyError):
        return IdempotencyKeyError(str(exc), key=key)
    if isinstance(exc, StoreError):
        return IdempotencyPersistenceLayerError(str(exc), key=key, result=exc.result)
    return None


class _Engine:
    """One decorated function: the engine decorator per key prefix (Powertools recomputes
    the prefix from ``AWS_LAMBDA_FUNCTION_NAME`` on every call)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        layer: BasePersistenceLayer,
        config: IdempotencyConfig,
        output: BaseIdempotencySerializer,
        key_prefix: str | None,
    ) -> None:
        if not isinstance(layer, BasePersistenceLayer):
            raise TypeError(
                "persistence_store must be a persistence layer of idempotence.compat."
                f"powertools (DynamoDBPersistenceLayer...), got {type(layer).__name__}"
            )
        self.fn = fn
        self.layer = layer
        self.config = config
        self.key_prefix = key_prefix
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self.is_async = inspect.iscoroutinefunction(fn)
        hook = config.response_hook
        on_replay = None
        if hook is not None:

            def on_replay(value: Any, record: Record) -> Any:
                return hook(value, DataRecord.from_record(record))

        validation = bool(config.payload_validation_jmespath)
        self.idem = Idempotency(
            layer,
            key=selector(config),
            fingerprint=validation_selector(config) if validation else False,
            ttl=config.expires_after_seconds,
            lease=LEASE_SECONDS,
            local_cache=config.local_cache_max_items if config.use_local_cache else 0,
            required=False,  # the selector applies raise_on_no_idempotency_key itself
            serializer=_ResponseCodec(output),
            on_replay=on_replay,
            key_hash=hasher(config.hash_function),
        )
        self._by_prefix: dict[str, Callable[..., Any]] = {}

    def decorated(self) -> Callable[..., Any]:
        """The engine-decorated runner for the current key prefix."""
        self.layer.configure(self.config, self.name, self.key_prefix)
        prefix = self.layer.function_name
        runner = self._by_prefix.get(prefix)
        if runner is None:
            if self.is_async:

                async def run_async(payload: Any, call: Callable[[], Awaitable[Any]]) -> Any:
                    return await call()

                runner = self.idem(namespace=prefix, payload="payload")(run_async)
            else:

                def run(payload: Any, call: Callable[[], Any]) -> Any:
                    return call()

                runner = self.idem(namespace=prefix, payload="payload")(run)
            self._by_prefix[prefix] = runner
        return runner

    def call(self, payload: Any, call: Callable[[], Any]) -> Any:
        try:
            return self.decorated()(payload, call)
        except (AlreadyInProgressError, KeyReuseError, MissingKeyError, StoreError) as exc:
            twin = _translate(exc)
            if twin is None:
                raise
            raise twin from exc

    async def acall(self, payload: Any, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await self.decorated()(payload, call)
        except (AlreadyInProgressError, KeyReuseError, MissingKeyError, StoreError) as exc:
            twin = _translate(exc)
            if twin is None:
                raise
            raise twin from exc


def idempotent(
    handler: Callable[..., Any] | None = None,
    *,
    persistence_store: BasePersistenceLayer,
    config: IdempotencyConfig | None = None,
    key_prefix: str | None = None,
    **kwargs: Any,
) -> Any:
    """Make a Lambda ``handler(event, context)`` idempotent on its event (Powertools'
    ``@idempotent(persistence_store=..., config=..., key_prefix=...)``).

    The key is Powertools' (``event_key_jmespath`` over the event, hashed), the record
    Powertools' layout, so Powertools and this decorator replay each other's results and
    exclude each other's runs. ``async def`` handlers are supported.
    """
    if handler is None:
        return functools.partial(
            idempotent,
            persistence_store=persistence_store,
            config=config,
            key_prefix=key_prefix,
            **kwargs,
        )
    cfg = config or IdempotencyConfig()
    engine = _Engine(handler, persistence_store, cfg, NoOpSerializer(), key_prefix)

    if engine.is_async:

        @functools.wraps(handler)
        async def async_wrapper(event: Any, context: Any, **kw: Any) -> Any:
            if _disabled():
                _warn_disabled()
                return await handler(event, context, **kw)
            cfg.register_lambda_context(context)
            return await engine.acall(event, lambda: handler(event, context, **kw))

        return async_wrapper

    @functools.wraps(handler)
    def wrapper(event: Any, context: Any, **kw: Any) -> Any:
        if _disabled():
            _warn_disabled()
            return handler(event, context, **kw)
        cfg.register_lambda_context(context)
        return engine.call(event, lambda: handler(event, context, **kw))

    return wrapper


def _return_type(fn: Callable[..., Any]) -> Any:
    """The return annotation, resolved when it is a string (``from __future__ import
    annotations``; Powertools would pass the string on and fail), else as written."""
    hint = fn.__annotations__.get("return", None)
    if isinstance(hint, str):
        with contextlib.suppress(Exception):  # unresolvable: the serializer reports it
            hint = typing.get_type_hints(fn).get("return", hint)
    return hint


def idempotent_function(
    function: F | None = None,
    *,
    data_keyword_argument: str,
    persistence_store: BasePersistenceLayer,
    config: IdempotencyConfig | None = None,
    output_serializer: Any = None,
    key_prefix: str | None = None,
    **kwargs: Any,
) -> Any:
    """Make any function idempotent on one keyword argument (Powertools'
    ``@idempotent_function(data_keyword_argument=..., persistence_store=...)``).

    ``output_serializer`` turns the return value into the stored dict and back: an
    instance (``CustomDictSerializer(...)``, ``DataclassSerializer(Model)``) or a model
    serializer class (``PydanticSerializer``, ``DataclassSerializer``) built from the
    return annotation. Calls must pass ``data_keyword_argument`` by keyword
    (``RuntimeError`` otherwise, as in Powertools). ``async def`` functions are supported.
    """
    if function is None:
        return functools.partial(
            idempotent_function,
            data_keyword_argument=data_keyword_argument,
            persistence_store=persistence_store,
            config=config,
            output_serializer=output_serializer,
            key_prefix=key_prefix,
            **kwargs,
        )
    fn: Callable[..., Any] = function
    output = output_serializer
    if inspect.isclass(output) and callable(getattr(output, "instantiate", None)):
        output = cast(Any, output).instantiate(_return_type(fn))
    engine = _Engine(
        fn, persistence_store, config or IdempotencyConfig(), output or NoOpSerializer(), key_prefix
    )

    def payload_of(kw: dict[str, Any]) -> Any:
        if data_keyword_argument not in kw:
            raise RuntimeError(
                f"Unable to extract '{data_keyword_argument}' from keyword arguments. Ensure "
                "this exists in your function's signature as well as the caller used it as a "
                "keyword argument"
            )
        return kw[data_keyword_argument]

    if engine.is_async:

        @functools.wraps(fn)
        async def async_decorate(*args: Any, **kw: Any) -> Any:
            if _disabled():
                _warn_disabled()
                return await fn(*args, **kw)
            return await engine.acall(payload_of(kw), lambda: fn(*args, **kw))

        return cast(F, async_decorate)

    @functools.wraps(fn)
    def decorate(*args: Any, **kw: Any) -> Any:
        if _disabled():
            _warn_disabled()
            return fn(*args, **kw)
        return engine.call(payload_of(kw), lambda: fn(*args, **kw))

    return cast(F, decorate)
