"""``import idempotence`` stays lazy (a cold start on AWS Lambda pays for every module).

What the package may load at import is ``json``, ``typing``, ``threading``, ``contextvars``
and its own modules; the standard modules below load on first use and no backend library
loads before a store is built. Checked in a fresh interpreter, counting only the modules
the import adds (whatever the interpreter's site loaded before is not the package's cost).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

#: Loaded on first use only (decorating, encoding a value, parsing a store URL, logging,
#: observing, async calls, key hashing and JMESPath keys), never by the import itself.
LAZY = (
    "asyncio",
    "dataclasses",
    "datetime",
    "decimal",
    "hashlib",
    "importlib",
    "inspect",
    "ipaddress",
    "jmespath",
    "logging",
    "urllib.parse",
    "uuid",
    "idempotence.observe",
)
#: Backend libraries: imported when a store of theirs is built.
BACKENDS = ("boto3", "botocore", "redis", "psycopg", "pymysql", "MySQLdb", "sqlite3")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    before = set(sys.modules)
    import idempotence
    added = sorted(set(sys.modules) - before)

    from idempotence import Idempotency, observe  # observing after a lazy import still works
    from idempotence.stores import MemoryStore

    events = []
    observe.subscribe(events.append)

    @Idempotency(MemoryStore())
    def f(x):
        return x

    f(1)
    f(1)
    print(json.dumps({"added": added, "outcomes": [e.outcome.value for e in events]}))
    """
)


def test_import_loads_no_lazy_module_and_observers_still_see_calls() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    added = set(result["added"])
    assert "idempotence" in added
    assert sorted(added.intersection(LAZY)) == []
    assert sorted(m for m in added if m.partition(".")[0] in BACKENDS) == []
    assert result["outcomes"] == ["executed", "replayed"]
