"""The office's business calendar: its country's weekend and public holidays (Japan's unless the
office says otherwise, from the ``holidays`` package, a region too: a US state, a German Land)
and the office's own closed days.

Worker tasks (calls, visits, meetings) land on business days; automated messages do not need
to, they wait for quiet hours instead.
"""

from __future__ import annotations

import calendar as _cal
from collections.abc import Iterable
from datetime import date, timedelta
from functools import lru_cache

import holidays


def add_months(start: date, months: int) -> date:
    """Calendar months, clamped to the month's end: 31 January + 1 month = 28 or 29 February."""
    month_index = start.month - 1 + months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    day = min(start.day, _cal.monthrange(year, month)[1])
    return date(year, month, day)


DEFAULT_COUNTRY = "JP"


def check_holiday_region(country: str, subdivision: str | None) -> list[tuple[str, str]]:
    """What is wrong with a country (ISO 3166-1 alpha-2) and optional subdivision, as
    (field, message) pairs; empty when the ``holidays`` package knows them."""
    supported = holidays.list_supported_countries()
    if country not in supported:
        return [("holiday_country", f"no public holidays known for {country!r}; use an ISO code such as JP or US")]
    if subdivision is not None and subdivision not in supported[country]:
        known = ", ".join(supported[country][:12]) or "none"
        return [("holiday_subdivision", f"{country} has no subdivision {subdivision!r} (known: {known}...)")]
    return []


@lru_cache(maxsize=256)
def _closed(country: str, subdivision: str | None, year: int) -> tuple[frozenset[date], frozenset[int]]:
    """The year's public holidays and the weekend's weekday numbers (Saturday 5, Sunday 6)."""
    h = holidays.country_holidays(country, subdiv=subdivision, years=year)
    return frozenset(h.keys()), frozenset(h.weekend)


def holiday_name(
    day: date, language: str = "ja", country: str = DEFAULT_COUNTRY, subdivision: str | None = None
) -> str | None:
    names = holidays.country_holidays(country, subdiv=subdivision, years=day.year, language=language)
    return names.get(day)


def parse_closed_day(spec: str) -> tuple[int | None, int, int]:
    """ "MM-DD" (every year) or "YYYY-MM-DD" (once). Raises ValueError on anything else."""
    parts = spec.strip().split("-")
    try:
        if len(parts) == 2:
            month, day = int(parts[0]), int(parts[1])
            date(2024, month, day)  # 2024 is a leap year: allows 02-29
            return None, month, day
        if len(parts) == 3:
            d = date(int(parts[0]), int(parts[1]), int(parts[2]))
            return d.year, d.month, d.day
    except ValueError:
        pass
    raise ValueError(f"closed day {spec!r} is not MM-DD or YYYY-MM-DD")


class BusinessCalendar:
    def __init__(
        self, closed_days: Iterable[str] = (), country: str = DEFAULT_COUNTRY, subdivision: str | None = None
    ) -> None:
        self.country, self.subdivision = country, subdivision
        self._recurring: set[tuple[int, int]] = set()
        self._once: set[date] = set()
        for spec in closed_days:
            year, month, day = parse_closed_day(spec)
            if year is None:
                self._recurring.add((month, day))
            else:
                self._once.add(date(year, month, day))

    def is_business_day(self, day: date) -> bool:
        public_holidays, weekend = _closed(self.country, self.subdivision, day.year)
        return not (
            day.weekday() in weekend
            or day in public_holidays
            or (day.month, day.day) in self._recurring
            or day in self._once
        )

    def on_or_after(self, day: date) -> date:
        """The day itself if it is a business day, else the next one."""
        for _ in range(366):
            if self.is_business_day(day):
                return day
            day += timedelta(days=1)
        raise ValueError("no business day within a year; check the office's closed days")

    def add_business_days(self, day: date, n: int) -> date:
        """The n-th business day after ``day`` (n >= 1)."""
        for _ in range(n):
            day = self.on_or_after(day + timedelta(days=1))
        return day
