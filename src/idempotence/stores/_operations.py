"""The public operations of a store whose work is written once as a program.

The network stores (Redis, PostgreSQL, MySQL, DynamoDB) write each operation once, as a
sans-I/O program (``_claim_op``...: a generator of requests, or a call object), and run it
with one sync driver (``_run``) and one async driver (``_arun``). :class:`OperationStore`
holds the twelve public methods that pair them, so no store repeats that block; a store adds
its own extras by overriding one method (e.g. the SQL stores' claim first gives the expiry
sweeper its turn).

Every method is one line: no extra call is added on the claim/complete path (the interface's
exception translation still wraps each of them once, as :class:`Store` does).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from .._record import Claim, Record
from ._base import Store

__all__ = ["OperationStore"]


class OperationStore(Store):
    """A store whose operations are programs run by ``_run`` (sync) and ``_arun`` (async).

    Subclasses implement the drivers and the six programs; the public sync and async
    methods here pair them.
    """

    # -- the drivers and the programs, per store ----------------------------------------
    @abstractmethod
    def _run(self, op: Any) -> Any:
        """Run the program ``op`` with the store's sync client; its return value."""

    @abstractmethod
    async def _arun(self, op: Any) -> Any:
        """Run the program ``op`` with the store's async client; its return value."""

    @abstractmethod
    def _claim_op(self, key: str, fingerprint: str, lease: float, ttl: float) -> Any:
        """The program of :meth:`claim` (returns a :class:`~idempotence.Claim`)."""

    @abstractmethod
    def _complete_op(self, key: str, fence: int, result: bytes, ttl: float) -> Any:
        """The program of :meth:`complete` (returns whether it completed)."""

    @abstractmethod
    def _release_op(self, key: str, fence: int) -> Any:
        """The program of :meth:`release` (returns whether it released)."""

    @abstractmethod
    def _renew_op(self, key: str, fence: int, lease: float) -> Any:
        """The program of :meth:`renew` (returns whether it renewed)."""

    @abstractmethod
    def _get_op(self, key: str) -> Any:
        """The program of :meth:`get` (returns the live record or ``None``)."""

    @abstractmethod
    def _delete_op(self, key: str) -> Any:
        """The program of :meth:`delete` (returns whether a record was removed)."""

    # -- the interface (annotated locals: the drivers are typed per store) --------------
    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        claim: Claim = self._run(self._claim_op(key, fingerprint, lease, ttl))
        return claim

    def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        done: bool = self._run(self._complete_op(key, fence, result, ttl))
        return done

    def release(self, key: str, fence: int) -> bool:
        done: bool = self._run(self._release_op(key, fence))
        return done

    def renew(self, key: str, fence: int, *, lease: float) -> bool:
        done: bool = self._run(self._renew_op(key, fence, lease))
        return done

    def get(self, key: str) -> Record | None:
        record: Record | None = self._run(self._get_op(key))
        return record

    def delete(self, key: str) -> bool:
        done: bool = self._run(self._delete_op(key))
        return done

    async def aclaim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        claim: Claim = await self._arun(self._claim_op(key, fingerprint, lease, ttl))
        return claim

    async def acomplete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        done: bool = await self._arun(self._complete_op(key, fence, result, ttl))
        return done

    async def arelease(self, key: str, fence: int) -> bool:
        done: bool = await self._arun(self._release_op(key, fence))
        return done

    async def arenew(self, key: str, fence: int, *, lease: float) -> bool:
        done: bool = await self._arun(self._renew_op(key, fence, lease))
        return done

    async def aget(self, key: str) -> Record | None:
        record: Record | None = await self._arun(self._get_op(key))
        return record

    async def adelete(self, key: str) -> bool:
        done: bool = await self._arun(self._delete_op(key))
        return done
