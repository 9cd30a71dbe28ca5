"""Time sources for the scheduler: the system clock, and a manual one tests and
simulations drive (no sleeping for real minutes, no patching of `datetime`)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """What the scheduler asks of time."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...

    def sleep(self, seconds: float, wake: threading.Event) -> None:
        """Wait `seconds`, or less if `wake` is set meanwhile."""
        ...


class SystemClock:
    """Wall-clock time; sleeping is a wait on the wake event."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float, wake: threading.Event) -> None:
        wake.wait(max(seconds, 0.0))


class ManualClock:
    """A clock that moves only when told to (`advance`, `set`); sleepers wake as it passes
    their deadline. Safe to drive from one thread while a scheduler sleeps in another."""

    #: Real seconds between checks of a sleeper's wake event (it is set by other code).
    POLL_SECONDS = 0.02

    def __init__(self, start: datetime | None = None) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._changed = threading.Condition()

    def now(self) -> datetime:
        with self._changed:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Move time forward by `delta` (never back) and wake sleepers; the new time."""
        if delta < timedelta(0):
            raise ValueError("a clock never goes back")
        with self._changed:
            self._now += delta
            self._changed.notify_all()
            return self._now

    def set(self, when: datetime) -> None:
        """Move time forward to `when`."""
        self.advance(when - self.now())

    def sleep(self, seconds: float, wake: threading.Event) -> None:
        with self._changed:
            deadline = self._now + timedelta(seconds=max(seconds, 0.0))
            while not wake.is_set() and self._now < deadline:
                self._changed.wait(self.POLL_SECONDS)
