"""Idempotent Celery tasks: a message delivered twice, or sent twice, runs its task once.

Celery delivers a task message at least once: with ``acks_late=True`` a worker killed in
the middle of a task leaves its message unacknowledged and the broker delivers it again;
a producer that times out and resends, or two producers reacting to one event, send the
same work twice under two task ids. :class:`IdempotentTask` is a task base class that
claims a key in an :class:`~idempotence.Idempotency` store before the task body runs,
keeps the body's result, and answers every duplicate with that first result (which is
also what the result backend stores for the duplicate)::

    from celery import Celery
    from idempotence import Idempotency
    from idempotence.celery import IdempotentTask

    app = Celery("orders", broker="redis://localhost:6379/0")
    idem = Idempotency("redis://localhost:6379/0", lease=60)

    @app.task(base=IdempotentTask, idempotency=idem, acks_late=True, name="orders.charge")
    def charge(order_id: str, amount_cents: int) -> dict: ...

Options are task attributes, so they go where Celery's own go (``@app.task(...)`` keyword
arguments, or a subclass): see :class:`IdempotentTask`. See ``docs/celery.md``.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from . import (
    AlreadyInProgressError,
    IdempotencyConfig,
    InvalidKeyError,
    MissingDependencyError,
    MissingKeyError,
)
from .base import IdempotencyBase
from .engine import Operation, is_disabled, run

try:
    from celery import Task
    from celery.exceptions import TaskPredicate
except ImportError as exc:  # pragma: no cover - exercised only without Celery
    raise MissingDependencyError(
        "'celery' is not installed, and idempotence.celery needs it: "
        "pip install 'idempotence[celery]'"
    ) from exc

__all__ = ["DEFAULT_HEADER", "IdempotentTask"]

#: The message header an explicit key is read from by default:
#: ``task.apply_async(args, headers={"idempotency_key": "..."})``.
DEFAULT_HEADER = "idempotency_key"

#: The longest header key accepted (as the HTTP ``Idempotency-Key``).
_MAX_HEADER_KEY = 255

if TYPE_CHECKING:
    _TaskBase = Task[Any, Any]
else:
    _TaskBase = Task


class _ControlFlow(BaseException):
    """Carries one of Celery's control-flow exceptions (``Retry``, ``Ignore``, ``Reject``)
    raised by the body out of the engine: they mean "not done", so the key is released,
    never completed as a stored error, whatever ``store_errors`` lists."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error


class IdempotentTask(_TaskBase):
    """A Celery task whose body runs once per idempotency key; duplicates get its result.

    Use it as ``base=`` of a task and configure it with task attributes (keyword arguments
    of ``@app.task`` or class attributes of a subclass):

    - ``idempotency`` (required): the :class:`~idempotence.Idempotency` (any
      :class:`~idempotence.base.IdempotencyBase`) whose store and default options the
      task uses.
    - ``idempotency_options``: options of this task, as for ``@idem(...)`` (``key``,
      ``fingerprint``, ``payload``, ``ttl``, ``lease``, ``heartbeat``, ``on_in_progress``,
      ``store_errors``, ``namespace``, ``scope``, ``required``, ...; see
      :class:`~idempotence.IdempotencyConfig`). Checked when the task is defined.
    - ``idempotency_header``: the message header holding an explicit key (default
      ``"idempotency_key"``, see :data:`DEFAULT_HEADER`; ``None``: never read a header).
    - ``idempotency_retry``: on :class:`~idempotence.AlreadyInProgressError` (a duplicate
      delivered while the first delivery still runs), retry the task with
      ``self.retry(countdown=...)`` (default ``True``); ``False`` fails the duplicate with
      the error. A task called directly or with ``apply()`` raises it.
    - ``idempotency_retry_countdown``: seconds before that retry; ``None`` (default): the
      error's ``retry_after`` (the time left on the running claim's lease), at least 1.

    **Key.** A message carrying the header (a non-empty string of at most 255 printable
    characters) is keyed by its value, whatever its arguments; otherwise the key comes
    from the task's arguments as for a decorated function: ``key=`` (JMESPath over the
    payload, or a function) or the whole payload, which is the only argument, or all the
    arguments by name (``self`` of a bound task excluded). The fingerprint is the payload
    unless ``fingerprint=`` says otherwise, so a key reused with other arguments fails the
    task with :class:`~idempotence.KeyReuseError`.

    **Namespace.** Keys live under the task's name (``orders.charge``), the name producers
    and workers agree on: it is the same in every worker whatever module path or working
    directory imported the task, so name tasks explicitly (``name=``) to keep their keys
    when code moves. The ``namespace`` of the :class:`~idempotence.Idempotency` prefixes
    it (``prefix.orders.charge``); a ``namespace`` option replaces it.

    **Errors.** A misconfigured task raises ``TypeError`` when Celery defines it (the app
    is finalized or the task first used). A message fails with the error the decorator
    would raise: :class:`~idempotence.KeyReuseError`, :class:`~idempotence.MissingKeyError`,
    :class:`~idempotence.InvalidKeyError` (a malformed header, never quoted),
    :class:`~idempotence.StoreError` (the store failed: the body did not run, unless
    ``fail_open``), :class:`~idempotence.LeaseLostError` (the body finished after another
    delivery took its lapsed claim over, whose record stands).

    **Runs.** The body runs at most once per key while its record is kept (``ttl``). A
    body that raises releases the key: Celery's retry (``autoretry_for``,
    ``self.retry()``, which releases the key even when ``store_errors`` covers it) runs
    it again. A body that returned is never run again: a redelivery, a retry or a second
    message gets the stored result. A worker that dies mid-task (``acks_late=True``)
    leaves a claim that lapses ``lease`` seconds after its last heartbeat; the redelivered
    message then takes the key over.
    """

    idempotency: ClassVar[IdempotencyBase | None] = None
    idempotency_options: ClassVar[Mapping[str, Any]] = {}
    idempotency_header: ClassVar[str | None] = DEFAULT_HEADER
    idempotency_retry: ClassVar[bool] = True
    idempotency_retry_countdown: ClassVar[float | None] = None

    _idempotency_disabled_warned: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "run" in cls.__dict__:  # a task, not a base class: check its options now
            _Settings.of(cls)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task body (through ``Task.__call__``) at most once per key; see the
        class docstring."""
        call = functools.partial(Task.__call__, self, *args, **kwargs)
        if is_disabled():
            self._warn_disabled()
            return call()
        request = self.request
        op, payload, key = self._idempotency_derive(args, kwargs, request)
        if key is None:  # no key material and required=False: run without idempotency
            return call()
        store = _Settings.of(type(self)).idem.store
        plan = op.plan(key, op.fingerprint(payload), store, op.config.lease_s)

        def body() -> Any:
            try:
                return call()
            except TaskPredicate as error:  # Retry, Ignore, Reject: not a result
                raise _ControlFlow(error) from None

        try:
            return run(plan, store, body, heartbeat=op.config.heartbeat)
        except _ControlFlow as flow:
            control = flow.error
        except AlreadyInProgressError as busy:
            if not self.idempotency_retry or request.called_directly or request.is_eager:
                raise
            countdown = self.idempotency_retry_countdown
            if countdown is None:
                countdown = max(1.0, busy.retry_after)
            raise self.retry(exc=busy, countdown=countdown)  # noqa: B904 - retry raises
        raise control

    def idempotency_key_for(
        self,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        header: str | None = None,
    ) -> str:
        """The key a message with these arguments (and this ``idempotency_key`` header
        value, if given) runs under: to look its record up (``idem.store.get(key)``) or
        forget it (``idem.store.delete(key)``). :class:`~idempotence.MissingKeyError`
        when it has no key material."""
        request: dict[str, Any] = {}
        if header is not None and self.idempotency_header is not None:
            request[self.idempotency_header] = header
        _, _, key = self._idempotency_derive(args, kwargs or {}, _Headers(request))
        if key is None:
            raise MissingKeyError(f"this call of task {self.name} has no key material")
        return key

    # -- internals -------------------------------------------------------------------------
    def _idempotency_derive(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], request: Any
    ) -> tuple[Operation[Any, Any], Any, str | None]:
        """The operation, payload and key (``None``: run without idempotency) of a call."""
        settings = _Settings.of(type(self))
        op = settings.op_for(self)
        bound = settings.bind(self, args)
        payload = op.payload(bound, kwargs)
        value = self._header_key(request)
        if value is not None:
            return op, payload, op.key_of(["celery-header", value], payload)
        arguments = op.arguments(bound, kwargs) if op.needs_arguments else None
        return op, payload, op.key(payload, arguments)

    def _header_key(self, request: Any) -> str | None:
        """The message's key header, checked; ``None`` when absent (or not read)."""
        name = self.idempotency_header
        if name is None:
            return None
        headers = getattr(request, "headers", None)
        value = headers.get(name) if isinstance(headers, Mapping) else None
        if value is None and headers is None and not hasattr(type(request), name):
            # A message whose custom headers Celery did not gather: they are attributes of
            # the request (never one of its own fields, such as ``id``).
            value = getattr(request, name, None)
        if value is None:
            return None
        if (
            not isinstance(value, str)
            or not 0 < len(value) <= _MAX_HEADER_KEY
            or not value.isprintable()
        ):
            raise InvalidKeyError(
                f"the {name!r} header of this message for task {self.name} is not a key: "
                f"send a non-empty string of at most {_MAX_HEADER_KEY} printable characters "
                f"(got a {type(value).__name__})"
            )
        return value

    def _warn_disabled(self) -> None:
        cls = type(self)
        if not cls._idempotency_disabled_warned:
            cls._idempotency_disabled_warned = True
            warnings.warn(
                f"IDEMPOTENCE_DISABLED is set: task {self.name} runs without idempotency",
                RuntimeWarning,
                stacklevel=3,
            )


class _Headers:
    """A stand-in request carrying only custom headers (for ``idempotency_key_for``)."""

    def __init__(self, headers: dict[str, Any]) -> None:
        self.headers = headers


class _Settings:
    """The idempotency settings of one task class, checked once: its
    :class:`~idempotence.Idempotency`, config and :class:`~idempotence.engine.Operation`."""

    op: Operation[Any, Any]

    def __init__(self, cls: type[IdempotentTask]) -> None:
        idem = cls.idempotency
        what = f"task {cls.__dict__.get('name') or cls.__qualname__}"
        if not isinstance(idem, IdempotencyBase):
            raise TypeError(
                f"{what} has base=IdempotentTask but no idempotency=Idempotency(...): pass "
                "it to @app.task(base=IdempotentTask, idempotency=idem), or set it on a "
                f"subclass of IdempotentTask (got {type(idem).__name__})"
            )
        options = cls.idempotency_options
        if not isinstance(options, Mapping):
            raise TypeError(
                f"{what}: idempotency_options is a mapping of options, as for @idem(...), "
                f"got a {type(options).__name__}"
            )
        header = cls.idempotency_header
        if header is not None and (not isinstance(header, str) or not header):
            raise TypeError(f"{what}: idempotency_header is a header name or None")
        if not isinstance(cls.idempotency_retry, bool):
            raise TypeError(f"{what}: idempotency_retry is True or False")
        countdown = cls.idempotency_retry_countdown
        if countdown is not None and (
            isinstance(countdown, bool)
            or not isinstance(countdown, (int, float))
            or not 0 <= countdown < float("inf")
        ):
            raise TypeError(
                f"{what}: idempotency_retry_countdown is a number of seconds (>= 0) or None"
            )
        self.idem = idem
        self.config: IdempotencyConfig = idem.config.replace(**options) if options else idem.config
        self.namespace_override: str | None = options.get("namespace")
        raw = inspect.getattr_static(cls, "run")
        #: A bound task's ``run`` takes the task as ``self``: payloads bind it too.
        self.bound = not isinstance(raw, staticmethod)
        self.fn = raw.__func__ if isinstance(raw, staticmethod) else raw
        # Checks key=/fingerprint=/payload= against the signature now (a placeholder
        # namespace when the task has no name yet: class-based tasks get one when bound).
        name = cls.__dict__.get("name")
        self.op = Operation(self.fn, self.config, self.namespace(name) if name else "-")
        self.named = bool(name)

    def namespace(self, name: str) -> str:
        if self.namespace_override is not None:
            return self.namespace_override
        prefix = self.idem.config.namespace
        return f"{prefix}.{name}" if prefix else name

    def op_for(self, task: IdempotentTask) -> Operation[Any, Any]:
        if not self.named:  # named at registration: the real namespace, built once
            self.op = Operation(self.fn, self.config, self.namespace(task.name))
            self.named = True
        return self.op

    def bind(self, task: IdempotentTask, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (task, *args) if self.bound else args

    @staticmethod
    def of(cls: type[IdempotentTask]) -> _Settings:
        settings = cls.__dict__.get("_idempotency_settings")
        if not isinstance(settings, _Settings):
            settings = _Settings(cls)
            cls._idempotency_settings = settings  # type: ignore[attr-defined]
        return settings
