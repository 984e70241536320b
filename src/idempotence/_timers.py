"""Deadlines on one daemon thread per process, with a lock-free hot path.

Used by the lease heartbeat (renew every ``lease / 3`` while a sync body runs) and by
PostgreSQL's operation timeout (cut a connection whose statement overran). Both register
a deadline around work that almost always finishes first, so registering must cost next
to nothing and must never start a thread per call.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable

from . import _log

__all__ = ["Timers"]

#: The longest the thread sleeps at once, and the longest delay kept (a later deadline is
#: clamped to it): ``Condition.wait`` overflows on a huge timeout, and a NaN delay would
#: never compare due.
_MAX_WAIT = 3600.0
_MAX_DELAY = 100 * 365.25 * 24 * 3600.0


def _clamp(delay: float) -> float:
    """``delay`` as a usable number of seconds: NaN and negatives are 0 (due now),
    infinities and huge values are :data:`_MAX_DELAY`."""
    try:
        delay = float(delay)
    except (TypeError, ValueError, OverflowError):
        return _MAX_DELAY
    if not delay > 0:
        return 0.0
    return min(delay, _MAX_DELAY)


class Timers:
    """Calls callbacks at monotonic deadlines, on one daemon thread per process.

    :meth:`add` and :meth:`cancel` are the hot path: a counter, a clock read, a dict insert
    or pop (atomic under the GIL), no lock, no system call; the thread starts once per
    process and is only woken when a new deadline is earlier than its planned wake-up.
    The thread pops an entry and runs its callback while holding a lock (re-arming a
    repeating one under it), so :meth:`cancel` and firing settle who owns an entry by
    ``dict.pop``, and a :meth:`cancel` that lost the race waits for the callback to
    return. A forked child starts with no entries (its parent's are not its own) and
    starts its own thread on first use.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._firing = threading.Lock()
        self._active: dict[int, tuple[float, Callable[[], object], float]] = {}
        self._ids = itertools.count(1)
        self._started = False  # in this process (a forked child resets it)
        self._next_wake = math.inf  # inf while the thread is awake: every add notifies
        # With nothing registered the thread sleeps this long (the shortest delay added so
        # far, at least 1 s), so the next add of a delay as long lands after its planned
        # wake-up and need not wake it: the heartbeat's add/cancel per call never notifies.
        self._idle = 3600.0

    def add(self, delay: float, callback: Callable[[], object], every: float = 0.0) -> int:
        """Call ``callback()`` on the timer thread in ``delay`` seconds unless cancelled,
        and then every ``every`` seconds (if given) for as long as it returns a true
        value; returns the handle for :meth:`cancel`."""
        delay, every = _clamp(delay), _clamp(every) if every else 0.0
        if delay < self._idle:
            self._idle = max(delay, 1.0)
        deadline = time.monotonic() + delay
        ident = next(self._ids)
        self._active[ident] = (deadline, callback, every)
        if not self._started:
            with self._cond:
                if not self._started:
                    self._started = True
                    threading.Thread(target=self._run, name=self.name, daemon=True).start()
        elif deadline < self._next_wake:
            with self._cond:
                self._cond.notify()
        return ident

    def cancel(self, ident: int) -> bool:
        """Cancel a deadline. ``True`` if it was pending: its callback is not running and
        will not run (again). ``False`` if a one-shot callback has run, or a callback is
        running right now: then this waits until it has returned (and a repeating one is
        not re-armed)."""
        if self._active.pop(ident, None) is not None:
            return True
        with self._firing:  # a running callback re-arms (or not) before releasing this
            self._active.pop(ident, None)
        return False

    def __len__(self) -> int:
        """Deadlines registered and not yet fired or cancelled."""
        return len(self._active)

    def _run(self) -> None:
        while True:
            try:
                self._tick()
            except BaseException:  # never let one bad entry stop every other deadline
                _log.warning(
                    "%s: the timer thread recovered from an error", self.name, exc_info=True
                )
                time.sleep(0.01)

    def _tick(self) -> None:
        """Wait for the next deadline and fire the entries that are due."""
        with self._cond:
            now = time.monotonic()
            due = [i for i, (d, _, _) in list(self._active.items()) if d <= now]
            if not due:
                deadlines = [d for d, _, _ in list(self._active.values())]
                self._next_wake = min(deadlines, default=now + self._idle)
                # A bounded wait: Condition.wait overflows on huge timeouts.
                self._cond.wait(min(self._next_wake - now, _MAX_WAIT))
                self._next_wake = math.inf
                return
        for ident in due:
            with self._firing:
                entry = self._active.pop(ident, None)
                if entry is None:
                    continue  # cancelled meanwhile
                _, callback, every = entry
                try:
                    again = callback()
                except BaseException:  # even SystemExit: this thread serves everyone
                    _log.warning("%s: a timer callback failed", self.name, exc_info=True)
                    again = True
                if every and again:
                    self._active[ident] = (time.monotonic() + every, callback, every)
