"""The idempotency engine: what every front-end (the decorator, HTTP middleware, the AWS
Lambda adapter, transactional effects, your own adapter) builds on.

One invocation is a :class:`Plan` (key, fingerprint, lease, codec and options, derived
before any I/O) run by :func:`run` (synchronously) or :func:`arun` (``await``): the driver
claims the key in a :class:`~idempotence.stores.Store`, runs the body at most once, stores
its result and answers duplicates from the record. Every decision lives in the sans-I/O
generator :func:`protocol`; the drivers only map its operations to store calls.

An adapter usually starts from an :class:`Operation`: one function with its
:class:`~idempotence.IdempotencyConfig` and namespace, which derives the payload, key and
fingerprint of a call and builds its plan::

    from idempotence import IdempotencyConfig
    from idempotence.engine import Operation, default_namespace, run

    op = Operation(handler, IdempotencyConfig(key="id"), default_namespace(handler, None))
    payload = {"id": "order-1"}
    plan = op.plan(op.key(payload), op.fingerprint(payload), store, lease=30.0)
    result = run(plan, store, lambda: handler(payload), heartbeat=False)

Front-ends with a decision generator of their own (one that yields work items and receives
outcomes, like the Lambda adapter's batch loop) drive it with :func:`drive` /
:func:`adrive`, so that the loop around ``send``/``throw``/``StopIteration`` is written
once. A front-end that batches the store operations of several invocations (the Lambda
adapter claims a whole batch in one request) drives each :func:`invocation` itself, up to
its :class:`ClaimOp`, and performs their :class:`RunOp` with :func:`run_op` / ``arun_op``.
See ``docs/extending.md``.

One file (over 400 lines): it is the engine's public module (``idempotence.engine``), and
:class:`Operation` (most of it) ties together the plan, the replay and the drivers defined
here.
"""

from __future__ import annotations

import functools
import json
import os
import typing
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from ._codec import (
    KIND_ERROR,
    KIND_NOT_STORED,
    KIND_VALUE,
    Serializer,
    UnencodableError,
    envelope,
    open_envelope,
)
from ._config import IdempotencyConfig
from ._drive import adrive, drive
from ._errors import (
    CorruptRecordError,
    MissingKeyError,
    ResultNotStoredError,
    StoredErrorReplay,
)
from ._keys import (
    KeySelector,
    _takes_arguments,
    canonical_json,
    check_namespace,
    compile_selector,
    describe,
    digest,
    is_missing,
    list_digest,
)
from ._protocol import (
    ClaimOp,
    CompleteOp,
    LocalCache,
    Op,
    Plan,
    ReleaseOp,
    RunOp,
    SleepOp,
    protocol,
)
from ._record import Record
from ._shells import arun_op, invocation, run_op
from ._shells import run_async as arun
from ._shells import run_sync as run

if TYPE_CHECKING:  # the engine drives any Store; it never builds or imports one
    from .stores import Store

__all__ = [
    "ClaimOp",
    "CompleteOp",
    "LocalCache",
    "Op",
    "Operation",
    "Plan",
    "ReleaseOp",
    "RunOp",
    "SleepOp",
    "adrive",
    "arun",
    "arun_op",
    "default_namespace",
    "drive",
    "invocation",
    "is_disabled",
    "name_of",
    "not_stored",
    "protocol",
    "replay_check",
    "replay_record",
    "run",
    "run_op",
    "with_replay_types",
]

P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")
S = TypeVar("S")
T = TypeVar("T")

_DISABLED_VALUES = {"1", "true", "yes", "on"}
_SELF_NAMES = {"self", "cls"}


class Operation(Generic[P, R]):
    """One idempotent function: its payload binding, key and fingerprint selectors, and
    result codec, from ``config`` (an :class:`~idempotence.IdempotencyConfig`) under
    ``namespace`` (see :func:`default_namespace`). Pure: no I/O, no clock.

    The **payload** of a call is what keys and fingerprints are derived from: the
    ``config.payload`` parameter if set; else the only parameter (``self``/``cls`` and the
    names in ``exclude`` aside); else all the arguments as a mapping (without those). A
    front-end passes ``exclude`` for parameters that differ on every delivery and never
    identify the work (the AWS Lambda ``context``, for instance).

    Per call: :meth:`payload`, :meth:`key` (or :meth:`key_of` for an adapter's own key
    material), :meth:`fingerprint`, then :meth:`plan` for :func:`run` / :func:`arun`;
    :meth:`replay` answers a completed record, :meth:`encode` frames a result.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        config: IdempotencyConfig,
        namespace: str,
        *,
        exclude: Collection[str] = (),
    ) -> None:
        self.fn = fn
        self.config = config
        self.namespace = check_namespace(namespace)
        #: The function's name for messages (``partial`` objects and callable instances
        #: have no ``__qualname__``).
        self.name: str = name_of(fn)
        import inspect  # on first decoration: keeps the package's cold import small

        self.signature = inspect.signature(fn)
        selfless = [p for p in self.signature.parameters.values() if p.name not in _SELF_NAMES]
        self._exclude = frozenset(exclude)
        params = [p for p in selfless if p.name not in self._exclude]
        if config.payload is not None:
            if config.payload not in self.signature.parameters:
                raise TypeError(f"payload={config.payload!r} is not a parameter of {self.name}")
            self.payload_name: str | None = config.payload
        elif len(params) == 1 and params[0].kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            self.payload_name = params[0].name
        else:
            self.payload_name = None  # all arguments, as a mapping
        # Fast path: the payload is the only parameter (after ``self``), so a call with
        # exactly that many positional arguments (``f(x)``/``obj.f(x)``) ends with it.
        names = list(self.signature.parameters)
        has_self = len(names) > len(selfless)
        sole = len(names) == 1 + has_self and names[-1] == self.payload_name
        self._arity = len(names) if sole else -1  # -1: never a length, no fast path
        self._plan_tail: tuple[Store, tuple[Any, ...]] | None = None
        # ``key=``/``scope=`` functions with a second parameter get the call's bound
        # arguments (``self`` included) too; through ``key_select`` / ``key_of`` (the Lambda
        # sources, which have one payload) that mapping holds the payload alone.
        Two = Callable[[Any, Mapping[str, Any]], Any]
        spec, scope = config.key, config.scope
        key_args = typing.cast(Two, spec) if callable(spec) and _takes_arguments(spec) else None
        scope_args = (
            typing.cast(Two, scope) if callable(scope) and _takes_arguments(scope) else None
        )
        self._key_args: Two | None = key_args
        self._scope_args: Two | None = scope_args
        #: Whether :meth:`key` wants the call's arguments (see :meth:`arguments`).
        self.needs_arguments = key_args is not None or scope_args is not None
        self.key_select: KeySelector | None = (
            compile_selector(config.key, what="key") if config.key is not None else None
        )
        if key_args is not None:
            self.key_select = lambda payload: key_args(payload, self._payload_only(payload))
        fp = config.fingerprint
        self.fingerprint_select: KeySelector | None = (
            compile_selector(fp, what="fingerprint") if fp not in (None, False) else None  # type: ignore[arg-type]
        )
        spec = config.key
        self.key_spec = spec if isinstance(spec, str) or spec is None else _spec_name(spec)
        self.cache = LocalCache(config.local_cache) if config.local_cache else None
        # ``namespace#digest([key spec, scope, material])``, the constant head encoded once.
        self._key_digest = list_digest((self.key_spec, config.scope), f"{self.namespace}#")
        key_hash = config.key_hash
        if key_hash is not None:  # the key is exactly ``namespace#key_hash(material)``
            head = f"{self.namespace}#"
            self._key_digest = lambda material: head + key_hash(material)
        hash_ = digest if key_hash is None else key_hash
        self._scope_fn: Callable[[Any], Any] | None = None
        if scope_args is not None:
            self._scope_fn = lambda payload: scope_args(payload, self._payload_only(payload))
        elif callable(scope):
            self._scope_fn = scope
        #: ``fingerprint(payload)``: the digest the record keeps to refuse a reused key.
        self.fingerprint: Callable[[Any], str]
        if fp is False:
            self.fingerprint = _no_fingerprint
        elif self.fingerprint_select is not None:
            select = self.fingerprint_select
            self.fingerprint = lambda payload: hash_(select(payload))
        else:
            self.fingerprint = hash_
        self._hint: Any = ...
        self.is_async = inspect.iscoroutinefunction(fn)

    # -- derivation ------------------------------------------------------------------------
    def payload(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """The payload of the call ``fn(*args, **kwargs)`` (see the class docstring); a
        call the signature refuses raises the ``TypeError`` the function would."""
        if len(args) == self._arity and not kwargs:  # ``f(x)``, ``obj.f(x)``: no binding
            return args[-1]
        # A wrong call raises the TypeError the function itself would raise.
        bound = self.signature.bind(*args, **kwargs)
        if self.payload_name is not None:
            if self.payload_name in bound.arguments:
                return bound.arguments[self.payload_name]
            bound.apply_defaults()
            return bound.arguments.get(self.payload_name)
        bound.apply_defaults()
        skip = self._exclude
        return {k: v for k, v in bound.arguments.items() if k not in _SELF_NAMES and k not in skip}

    def arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
        """The call's arguments by parameter name, defaults applied, ``self``/``cls``
        included (what a two-parameter ``key=``/``scope=`` function receives)."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return MappingProxyType(bound.arguments)

    def _payload_only(self, payload: Any) -> Mapping[str, Any]:
        """The arguments mapping where only the payload is known (the Lambda sources)."""
        return MappingProxyType({self.payload_name or "payload": payload})

    def key(self, payload: Any, arguments: Mapping[str, Any] | None = None) -> str | None:
        """The key for ``payload``, or ``None`` when it has no key material and the key is
        optional (``required=False``). ``arguments`` (see :meth:`arguments`) is needed
        when :attr:`needs_arguments`; without it the payload alone is known."""
        if self.key_select is None:
            material = payload
        else:
            if self._key_args is not None and arguments is not None:
                material = self._key_args(payload, arguments)
            else:
                material = self.key_select(payload)
            if (
                material is None
                or material == ""
                or (type(material) is dict and not material)
                or (isinstance(material, list) and is_missing(material))  # inline: per call
            ):
                if self.config.required:
                    raise MissingKeyError(
                        f"no idempotency key in this call to {self.name}: key="
                        f"{self.key_spec!r} selected {describe(material)}. Pass the key "
                        "material, fix key=, or set required=False to run such calls without "
                        "idempotency."
                    )
                return None
        if self._scope_fn is None:
            return self._key_digest(material)
        if self._scope_args is not None and arguments is not None:
            scope = self._scope_args(payload, arguments)
            return f"{self.namespace}#{digest([self.key_spec, scope, material])}"
        return self.key_of(material, payload)

    def key_of(self, material: Any, scope_payload: Any) -> str:
        """``namespace#digest([key spec, scope, material])``; a callable ``scope`` is applied
        to ``scope_payload``. Adapters with their own key material use it too."""
        if self._scope_fn is not None:
            scope = self._scope_fn(scope_payload)
            return f"{self.namespace}#{digest([self.key_spec, scope, material])}"
        return self._key_digest(material)

    # -- results ---------------------------------------------------------------------------
    def hint(self) -> Any:
        """What the serializer gets to know the classes a replay may rebuild: the resolved
        return annotation (``None`` if absent or unresolvable), as
        ``Union[annotation, *replay_types]`` when the config lists ``replay_types``."""
        if self._hint is ...:
            try:
                hint = typing.get_type_hints(self.fn).get("return")
            except Exception:
                hint = getattr(self.fn, "__annotations__", {}).get("return")
                if isinstance(hint, str):
                    hint = None
            self._hint = with_replay_types(hint, self.config.replay_types)
        return self._hint

    def encode(self, store: Store) -> Callable[[Any], bytes]:
        """The result encoder for ``store`` (built once per store with the plan's tail)."""
        serializer = self.config.serializer
        limit = store.max_result_bytes
        head = envelope(KIND_VALUE, b"")
        check = replay_check(serializer)
        hint = self.hint  # resolved on the first tagged result only (cold start)

        def encode(result: Any) -> bytes:
            body = serializer.encode(result)
            if check is not None and b'"$' in body:  # a class no replay could rebuild:
                check(body, hint())  # refused now, not on every later replay
            data = head + body
            if len(data) > limit:
                raise UnencodableError(
                    f"the encoded result is {len(data)} bytes, more than this store keeps "
                    f"({limit} bytes)"
                )
            return data

        return encode

    def encode_error(self, exc: BaseException) -> bytes:
        """A stored ``store_errors`` exception: its type name, message and args (rebuilt on
        replay with no class but the exception's own: args holding one, or that cannot be
        encoded, are stored as ``[str(exc)]``)."""
        cls = type(exc)
        serializer = self.config.serializer
        try:
            args = serializer.encode(list(exc.args))
            check = replay_check(serializer)
            if check is not None:
                check(args, None)
        except UnencodableError:
            args = serializer.encode([str(exc)])
        head = canonical_json({"type": f"{cls.__module__}:{cls.__qualname__}", "message": str(exc)})
        return envelope(KIND_ERROR, head + b"\n" + args)

    def replay(self, record: Record) -> Any:
        """A completed record's answer, decoded with this function's serializer, return
        annotation, ``on_replay`` and ``store_errors`` (see :func:`replay_record`)."""
        c = self.config
        return replay_record(record, c.serializer, self.hint(), c.on_replay, c.store_errors)

    def plan(self, key: str, fingerprint: str, store: Store, lease: float) -> Plan:
        """The protocol plan of one call: this function's codec and options, with the given
        fingerprint and lease (adapters pass their source's own)."""
        tail = self._plan_tail
        if tail is None or tail[0] is not store:
            tail = self._plan_tail = (store, tuple(self._template(store))[3:])
        # The per-call fields first; the rest is this function's constant tail (per store).
        return tuple.__new__(Plan, (key, fingerprint, lease) + tail[1])

    def _template(self, store: Store) -> Plan:
        c = self.config
        return Plan(
            key="",
            fingerprint="",
            lease=c.lease_s,
            ttl=c.ttl_s,
            encode=self.encode(store),
            replay=self.replay,
            encode_not_stored=not_stored,
            encode_error=self.encode_error if c.store_errors else None,
            store_errors=c.store_errors,
            should_store=c.should_store,
            wait=c.on_in_progress == "wait",
            wait_timeout=c.wait_timeout_s,
            cache=self.cache,
            fail_open=c.fail_open,
        )


def replay_record(
    record: Record,
    serializer: Serializer,
    hint: Any,
    on_replay: Callable[[Any, Record], Any] | None = None,
    store_errors: tuple[type[BaseException], ...] = (),
) -> Any:
    """A completed record's answer: the stored value (decoded with ``hint``, then passed
    through ``on_replay``), or the error it stands for (an exception of ``store_errors``
    rebuilt, :class:`StoredErrorReplay`, or :class:`ResultNotStoredError`). An unreadable
    record raises :class:`CorruptRecordError` saying how to heal the key."""
    try:
        return _replay(record, serializer, hint, on_replay, store_errors)
    except CorruptRecordError as exc:
        if exc.key is not None:
            raise
        raise CorruptRecordError(
            f"the stored result of {record.key!r} cannot be read: {exc}. The function is "
            "not run again; inspect the record (`idempotence inspect`) and forget the key "
            "(`.forget(...)` or `idempotence forget`) to let it run.",
            key=record.key,
        ) from exc


def _replay(
    record: Record,
    serializer: Serializer,
    hint: Any,
    on_replay: Callable[[Any, Record], Any] | None,
    store_errors: tuple[type[BaseException], ...],
) -> Any:
    data = record.result
    if data is None:
        raise CorruptRecordError(
            f"completed record {record.key!r} holds no result; forget the key to let the "
            "function run again",
            key=record.key,
        )
    kind, body = open_envelope(data)
    if kind == KIND_VALUE:
        value = serializer.decode(body, hint)
        if on_replay is not None:
            value = on_replay(value, record)
        return value
    if kind == KIND_NOT_STORED:
        raise ResultNotStoredError(
            f"an earlier call under {record.key!r} ran, but its result could not be kept "
            f"({body.decode('utf-8', 'replace')}); it is not run again.",
            key=record.key,
        )
    head, _, args_data = body.partition(b"\n")
    try:
        meta = json.loads(head)
        type_name, message = str(meta["type"]), str(meta["message"])
        args = serializer.decode(args_data, None)
    except Exception as exc:
        raise CorruptRecordError(
            f"stored error of {record.key!r} is corrupt: {exc}", key=record.key
        ) from exc
    names = {type_name}
    if type_name.startswith("idempotence._"):  # stored before public classes took the
        names.add("idempotence:" + type_name.partition(":")[2])  # package as __module__
    for cls in store_errors:
        if f"{cls.__module__}:{cls.__qualname__}" in names:
            try:
                error = cls(*args)
            except Exception:
                break  # its constructor does not take its own args: report generically
            raise error
    raise StoredErrorReplay(
        f"replay of stored {type_name}: {message} (add the class to store_errors to get "
        "the original type back)",
        key=record.key,
        type_name=type_name,
        args=args,
    )


def with_replay_types(hint: Any, replay_types: tuple[type, ...]) -> Any:
    """``hint`` widened by ``replay_types`` (``Union[hint, *replay_types]``), as serializers
    receive it; ``hint`` itself when there are none."""
    if not replay_types:
        return hint
    members = (hint, *replay_types)
    try:
        return typing.Union[members]  # noqa: UP007 - built at run time
    except TypeError:  # ``hint`` is not a type (an odd annotation): it names no class
        return typing.Union[replay_types]  # noqa: UP007


def replay_check(serializer: Serializer) -> Callable[[bytes, Any], None] | None:
    """The serializer's ``check_replayable(data, hint)``, if it has one (see
    :class:`~idempotence.Serializer`)."""
    check = getattr(serializer, "check_replayable", None)
    return check if callable(check) else None


def default_namespace(fn: Callable[..., Any], prefix: str | None) -> str:
    """``[prefix.][{AWS_LAMBDA_FUNCTION_NAME}:]module.qualname`` (the variable read now);
    ``TypeError`` for functions with no name of their own (see
    :meth:`Idempotency.namespace_for`)."""
    qualname = _qualname(fn)  # first: it refuses what has no name (or is no function)
    name = f"{getattr(fn, '__module__', None)}.{qualname}"
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    if function:
        name = f"{function}:{name}"
    return f"{prefix}.{name}" if prefix else name


def _spec_name(spec: Callable[..., Any]) -> str:
    """The name of a ``key=`` function as it enters every key: the same in every process
    (a ``repr`` holding a memory address - a ``partial``, an object without ``__repr__`` -
    would give each process its own keys)."""
    name = getattr(spec, "__qualname__", None)
    if isinstance(name, str):
        return name
    if isinstance(spec, functools.partial):
        return f"partial({_spec_name(spec.func)})"
    text = repr(spec)
    if " at 0x" in text:
        return f"{type(spec).__module__}.{type(spec).__qualname__}"
    return text


def name_of(fn: Any) -> str:
    """A callable's name for messages: its ``__qualname__``, or what it is."""
    name = getattr(fn, "__qualname__", None)
    if isinstance(name, str):
        return name
    if isinstance(fn, functools.partial):
        return f"partial({name_of(fn.func)})"
    return f"{type(fn).__qualname__} instance"


def _qualname(fn: Any) -> str:
    """``fn.__qualname__`` when it names ``fn`` alone; ``TypeError`` asking for
    ``namespace=`` otherwise (see :meth:`Idempotency.namespace_for`)."""
    name = getattr(fn, "__qualname__", None)
    if not callable(fn):
        raise TypeError(
            "Idempotency decorates a function: use @idem / @idem.handler, or pass options by "
            f"name (@idem(key=...)); got a {type(fn).__name__}"
        )
    if isinstance(fn, functools.partial):
        what = "a functools.partial object: its bound arguments are not part of its name"
    elif not isinstance(name, str):
        what = (
            f"a {type(fn).__qualname__} instance: every instance of the class would share one name"
        )
    elif "<lambda>" in name:
        what = f"a lambda ({name}): every lambda in a scope has the same name"
    else:
        return name
    raise TypeError(
        f"cannot name the idempotency keys of {what}. Pass namespace='...' (a name unique to "
        "this function and stable across deployments), e.g. @idem(namespace='orders.charge') "
        "or process_batch(event, handler, namespace='orders.charge'), or use a def function."
    )


def _no_fingerprint(payload: Any) -> str:
    return "-"


def not_stored(reason: str) -> bytes:
    """The record body kept when a function ran but its result cannot be stored: a
    duplicate gets :class:`~idempotence.ResultNotStoredError` with ``reason``."""
    return envelope(KIND_NOT_STORED, reason.encode("utf-8"))


# ``os.environ`` reads from a private dict of encoded keys; looking the (almost always
# absent) variable up there skips ``Mapping.get``'s KeyError on every call. Any other
# mapping (``os.environ`` replaced, another interpreter) takes the ordinary path.
_ENVIRON = os.environ
_ENV_DATA: dict[Any, Any] | None = getattr(_ENVIRON, "_data", None)
_ENV_KEY: Any = getattr(_ENVIRON, "encodekey", str)("IDEMPOTENCE_DISABLED")


def is_disabled() -> bool:
    """Whether ``IDEMPOTENCE_DISABLED`` is set to a true value, read now (not cached)."""
    if os.environ is _ENVIRON and type(_ENV_DATA) is dict and _ENV_KEY not in _ENV_DATA:
        return False
    return os.environ.get("IDEMPOTENCE_DISABLED", "").lower() in _DISABLED_VALUES
