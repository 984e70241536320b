"""The shared timer thread: one-shot and repeating deadlines, and cancel's guarantees
(the heartbeat and the PostgreSQL watchdog rely on them)."""

from __future__ import annotations

import threading
import time

import pytest

from idempotence._timers import Timers


def wait_until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_deadline_fires_once_and_a_cancelled_one_never() -> None:
    timers = Timers("test-timers")
    fired: list[str] = []
    timers.add(0.02, lambda: fired.append("a"))
    cancelled = timers.add(0.02, lambda: fired.append("b"))
    assert timers.cancel(cancelled) is True
    wait_until(lambda: fired == ["a"])
    time.sleep(0.1)
    assert fired == ["a"]
    assert len(timers) == 0


def test_a_repeating_deadline_fires_until_its_callback_returns_false() -> None:
    timers = Timers("test-timers")
    calls: list[int] = []

    def beat() -> bool:
        calls.append(1)
        return len(calls) < 3

    timers.add(0.01, beat, 0.01)
    wait_until(lambda: len(calls) == 3)
    time.sleep(0.1)
    assert len(calls) == 3  # it stopped itself
    assert len(timers) == 0


def test_cancel_of_a_repeating_deadline_stops_it_for_good() -> None:
    timers = Timers("test-timers")
    calls: list[int] = []
    ident = timers.add(0.01, lambda: calls.append(1) or True, 0.01)
    wait_until(lambda: len(calls) >= 2)
    timers.cancel(ident)  # pending between beats (True) or running (waits): either way
    seen = len(calls)
    time.sleep(0.1)
    assert len(calls) == seen
    assert len(timers) == 0


def test_cancel_waits_for_a_running_callback_and_disarms_it() -> None:
    timers = Timers("test-timers")
    entered, leave = threading.Event(), threading.Event()
    done: list[str] = []

    def slow() -> bool:
        entered.set()
        leave.wait(5)
        done.append("returned")
        return True  # would re-arm, but cancel is waiting

    ident = timers.add(0.0, slow, 0.01)
    assert entered.wait(5)
    threading.Timer(0.1, leave.set).start()
    started = time.monotonic()
    assert timers.cancel(ident) is False
    assert done == ["returned"], "cancel returned before the callback did"
    assert time.monotonic() - started >= 0.05
    time.sleep(0.1)
    assert done == ["returned"]  # not re-armed
    assert len(timers) == 0


def test_a_failing_callback_is_logged_and_a_repeating_one_keeps_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = Timers("test-timers")
    calls: list[int] = []

    def boom() -> bool:
        calls.append(1)
        raise RuntimeError("store down")

    ident = timers.add(0.01, boom, 0.01)
    wait_until(lambda: len(calls) >= 2)
    timers.cancel(ident)
    assert "a timer callback failed" in caplog.text


@pytest.mark.parametrize("delay", [1e12, float("inf"), float("nan"), 10.0**300, -5.0])
def test_a_bad_delay_does_not_stop_other_deadlines(delay: float) -> None:
    timers = Timers("test-timers-bad-delay")
    fired: list[str] = []
    # The only deadline (a heartbeat of lease=1e12): the thread plans its wait around it.
    bad = timers.add(delay, lambda: fired.append("bad"), every=delay)
    time.sleep(0.05)
    beats: list[int] = []
    timers.add(0.01, lambda: beats.append(1) or len(beats) < 3, every=0.01)
    wait_until(lambda: len(beats) == 3)
    timers.cancel(bad)


def test_a_callback_raising_anything_does_not_stop_the_thread() -> None:
    timers = Timers("test-timers-raise")
    fired: list[str] = []

    def exits() -> None:
        raise SystemExit(1)

    def interrupts() -> None:
        raise KeyboardInterrupt

    timers.add(0.0, exits)
    timers.add(0.0, interrupts)
    time.sleep(0.05)
    timers.add(0.01, lambda: fired.append("after"))
    wait_until(lambda: fired == ["after"])


def test_a_lease_of_1e12_is_refused_before_it_reaches_the_timer() -> None:
    from idempotence import Idempotency
    from idempotence.stores import MemoryStore

    with pytest.raises(ValueError, match="lease"):
        Idempotency(MemoryStore(), lease=1e12)


def test_add_and_cancel_of_a_long_delay_does_not_wake_an_idle_thread() -> None:
    """The heartbeat adds and cancels a deadline of lease / 3 around every call: once the
    thread sleeps with nothing registered, such adds must not wake it (a notify per call
    was a lock hand-off and a context switch per call)."""
    timers = Timers("test-idle")
    timers.cancel(timers.add(20.0, lambda: None))  # starts the thread
    wait_until(lambda: timers._next_wake != float("inf"))  # it sleeps, nothing registered
    notified: list[int] = []
    notify = timers._cond.notify
    timers._cond.notify = lambda n=1: (notified.append(n), notify(n))[-1]  # type: ignore[method-assign]
    for _ in range(100):
        timers.cancel(timers.add(20.0, lambda: None))
    assert notified == []
    fired = threading.Event()
    timers.add(0.05, fired.set)  # a shorter deadline still wakes it, and fires
    assert fired.wait(5)
    assert notified


def test_an_idle_thread_still_fires_a_deadline_added_long_after() -> None:
    timers = Timers("test-idle-late")
    timers.cancel(timers.add(1.0, lambda: None))
    wait_until(lambda: timers._next_wake != float("inf"))
    fired = threading.Event()
    timers.add(1.0, fired.set)  # no notify: the idle wake-up (<= 1 s away) finds it
    assert fired.wait(5)
