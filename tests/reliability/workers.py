"""Code that runs in spawned worker processes (and, for the memory store, in threads).

Each worker builds its store from a URL (``store_from_url`` through ``Idempotency(url)``),
decorates one function whose body appends ``<key> <nonce>`` to a side-effect ledger (a file
of this process, written with ``O_APPEND``: one ``write`` per line, which survives a
SIGKILL of the process) and returns ``"<key>:<nonce>"``. What every caller got is written,
one JSON line per call, to a results file of the process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from idempotence import AlreadyInProgressError, Idempotency

# Kill points of the crash storm (see crash_worker).
BEFORE_CLAIM = "before_claim"  # the process dies before it calls the function
MID_BODY = "mid_body"  # dies inside the body, before the side effect
AFTER_EFFECT = "after_effect"  # dies inside the body, after the side effect
BEFORE_COMPLETE = "before_complete"  # the body returned; dies before `complete` is sent
KILL_POINTS = (BEFORE_CLAIM, MID_BODY, AFTER_EFFECT, BEFORE_COMPLETE)
#: Kill points that fall after the side effect and before `complete`: the known window in
#: which a crash makes the retry run the body again.
WINDOW_POINTS = (AFTER_EFFECT, BEFORE_COMPLETE)


class Appender:
    """Lines appended to a file with one ``write(2)`` each (``O_APPEND``)."""

    def __init__(self, path: str | Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def line(self, text: str) -> None:
        os.write(self.fd, (text + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


def make_op(
    idem: Idempotency,
    namespace: str,
    ledger: Appender,
    *,
    body_seconds: float = 0.0,
    hook: Callable[[str, str], None] | None = None,
) -> Any:
    """The decorated function of every workload: one side effect per execution."""

    @idem(namespace=namespace)
    def op(key: str) -> str:
        if hook is not None:
            hook("start", key)
        # Time-ordered across processes (same clock), so the ledger can tell which
        # execution of a key came last.
        nonce = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        ledger.line(f"{key} {nonce}")
        if hook is not None:
            hook("effect", key)
        if body_seconds:
            time.sleep(body_seconds)
        return f"{key}:{nonce}"

    return op


# -- concurrency at scale --------------------------------------------------------------------
def hammer(
    url: str,
    namespace: str,
    plan: Sequence[Sequence[str]],
    workdir: str,
    tag: str,
    start: Any = None,
    body_seconds: float = 0.005,
) -> None:
    """One process: ``len(plan)`` threads, thread ``i`` calls the function for the keys
    ``plan[i]`` in order, all threads released at once (``start`` is a barrier shared with
    the other processes, or ``None``)."""
    idem = Idempotency(url, lease=30, ttl=600)
    ledger = Appender(Path(workdir) / f"ledger-{tag}")
    results = Appender(Path(workdir) / f"results-{tag}")
    op = make_op(idem, namespace, ledger, body_seconds=body_seconds)
    idem.store.get("warm-up")  # connect before the start line, not on the clock
    gate = threading.Barrier(len(plan))

    def thread(keys: Sequence[str]) -> None:
        gate.wait()
        for key in keys:
            try:
                outcome: dict[str, Any] = {"key": key, "value": op(key)}
            except AlreadyInProgressError:
                outcome = {"key": key, "in_progress": True}
            except Exception as exc:  # reported to the parent, which fails the test
                outcome = {"key": key, "error": f"{type(exc).__name__}: {exc}"}
            results.line(json.dumps(outcome))

    if start is not None:
        start.wait(timeout=60)
    threads = [threading.Thread(target=thread, args=(keys,)) for keys in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.close()
    results.close()
    idem.store.close()


# -- crash storm -------------------------------------------------------------------------------
def crash_worker(
    url: str,
    namespace: str,
    keys: Sequence[str],
    kill_plan: dict[str, str],
    workdir: str,
    lease: float,
    seed: int,
    deadline: float,
) -> None:
    """Calls the function for every key (shuffled, retrying keys still in progress) until
    each returned a value. ``kill_plan`` maps a key to the point where the *first* process
    to reach it SIGKILLs itself (a marker file made with ``O_EXCL`` makes each planned kill
    fire exactly once). Before a kill at a window point it logs ``window <key>``."""
    pid = os.getpid()
    work = Path(workdir)
    ledger = Appender(work / f"ledger-{pid}")
    results = Appender(work / f"results-{pid}")
    windows = Appender(work / f"windows-{pid}")
    idem = Idempotency(url, lease=lease, heartbeat=False, ttl=600)

    def fires(key: str, point: str) -> bool:
        if kill_plan.get(key) != point:
            return False
        try:
            os.close(os.open(work / f"fired-{key}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def die(key: str, point: str) -> None:
        if point in WINDOW_POINTS:
            windows.line(f"window {key} {point}")  # "effect done", then the kill
        os.kill(pid, signal.SIGKILL)

    def hook(stage: str, key: str) -> None:
        if stage == "start" and fires(key, MID_BODY):
            die(key, MID_BODY)
        if stage == "effect" and fires(key, AFTER_EFFECT):
            die(key, AFTER_EFFECT)

    op = make_op(idem, namespace, ledger, hook=hook)
    store = idem.store
    by_store_key = {op.key_for(k): k for k in keys}
    complete = store.complete

    def complete_or_die(key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        name = by_store_key[key]
        if fires(name, BEFORE_COMPLETE):
            die(name, BEFORE_COMPLETE)
        return complete(key, fence, result, ttl=ttl)

    store.complete = complete_or_die  # type: ignore[method-assign]
    rng = random.Random(seed)
    pending = list(keys)
    while pending:
        if time.time() > deadline:
            raise SystemExit(f"keys still pending at the deadline: {pending}")
        rng.shuffle(pending)
        left = []
        for key in pending:
            if fires(key, BEFORE_CLAIM):
                die(key, BEFORE_CLAIM)
            try:
                value = op(key)
            except AlreadyInProgressError:
                left.append(key)
                continue
            results.line(json.dumps({"key": key, "value": value}))
        if len(left) == len(pending):
            time.sleep(0.1)  # every remaining key is held by a live (or dead) claim
        pending = left
    store.close()
