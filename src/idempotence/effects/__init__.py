"""Exactly-once effects: what record-based idempotency alone cannot guarantee.

A record-based decorator runs a function once per key, but the function's side effect and
its stored result are two commits: a crash between them makes a retry repeat the effect.
This package closes that window where the store allows:

- :class:`StateGuard` (and :func:`sql_transition`, :func:`dynamodb_transition` on your own
  rows/items): move an entity from one state to the next with one atomic compare-and-set,
  so a duplicate finds the state already moved and does nothing.
- :class:`TransactionalIdempotency` / :func:`transactional`: the claim, your SQL writes and
  the result commit in one transaction (PostgreSQL, SQLite); :func:`dynamodb_transaction`:
  your DynamoDB writes and the record in one ``TransactWriteItems``.
- :func:`child_key`: stable idempotency keys for downstream APIs (e.g. Stripe), derived from
  the operation's key; :func:`current_key` inside any idempotent function.

See ``docs/effects.md`` for when to use which.
"""

from __future__ import annotations

from ._child_key import child_key, current_key
from ._transaction import (
    Transaction,
    TransactionalIdempotency,
    TransactionOutcome,
    adynamodb_transaction,
    dynamodb_transaction,
    transactional,
)
from ._transition import (
    Guarded,
    StateConflictError,
    StateGuard,
    adynamodb_transition,
    asql_transition,
    dynamodb_transition,
    dynamodb_transition_update,
    sql_transition,
)

__all__ = [
    "Guarded",
    "StateConflictError",
    "StateGuard",
    "Transaction",
    "TransactionOutcome",
    "TransactionalIdempotency",
    "adynamodb_transaction",
    "adynamodb_transition",
    "asql_transition",
    "child_key",
    "current_key",
    "dynamodb_transaction",
    "dynamodb_transition",
    "dynamodb_transition_update",
    "sql_transition",
    "transactional",
]
