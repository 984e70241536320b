"""The ``replay_types`` sample of docs/index.md (included from here), run as written."""

from __future__ import annotations

# --8<-- [start:replay-types]
import dataclasses

from idempotence import Idempotency
from idempotence.stores import MemoryStore

idem = Idempotency(MemoryStore())


@dataclasses.dataclass
class Charge:
    id: str
    cents: int


@idem
def charge(order: dict) -> Charge:  # replays rebuild Charge: the annotation declares it
    return Charge(order["id"], 500)


@idem(replay_types=(Charge,))  # or declare it as an option
def charge_all(order: dict) -> dict:
    return {"first": Charge(order["id"], 500)}


assert charge({"id": "o-1"}) == charge({"id": "o-1"}) == Charge("o-1", 500)
assert charge_all({"id": "o-2"}) == charge_all({"id": "o-2"})
# --8<-- [end:replay-types]


def test_the_documented_sample_replays_from_the_store() -> None:
    calls = []

    @idem(namespace="doc.sample", replay_types=(Charge,))
    def produce(order: dict) -> dict:  # type: ignore[type-arg]
        calls.append(1)
        return {"first": Charge(order["id"], 1)}

    assert produce({"id": "x"}) == produce({"id": "x"}) == {"first": Charge("x", 1)}
    assert type(produce({"id": "x"})["first"]) is Charge
    assert len(calls) == 1
