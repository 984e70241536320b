"""A front-end of your own on ``idempotence.engine``: idempotent jobs from a queue whose
messages look like ``{"id": "job-1", "body": {...}}``.

The key is the message id (the adapter's own key material, as the Lambda adapter keys SQS
records on ``messageId``); the fingerprint is the body, so a redelivered message replays
and a reused id with another body is refused. ``process_all`` keeps its decisions (run in
order, stop at the first failure, report what must come again) in a generator that
``engine.drive`` runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any

from idempotence.base import IdempotencyBase
from idempotence.engine import Operation, arun, drive, is_disabled, run

Message = dict[str, Any]


class Jobs:
    """Run ``handler(body)`` at most once per message id, over ``idem``'s store and options
    (``options`` override them for these jobs, as a decorator's would)."""

    def __init__(
        self,
        idem: IdempotencyBase,
        handler: Callable[[Any], Any],
        *,
        namespace: str | None = None,
        **options: Any,
    ) -> None:
        self.idem = idem
        self.handler = handler
        config = idem.config.replace(**options) if options else idem.config
        # The namespace: ``namespace`` if given, else the handler's module.qualname.
        self.op: Operation[..., Any] = Operation(
            handler, config, idem.namespace_for(handler, namespace)
        )

    def plan_for(self, message: Message) -> Any:
        """The engine's plan of one message (no I/O yet)."""
        key = self.op.key_of(["job", message["id"]], message)
        fingerprint = self.op.fingerprint(message["body"])
        return self.op.plan(key, fingerprint, self.idem.store, self.op.config.lease_s)

    def process(self, message: Message) -> Any:
        """Run (or replay) one message's job."""
        if is_disabled():  # IDEMPOTENCE_DISABLED: a pass-through, as every front-end
            return self.handler(message["body"])
        body = message["body"]
        return run(
            self.plan_for(message),
            self.idem.store,
            lambda: self.handler(body),
            heartbeat=self.op.config.heartbeat,
        )

    async def aprocess(self, message: Message, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        """The same with an ``async`` handler, on the running event loop."""
        body = message["body"]
        return await arun(
            self.plan_for(message),
            self.idem.store,
            lambda: handler(body),
            heartbeat=self.op.config.heartbeat,
        )

    def process_all(self, messages: Sequence[Message]) -> list[str]:
        """Process ``messages`` in order; return the ids to redeliver (the first failure
        and every later message: order is kept)."""

        def attempt(message: Message) -> Exception | None:
            try:
                self.process(message)
            except Exception as exc:  # the job failed, or is running elsewhere, or reused
                return exc
            return None

        return drive(_in_order(messages), attempt)


def _in_order(messages: Sequence[Message]) -> Generator[Message, Exception | None, list[str]]:
    """The decisions, without I/O: yield each message, receive its outcome."""
    for index, message in enumerate(messages):
        error = yield message
        if error is not None:
            return [m["id"] for m in messages[index:]]
    return []
