"""The methods example of docs/index.md: a key per instance through a two-parameter
``key=``/``scope=`` function, with ``self`` kept out of the payload."""

from __future__ import annotations

from idempotence import Idempotency
from idempotence.stores import MemoryStore

idem = Idempotency(MemoryStore())


# --8<-- [start:methods]
class Billing:
    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    @idem(key=lambda order, call: [call["self"].tenant, order["id"]])
    def charge(self, order: dict) -> dict:
        return {"tenant": self.tenant, "charged": order["id"]}

    @idem(scope=lambda order, call: call["self"].tenant)  # the same, as a scope
    def refund(self, order: dict) -> dict:
        return {"tenant": self.tenant, "refunded": order["id"]}


# --8<-- [end:methods]


def test_each_tenant_gets_its_own_key() -> None:
    acme, globex = Billing("acme"), Billing("globex")
    assert acme.charge({"id": 1}) == {"tenant": "acme", "charged": 1}
    assert globex.charge({"id": 1}) == {"tenant": "globex", "charged": 1}  # not acme's
    assert globex.refund({"id": 1}) == {"tenant": "globex", "refunded": 1}
    assert acme.refund({"id": 1}) == {"tenant": "acme", "refunded": 1}
    assert Billing.charge.key_for(acme, {"id": 1}) != Billing.charge.key_for(globex, {"id": 1})
    # The payload (and so the fingerprint) is the order alone.
    assert Billing.charge.fingerprint_for(acme, {"id": 1}) == Billing.charge.fingerprint_for(
        globex, {"id": 1}
    )
