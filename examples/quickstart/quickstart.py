"""Quick start: a function that must have its effect once, called twice with the same order.

Run it: python quickstart.py   (creates idempotency.db in the current directory)
"""

from __future__ import annotations

from idempotence import Idempotency, KeyReuseError

# A store shared by every process that may run the function: a SQLite file here;
# in production a URL such as "dynamodb://idempotency" or "redis://cache:6379/0".
idem = Idempotency("sqlite:///idempotency.db", ttl=24 * 3600)

charged: list[int] = []


@idem(key="order_id")  # the key: which calls are "the same operation"
def charge(order: dict) -> dict:
    charged.append(order["amount"])  # the side effect that must happen once
    return {"charge_id": f"ch_{order['order_id']}", "amount": order["amount"]}


if __name__ == "__main__":
    first = charge({"order_id": 42, "amount": 1000})
    retry = charge({"order_id": 42, "amount": 1000})  # a retry: replayed, not run again
    assert retry == first
    assert charged == [1000]
    try:
        charge({"order_id": 42, "amount": 5})  # same key, other payload: refused
    except KeyReuseError:
        print("key 42 was already used with another payload")
