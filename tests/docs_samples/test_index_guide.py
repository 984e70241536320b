"""The decorator sample of docs/index.md. The page includes this file's section, so it runs
here as written, on a SQLite file in a temporary directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from idempotence import KeyReuseError


def test_decorator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # fmt: off
    # --8<-- [start:decorator]
    from idempotence import Idempotency

    idem = Idempotency("sqlite:///idempotency.db", ttl=3600)   # a Store object or a URL


    @idem(key="order_id")                  # the payload is the single parameter; JMESPath key
    def create_order(order: dict) -> dict: ...


    @idem(key=lambda o: o["id"], payload="order")   # several parameters: name the payload
    async def charge(order: dict, *, amount: int) -> dict: ...   # async works the same way


    @idem                                  # bare: the whole payload is the key
    def send_email(msg: dict) -> None: ...
    # --8<-- [end:decorator]
    # fmt: on

    assert create_order({"order_id": 1, "item": "book"}) is None
    assert create_order({"order_id": 1, "item": "book"}) is None  # replayed
    with pytest.raises(KeyReuseError):  # the key is order_id: same key, other payload
        create_order({"order_id": 1, "item": "pen"})
    assert asyncio.run(charge({"id": "o-1"}, amount=5)) is None
    with pytest.raises(KeyReuseError):
        asyncio.run(charge({"id": "o-1", "note": "other"}, amount=5))
    send_email({"to": "a@example.com"})
    send_email({"to": "b@example.com"})  # another payload is another key: no KeyReuseError
    assert (tmp_path / "idempotency.db").exists()
