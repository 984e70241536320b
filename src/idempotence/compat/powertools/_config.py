"""Powertools' ``IdempotencyConfig`` (same arguments and defaults)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["IdempotencyConfig"]


class IdempotencyConfig:
    """Options of one idempotent function, as in Powertools:

    - ``event_key_jmespath``: JMESPath selecting the key from the payload (``""``: all).
    - ``payload_validation_jmespath``: JMESPath selecting what must match on a replay
      (``""``: no validation, as in Powertools).
    - ``jmespath_options``: ``jmespath.Options`` arguments; ``custom_functions`` replaces
      the built-in ``powertools_json``, ``powertools_base64``, ``powertools_base64_gzip``.
    - ``raise_on_no_idempotency_key``: no key found raises ``IdempotencyKeyError``
      (default: warn and run without idempotency).
    - ``expires_after_seconds``: how long a result is kept (default 3600).
    - ``use_local_cache``, ``local_cache_max_items``: per-process cache of completed
      records (default off; 256 items).
    - ``hash_function``: ``hashlib`` name hashing key and validation data (``md5``).
    - ``lambda_context``: the invocation's context (``idempotent`` registers it).
    - ``response_hook``: ``(response, DataRecord) -> response`` applied to replays.
    """

    def __init__(
        self,
        event_key_jmespath: str = "",
        payload_validation_jmespath: str = "",
        jmespath_options: dict[str, Any] | None = None,
        raise_on_no_idempotency_key: bool = False,
        expires_after_seconds: int = 60 * 60,
        use_local_cache: bool = False,
        local_cache_max_items: int = 256,
        hash_function: str = "md5",
        lambda_context: Any | None = None,
        response_hook: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        self.event_key_jmespath = event_key_jmespath
        self.payload_validation_jmespath = payload_validation_jmespath
        self.jmespath_options = jmespath_options
        self.raise_on_no_idempotency_key = raise_on_no_idempotency_key
        self.expires_after_seconds = expires_after_seconds
        self.use_local_cache = use_local_cache
        self.local_cache_max_items = local_cache_max_items
        self.hash_function = hash_function
        self.lambda_context = lambda_context
        self.response_hook = response_hook

    def register_lambda_context(self, lambda_context: Any) -> None:
        """Keep the invocation's context (``idempotent`` calls this on every invocation)."""
        self.lambda_context = lambda_context
