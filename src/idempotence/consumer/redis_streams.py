"""A Redis Streams consumer-group loop over :class:`~idempotence.consumer.IdempotentConsumer`.

Each poll first reclaims, with ``XAUTOCLAIM``, entries that have been pending longer than
``min_idle`` seconds (their consumer died, or left them unacknowledged for a retry), then
reads new entries with ``XREADGROUP ... >``. Each entry is handled by the idempotent
consumer and acknowledged with ``XACK`` only after its result is recorded; the entry's
stable id is ``<stream>/<entry id>``, so a reclaimed entry runs under the same key as its
first delivery and replays its record if that delivery completed::

    import redis
    from idempotence import Idempotency
    from idempotence.consumer import IdempotentConsumer
    from idempotence.consumer.redis_streams import RedisStreamConsumer

    idem = Idempotency("redis://localhost:6379/0", lease=30)
    consumer = IdempotentConsumer(handle_order, idem, key="order_id")
    loop = RedisStreamConsumer(redis.Redis(), "orders", "billing", "worker-1", consumer)
    loop.run()

:class:`AsyncRedisStreamConsumer` is the same loop over ``redis.asyncio``. Set
``min_idle`` at least as long as the idempotency ``lease``: an entry reclaimed while its
first consumer's lease still holds finds it in progress and stays pending
(:attr:`~idempotence.consumer.Outcome.RETRY`) until the next reclaim. See
``docs/consumers.md``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any, NamedTuple

from .. import MissingDependencyError
from ..engine import adrive, drive
from . import Delivery, IdempotentConsumer, Outcome

try:
    import redis
    import redis.asyncio
except ImportError as exc:  # pragma: no cover - exercised only without redis
    raise MissingDependencyError(
        "'redis' is not installed, and idempotence.consumer.redis_streams needs it: "
        "pip install 'idempotence[redis]'"
    ) from exc

__all__ = ["AsyncRedisStreamConsumer", "RedisStreamConsumer", "decode_fields"]

logger = logging.getLogger("idempotence.consumer")

#: Fields a dead-letter entry carries besides the original entry's fields.
DEAD_LETTER_FIELDS = ("idempotence-source", "idempotence-error")


def decode_fields(fields: Mapping[Any, Any]) -> dict[str, Any]:
    """The default payload of an entry: its fields as a ``dict`` of ``str`` (names and
    values are decoded as UTF-8; a value that is not UTF-8 stays ``bytes``)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        out[_text(name)] = _text(value) if isinstance(value, bytes) else value
    return out


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


class _Command(NamedTuple):
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _Transaction(NamedTuple):
    commands: tuple[_Command, ...]


class _Handle(NamedTuple):
    """Handle one entry: ``ack`` after its record completes; ``bury(error)`` the
    dead-letter transaction (``None``: no dead-letter stream)."""

    message_id: str
    payload: Any
    ack: _Command
    bury: Callable[[BaseException | None], _Transaction] | None


_Item = _Command | _Transaction | _Handle


class _StreamLoop:
    """What the sync and async loops share: options and the decisions of one poll."""

    def __init__(
        self,
        client: Any,
        stream: str,
        group: str,
        consumer_name: str,
        consumer: IdempotentConsumer,
        *,
        min_idle: float = 60.0,
        count: int = 10,
        block: float = 2.0,
        start_id: str = "$",
        create_group: bool = True,
        decode: Callable[[dict[str, Any]], Any] | None = None,
        dead_letter_stream: str | None = None,
        max_deliveries: int | None = None,
    ) -> None:
        if not isinstance(consumer, IdempotentConsumer):
            raise TypeError(
                "the consumer is an idempotence.consumer.IdempotentConsumer, got a "
                f"{type(consumer).__name__}"
            )
        for name, value in (("stream", stream), ("group", group), ("consumer_name", consumer_name)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} is a non-empty string")
        if not min_idle > 0 or not block >= 0 or not (isinstance(count, int) and count > 0):
            raise ValueError("min_idle > 0, block >= 0 and count >= 1 are required")
        if max_deliveries is not None and (
            not isinstance(max_deliveries, int) or max_deliveries < 1 or not dead_letter_stream
        ):
            raise ValueError(
                "max_deliveries is a number of deliveries (>= 1) and needs a "
                "dead_letter_stream to move the entries that reach it to"
            )
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer_name = consumer_name
        self.consumer = consumer
        self.min_idle = min_idle
        self.count = count
        self.block = block
        self.start_id = start_id
        self.create_group = create_group
        self.decode = decode
        self.dead_letter_stream = dead_letter_stream
        self.max_deliveries = max_deliveries
        self._group_ready = not create_group
        self._cursor = "0-0"

    def message_id(self, entry_id: str) -> str:
        """The stable id of an entry: ``<stream>/<entry id>`` (the same when reclaimed)."""
        return f"{self.stream}/{entry_id}"

    # -- one poll, as decisions ------------------------------------------------------------
    def _poll(self, block: bool) -> Generator[_Item, Any, list[Delivery]]:
        if not self._group_ready:
            try:
                yield _Command(
                    "xgroup_create",
                    (self.stream, self.group),
                    {"id": self.start_id, "mkstream": True},
                )
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._group_ready = True
        reply = yield _Command(
            "xautoclaim",
            (self.stream, self.group, self.consumer_name, int(self.min_idle * 1000)),
            {"start_id": self._cursor, "count": self.count},
        )
        self._cursor = _text(reply[0]) if reply else "0-0"
        entries = list(reply[1]) if reply and len(reply) > 1 else []
        reclaimed = len(entries)
        if len(entries) < self.count:
            wait = int(self.block * 1000) if block and not entries else None
            read = yield _Command(
                "xreadgroup",
                (self.group, self.consumer_name, {self.stream: ">"}),
                {"count": self.count - len(entries), "block": wait},
            )
            entries.extend(_entries(read))
        deliveries: list[Delivery] = []
        for index, (raw_id, fields) in enumerate(entries):
            if fields is None:  # deleted from the stream while pending (Redis < 7)
                continue
            entry_id = str(_text(raw_id))
            bury = None
            if self.dead_letter_stream is not None:
                bury = functools.partial(self._bury, entry_id, fields)
            try:
                payload = decode_fields(fields)
                if self.decode is not None:
                    payload = self.decode(payload)
            except Exception as exc:
                message_id = self.message_id(entry_id)
                if bury is None:
                    logger.error(
                        "an entry of a Redis stream cannot be decoded (%s) and no "
                        "dead_letter_stream is set: it is left pending",
                        type(exc).__name__,
                    )
                    deliveries.append(Delivery(message_id, Outcome.REJECTED, error=exc))
                    continue
                yield bury(exc)
                deliveries.append(Delivery(message_id, Outcome.DEAD_LETTER, error=exc))
                continue
            handle = _Handle(self.message_id(entry_id), payload, self._ack(entry_id), bury)
            delivery: Delivery = yield handle
            if delivery.outcome is Outcome.RETRY and self.max_deliveries is not None:
                assert bury is not None  # max_deliveries requires a dead-letter stream
                times = 1  # read with ``>``: its first delivery
                if index < reclaimed:  # XAUTOCLAIM counted this delivery in
                    pending = yield _Command(
                        "xpending_range",
                        (self.stream, self.group),
                        {"min": entry_id, "max": entry_id, "count": 1},
                    )
                    times = int(pending[0]["times_delivered"]) if pending else 0
                if times >= self.max_deliveries:
                    logger.error(
                        "an entry of a Redis stream reached max_deliveries (last error: %s); "
                        "moved to the dead-letter stream",
                        type(delivery.error).__name__,
                    )
                    yield bury(delivery.error)
                    delivery = dataclasses.replace(delivery, outcome=Outcome.DEAD_LETTER)
            deliveries.append(delivery)
        return deliveries

    def _ack(self, entry_id: str) -> _Command:
        return _Command("xack", (self.stream, self.group, entry_id), {})

    def _bury(
        self, entry_id: str, fields: Mapping[Any, Any], error: BaseException | None
    ) -> _Transaction:
        """``XADD`` the entry's fields to the dead-letter stream and ``XACK`` it, in one
        ``MULTI``/``EXEC`` (a crash cannot leave it both pending and dead-lettered)."""
        assert self.dead_letter_stream is not None
        entry = dict(fields)
        entry["idempotence-source"] = self.message_id(entry_id)
        # the error's class only: its message may quote payload values
        entry["idempotence-error"] = type(error).__name__ if error is not None else "-"
        return _Transaction(
            (_Command("xadd", (self.dead_letter_stream, entry), {}), self._ack(entry_id))
        )


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """The entries of an ``XREADGROUP`` reply of one stream (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    groups = reply.values() if isinstance(reply, dict) else (item[1] for item in reply)
    out: list[tuple[Any, Any]] = []
    for entries in groups:
        if len(entries) == 1 and isinstance(entries[0], list):  # RESP3 nests them once more
            entries = entries[0]
        out.extend(entries)
    return out


class RedisStreamConsumer(_StreamLoop):
    """A consumer-group loop over a ``redis.Redis`` client (see the module docstring).

    ``stream``, ``group`` and ``consumer_name`` name the stream, the consumer group (made
    with ``XGROUP CREATE ... MKSTREAM`` at ``start_id`` on the first poll unless
    ``create_group=False``) and this consumer in it. Each poll reclaims up to ``count``
    entries idle longer than ``min_idle`` seconds, then reads up to ``count`` new ones,
    waiting up to ``block`` seconds when there was nothing to reclaim.

    An entry's payload is its fields (see :func:`decode_fields`), passed through
    ``decode`` if given (e.g. ``lambda f: json.loads(f["data"])``). An entry ``decode``
    fails on, and every :attr:`~idempotence.consumer.Outcome.DEAD_LETTER` delivery, is
    added to ``dead_letter_stream`` (its fields plus ``idempotence-source``, the stable id,
    and ``idempotence-error``, the error's class name) and acknowledged in one
    ``MULTI``/``EXEC``; without ``dead_letter_stream`` it is left pending
    (:attr:`~idempotence.consumer.Outcome.REJECTED`) and an error is logged.

    ``max_deliveries`` (needs ``dead_letter_stream``): an entry whose delivery ends in
    :attr:`~idempotence.consumer.Outcome.RETRY` for the ``max_deliveries``-th time (the
    count ``XPENDING`` keeps, which ``XAUTOCLAIM`` raises on every reclaim) is moved to the
    dead-letter stream (``idempotence-error`` names the last error) and its delivery
    reported as ``DEAD_LETTER``. Without it a handler that always raises is retried every
    ``min_idle`` forever. A delivery that found the key in progress counts too: keep
    ``max_deliveries * min_idle`` well above the longest handler run.
    """

    def poll(self, *, block: bool = True) -> list[Delivery]:
        """Reclaim and read once; handle each entry; return the deliveries."""
        return _drive_sync(self, block)

    def run(self, stop: threading.Event | None = None, *, retry_every: float = 1.0) -> None:
        """Poll until ``stop`` is set (forever without one). A Redis error (the server
        unreachable, a failed ``XACK``) is logged by class and the poll tried again after
        ``retry_every`` seconds; entries of the failed poll stay pending and are reclaimed
        after ``min_idle``. Other exceptions propagate."""
        while stop is None or not stop.is_set():
            try:
                self.poll()
            except redis.RedisError as exc:
                _poll_failed(exc)
                if stop is None:
                    time.sleep(retry_every)
                else:
                    stop.wait(retry_every)


class AsyncRedisStreamConsumer(_StreamLoop):
    """:class:`RedisStreamConsumer` over a ``redis.asyncio.Redis`` client; the handler may
    be ``async``."""

    async def poll(self, *, block: bool = True) -> list[Delivery]:
        """Reclaim and read once; handle each entry; return the deliveries."""
        return await _drive_async(self, block)

    async def run(self, stop: asyncio.Event | None = None, *, retry_every: float = 1.0) -> None:
        """Poll until ``stop`` is set (forever without one, or until cancelled); Redis
        errors as in :meth:`RedisStreamConsumer.run`."""
        while stop is None or not stop.is_set():
            try:
                await self.poll()
            except redis.RedisError as exc:
                _poll_failed(exc)
                await asyncio.sleep(retry_every)


def _poll_failed(exc: BaseException) -> None:
    # the class only: a client library's message may quote keys or values
    logger.warning("a poll of a Redis stream failed (%s); trying again", type(exc).__name__)


def _drive_sync(loop: _StreamLoop, block: bool) -> list[Delivery]:
    client = loop.client

    def call(command: _Command) -> Any:
        return getattr(client, command.name)(*command.args, **command.kwargs)

    def transaction(item: _Transaction) -> Any:
        pipe = client.pipeline(transaction=True)
        for command in item.commands:
            getattr(pipe, command.name)(*command.args, **command.kwargs)
        return pipe.execute()

    def step(item: _Item) -> Any:
        if type(item) is _Command:
            return call(item)
        if type(item) is _Transaction:
            return transaction(item)
        assert type(item) is _Handle
        bury = item.bury
        return loop.consumer.process(
            item.message_id,
            item.payload,
            functools.partial(call, item.ack),
            dead_letter=None if bury is None else lambda d: transaction(bury(d.error)),
        )

    return drive(loop._poll(block), step)


async def _drive_async(loop: _StreamLoop, block: bool) -> list[Delivery]:
    client = loop.client

    async def call(command: _Command) -> Any:
        return await getattr(client, command.name)(*command.args, **command.kwargs)

    async def transaction(item: _Transaction) -> Any:
        pipe = client.pipeline(transaction=True)
        for command in item.commands:
            queued = getattr(pipe, command.name)(*command.args, **command.kwargs)
            if inspect.isawaitable(queued):  # redis-py versions differ
                await queued
        return await pipe.execute()

    async def step(item: _Item) -> Any:
        if type(item) is _Command:
            return await call(item)
        if type(item) is _Transaction:
            return await transaction(item)
        assert type(item) is _Handle
        bury = item.bury
        return await loop.consumer.aprocess(
            item.message_id,
            item.payload,
            functools.partial(call, item.ack),
            dead_letter=None if bury is None else lambda d: transaction(bury(d.error)),
        )

    return await adrive(loop._poll(block), step)
