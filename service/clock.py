"""Time is injected: every rule and job asks a ``Clock``, so tests run at any instant."""

from __future__ import annotations

from datetime import UTC, date, datetime, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that stands still until moved; for tests, the demo and ``jobs run --at``."""

    def __init__(self, at: datetime) -> None:
        self.set(at)

    def set(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self._at = at.astimezone(UTC)

    def now(self) -> datetime:
        return self._at


def local_today(clock: Clock, tz: str | tzinfo) -> date:
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    return clock.now().astimezone(zone).date()
