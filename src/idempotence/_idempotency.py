"""``Idempotency``: decorators that make functions idempotent over a store."""

from __future__ import annotations

import functools
import typing
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from ._config import IdempotencyConfig
from ._errors import MissingKeyError
from ._record import Record
from .base import IdempotencyBase, default_store_url
from .engine import Operation, arun, is_disabled, name_of, run

__all__ = [
    "Idempotency",
    "IdempotentFunction",
    "default_store_url",
    "idempotent",
    "idempotent_handler",
]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
H = TypeVar("H", bound=Callable[..., Any])

#: A plain function decorated with ``(event, context)`` parameters is an AWS Lambda handler:
#: the context (request id, remaining time) differs on every delivery, so it never enters
#: the payload (the event does).
_LAMBDA_PARAMETERS = ["event", "context"]


class IdempotentFunction(Protocol[P, R_co]):
    """What an idempotent decorator returns: the function, plus ways to inspect it."""

    @property
    def __wrapped__(self) -> Callable[P, R_co]:
        """The undecorated function."""
        ...

    @property
    def idempotency_config(self) -> IdempotencyConfig:
        """The options in force for this function."""
        ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def key_for(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The idempotency key a call with these arguments uses."""
        ...

    def fingerprint_for(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The fingerprint a call with these arguments records."""
        ...

    def record_for(self, *args: P.args, **kwargs: P.kwargs) -> Record | None:
        """The stored record for these arguments, or ``None``."""
        ...

    def forget(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Delete the stored record for these arguments (the next call runs again)."""
        ...


class Idempotency(IdempotencyBase):
    """Makes functions idempotent over one store.

    ``store`` is a :class:`~idempotence.stores.Store`, a store URL (see
    :func:`~idempotence.stores.store_from_url`), or ``None`` for
    :func:`default_store_url`. A URL is checked here, without I/O (scheme, location, table
    name, options: ``ValueError`` names the problem and the known options); the store is
    built from it on first use. ``options`` are the defaults
    of every decorator made here (see :class:`IdempotencyConfig`); a ``namespace`` given here
    prefixes each function's ``module.qualname``, while one given to a decorator replaces it.

    Use it as a decorator, bare or with overrides::

        idem = Idempotency("sqlite:///idempotency.db", ttl=3600)

        @idem(key="order_id")
        def create_order(order: dict) -> dict: ...

        @idem
        async def send_email(msg: dict) -> None: ...
    """

    @overload
    def __call__(self, fn: Callable[P, R], /) -> IdempotentFunction[P, R]: ...

    @overload
    def __call__(
        self, fn: None = None, /, **options: Any
    ) -> Callable[[Callable[P, R]], IdempotentFunction[P, R]]: ...

    def __call__(
        self, fn: Callable[P, R] | None = None, /, **options: Any
    ) -> IdempotentFunction[P, R] | Callable[[Callable[P, R]], IdempotentFunction[P, R]]:
        if fn is None:
            self.config.replace(**options)  # an unknown or invalid option fails here
            return lambda f: self._decorate(f, options)
        if options:
            raise TypeError("pass options as @idem(key=...), not together with the function")
        return self._decorate(fn, {})

    @overload
    def handler(self, fn: H, /) -> H: ...

    @overload
    def handler(self, fn: None = None, /, **options: Any) -> Callable[[H], H]: ...

    def handler(self, fn: H | None = None, /, **options: Any) -> H | Callable[[H], H]:
        """Decorate an AWS Lambda ``handler(event, context)`` (sync or ``async def``).

        Keys come from the event source: the ``Idempotency-Key`` header for API Gateway,
        ALB and function URL events (refusals and replays answered as proxy responses),
        the source's stable record ids for SQS, SNS, S3, Kinesis, DynamoDB Streams, Kafka and
        EventBridge, the whole event otherwise; ``key=`` (JMESPath over the event, e.g.
        ``"powertools_json(body).order_id"``) overrides. The lease is the invocation's
        remaining time plus ``lease_margin`` (default 5 s) unless ``lease=`` is given;
        heartbeats are off unless ``heartbeat=True``. ``required`` defaults to ``False``
        for HTTP events (no header: run without idempotency) and to the configured value
        otherwise. HTTP-only options: ``methods``, ``header``, ``keep``,
        ``replay_headers``, ``replay_set_cookie``, ``max_body_bytes`` (see
        :class:`~idempotence.http.HTTPIdempotency`). See ``docs/lambda.md``.
        """
        from .aws_lambda import decorate_handler

        if fn is None:
            return lambda f: decorate_handler(self, f, options)
        if options:
            raise TypeError("pass options as @idem.handler(key=...), not with the function")
        return decorate_handler(self, fn, {})

    def process_batch(
        self,
        event: Any,
        record_handler: Callable[[Any], Any],
        *,
        context: Any = None,
        **options: Any,
    ) -> dict[str, list[dict[str, Any]]]:
        """Run ``record_handler(record)`` once per record of an SQS, Kinesis, DynamoDB
        Streams or Kafka (Amazon MSK, self-managed) ``event``, each idempotent on the
        record's own stable id (``key=`` overrides), and return the partial batch response
        ``{"batchItemFailures": [{"itemIdentifier": ...}]}`` (SQS ``messageId``, Kinesis
        ``kinesis.sequenceNumber``, DynamoDB ``dynamodb.SequenceNumber``, Kafka
        ``{"partition": "<topic>-<partition>", "offset": <offset>}``).

        The AWS Lambda adapter (:mod:`idempotence.aws_lambda`) is imported on first use.

        A record that raises - or is in progress elsewhere (``AlreadyInProgressError``),
        or was used with other content (``KeyReuseError``) - is reported and the others
        still run; on an SQS FIFO queue (or with ``stop_on_failure=True``) processing stops
        at the first failure and every later record is reported too. Records already done
        are replayed, not run. The lease is ``context``'s remaining time plus
        ``lease_margin`` unless ``lease=`` is given. Other ``options`` as for decorators.

        The records are claimed in one store request before the first runs and completed in
        one after the last (``docs/batch.md``); ``batch_claims=False`` sends a claim and a
        completion per record instead.
        """
        from .aws_lambda import process_batch

        return process_batch(self, event, record_handler, context=context, **options)

    async def aprocess_batch(
        self,
        event: Any,
        record_handler: Callable[[Any], Awaitable[Any]],
        *,
        context: Any = None,
        **options: Any,
    ) -> dict[str, list[dict[str, Any]]]:
        """The ``async`` twin of :meth:`process_batch`: ``await record_handler(record)``,
        records one after the other (in order, so FIFO semantics hold)."""
        from .aws_lambda import aprocess_batch

        return await aprocess_batch(self, event, record_handler, context=context, **options)

    def _decorate(self, fn: Callable[P, R], options: dict[str, Any]) -> IdempotentFunction[P, R]:
        import inspect

        if not callable(fn):
            hint = (
                " (to select the key, pass it by name: @idem(key=...))"
                if isinstance(fn, str)
                else ""
            )
            raise TypeError(
                "Idempotency decorates a function: use @idem, or @idem(key=..., ttl=...) with "
                f"options by name; got a {type(fn).__name__}{hint}"
            )
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"{name_of(fn)} is a generator: its results cannot be stored; "
                "decorate a function that returns a value"
            )
        config = self.config.replace(**options) if options else self.config
        namespace = self.namespace_for(fn, options.get("namespace"))
        lambda_handler = list(inspect.signature(fn).parameters) == _LAMBDA_PARAMETERS
        bound = Operation(fn, config, namespace, exclude=("context",) if lambda_handler else ())
        idem = self
        lease = config.lease_s
        warned: list[bool] = []

        def warn_disabled() -> None:
            if not warned:
                warned.append(True)
                warnings.warn(
                    f"IDEMPOTENCE_DISABLED is set: {bound.name} runs without idempotency",
                    RuntimeWarning,
                    stacklevel=3,
                )

        wrapper: Any
        if bound.is_async:
            afn = typing.cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                if is_disabled():
                    warn_disabled()
                    return await afn(*args, **kwargs)
                payload = bound.payload(args, kwargs)
                key = bound.key(
                    payload, bound.arguments(args, kwargs) if bound.needs_arguments else None
                )
                if key is None:
                    return await afn(*args, **kwargs)
                store = idem.store
                return await arun(
                    bound.plan(key, bound.fingerprint(payload), store, lease),
                    store,
                    functools.partial(afn, *args, **kwargs),
                    heartbeat=config.heartbeat,
                )

        else:

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if is_disabled():
                    warn_disabled()
                    return fn(*args, **kwargs)
                payload = bound.payload(args, kwargs)
                key = bound.key(
                    payload, bound.arguments(args, kwargs) if bound.needs_arguments else None
                )
                if key is None:
                    return fn(*args, **kwargs)
                store = idem.store
                return run(
                    bound.plan(key, bound.fingerprint(payload), store, lease),
                    store,
                    functools.partial(fn, *args, **kwargs),
                    heartbeat=config.heartbeat,
                )

        def key_for(*args: Any, **kwargs: Any) -> str:
            arguments = bound.arguments(args, kwargs) if bound.needs_arguments else None
            key = bound.key(bound.payload(args, kwargs), arguments)
            if key is None:
                raise MissingKeyError(f"this call to {bound.name} has no key material")
            return key

        def fingerprint_for(*args: Any, **kwargs: Any) -> str:
            return bound.fingerprint(bound.payload(args, kwargs))

        def record_for(*args: Any, **kwargs: Any) -> Record | None:
            return idem.store.get(key_for(*args, **kwargs))

        def forget(*args: Any, **kwargs: Any) -> bool:
            key = key_for(*args, **kwargs)
            if bound.cache is not None:
                bound.cache.clear()
            return idem.store.delete(key)

        wrapper.key_for = key_for
        wrapper.fingerprint_for = fingerprint_for
        wrapper.record_for = record_for
        wrapper.forget = forget
        wrapper.idempotency_config = config
        return typing.cast(IdempotentFunction[P, R], wrapper)


_default = Idempotency()


@overload
def idempotent(fn: Callable[P, R], /) -> IdempotentFunction[P, R]: ...


@overload
def idempotent(
    fn: None = None, /, **options: Any
) -> Callable[[Callable[P, R]], IdempotentFunction[P, R]]: ...


def idempotent(
    fn: Callable[P, R] | None = None, /, **options: Any
) -> IdempotentFunction[P, R] | Callable[[Callable[P, R]], IdempotentFunction[P, R]]:
    """Module-level decorator over the default store (``IDEMPOTENCE_STORE`` or SQLite, see
    :func:`default_store_url`), resolved on first call. Same options as
    :class:`Idempotency`."""
    return _default(fn, **options) if fn is None else _default(fn)


@overload
def idempotent_handler(fn: H, /) -> H: ...


@overload
def idempotent_handler(fn: None = None, /, **options: Any) -> Callable[[H], H]: ...


def idempotent_handler(fn: H | None = None, /, **options: Any) -> H | Callable[[H], H]:
    """Module-level :meth:`Idempotency.handler` over the default store
    (``IDEMPOTENCE_STORE``, e.g. ``dynamodb://my-table``; see :func:`default_store_url`)."""
    return _default.handler(fn, **options) if fn is None else _default.handler(fn)
