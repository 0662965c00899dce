"""The business calendar and calendar-month arithmetic (pure: no database).

Expectations are checked against the ``holidays`` package and ``date.weekday()`` directly,
and against a handful of dates known from the 2026/2027 Japanese calendar.
"""

from __future__ import annotations

from datetime import date, timedelta

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.accounts.models import DEFAULT_CLOSED_DAYS
from service.schedules.calendar import BusinessCalendar, add_months, holiday_name, parse_closed_day

JP = holidays.country_holidays("JP", years=range(1999, 2043))


def independent_is_business_day(day: date, closed: set[date]) -> bool:
    return day.weekday() < 5 and day not in JP and day not in closed


def d(s: str) -> date:
    return date.fromisoformat(s)


# ------------------------------------------------------------------ add_months


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        ("2027-01-31", 1, "2027-02-28"),  # 2027 is not a leap year
        ("2028-01-31", 1, "2028-02-29"),  # 2028 is
        ("2028-02-29", 12, "2029-02-28"),
        ("2028-02-29", 48, "2032-02-29"),
        ("2028-02-29", 1, "2028-03-29"),
        ("2026-03-31", 1, "2026-04-30"),
        ("2026-05-31", 1, "2026-06-30"),
        ("2026-08-31", 1, "2026-09-30"),
        ("2026-10-31", 1, "2026-11-30"),
        ("2026-01-30", 1, "2026-02-28"),
        ("2026-01-15", 1, "2026-02-15"),
        ("2026-04-28", 3, "2026-07-28"),
        ("2026-11-30", 2, "2027-01-30"),  # across the year end
        ("2026-12-31", 1, "2027-01-31"),
        ("2026-12-31", 2, "2027-02-28"),
        ("2026-12-15", 12, "2027-12-15"),
        ("2026-12-15", 13, "2028-01-15"),
        ("2026-04-28", 0, "2026-04-28"),
        ("2026-07-31", 60, "2031-07-31"),
    ],
)
def test_add_months_clamps_to_month_end(start, months, expected):
    assert add_months(d(start), months) == d(expected)


@settings(max_examples=300, deadline=None)
@given(st.dates(date(2000, 1, 1), date(2040, 12, 31)), st.integers(0, 72))
def test_add_months_property(start, months):
    got = add_months(start, months)
    total = start.year * 12 + start.month - 1 + months
    assert (got.year, got.month) == (total // 12, total % 12 + 1)
    if got.day != start.day:
        # clamped: only when the target month is too short, and then to its last day
        assert got.day < start.day
        assert (got + timedelta(days=1)).day == 1


# ------------------------------------------------------------------ parse_closed_day


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("12-29", (None, 12, 29)),
        ("01-03", (None, 1, 3)),
        ("02-29", (None, 2, 29)),  # a leap day may be closed every year it exists
        (" 08-13 ", (None, 8, 13)),
        ("2026-08-14", (2026, 8, 14)),
        ("2028-02-29", (2028, 2, 29)),
    ],
)
def test_parse_closed_day_accepts(spec, expected):
    assert parse_closed_day(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "12",
        "13-01",
        "00-10",
        "02-30",
        "04-31",
        "2027-02-29",
        "2026-13-01",
        "12/29",
        "Dec-29",
        "2026-08-14-01",
        "tomorrow",
        "--",
        "12-",
        "-12",
    ],
)
def test_parse_closed_day_rejects(spec):
    with pytest.raises(ValueError, match="MM-DD or YYYY-MM-DD"):
        parse_closed_day(spec)


def test_calendar_refuses_a_bad_closed_day():
    with pytest.raises(ValueError, match="'12-32'"):
        BusinessCalendar(["12-29", "12-32"])


# ------------------------------------------------------------------ business days

GOLDEN_WEEK_2026 = {
    "2026-04-29": "Showa Day (Wed)",
    "2026-05-03": "Constitution Day (Sun)",
    "2026-05-04": "Greenery Day (Mon)",
    "2026-05-05": "Children's Day (Tue)",
    "2026-05-06": "substitute holiday for 5/3 (Wed)",
}


@pytest.mark.parametrize("day", sorted(GOLDEN_WEEK_2026))
def test_golden_week_2026_is_closed(day):
    assert not BusinessCalendar().is_business_day(d(day))
    assert holiday_name(d(day)) is not None


def test_golden_week_2026_by_hand():
    cal = BusinessCalendar()
    # Tue 28 April is a working day; then Showa Day; Thu/Fri work; then 2-6 May is off.
    expected = {
        "2026-04-27": True,
        "2026-04-28": True,
        "2026-04-29": False,
        "2026-04-30": True,
        "2026-05-01": True,
        "2026-05-02": False,
        "2026-05-03": False,
        "2026-05-04": False,
        "2026-05-05": False,
        "2026-05-06": False,
        "2026-05-07": True,
        "2026-05-08": True,
    }
    assert {k: cal.is_business_day(d(k)) for k in expected} == expected
    assert d("2026-05-06").weekday() == 2  # a Wednesday: closed only as a substitute holiday
    assert cal.on_or_after(d("2026-05-02")) == d("2026-05-07")
    assert cal.on_or_after(d("2026-04-29")) == d("2026-04-30")
    assert cal.add_business_days(d("2026-05-01"), 1) == d("2026-05-07")
    assert cal.add_business_days(d("2026-04-28"), 3) == d("2026-05-07")


def test_holiday_names():
    assert holiday_name(d("2026-05-03")) == "憲法記念日"
    assert holiday_name(d("2026-05-05"), "en_US") == "Children's Day"
    assert holiday_name(d("2026-05-07")) is None


def test_other_2026_holidays():
    cal = BusinessCalendar()
    # Marine Day: third Monday of July (20 July 2026)
    assert d("2026-07-20").weekday() == 0
    assert not cal.is_business_day(d("2026-07-20"))
    assert cal.on_or_after(d("2026-07-18")) == d("2026-07-21")
    # Silver Week 2026: Respect for the Aged Day (Mon 21), a 国民の休日 (Tue 22), equinox (Wed 23)
    for day in ("2026-09-21", "2026-09-22", "2026-09-23"):
        assert not cal.is_business_day(d(day)), day
    assert cal.on_or_after(d("2026-09-19")) == d("2026-09-24")
    # Substitute holiday: Vernal Equinox on Sunday 21 March 2027, Monday 22 March off
    assert d("2027-03-21").weekday() == 6
    assert not cal.is_business_day(d("2027-03-22"))
    assert cal.on_or_after(d("2027-03-20")) == d("2027-03-23")
    # Mountain Day on a Tuesday; Monday before it is a working day
    assert not cal.is_business_day(d("2026-08-11"))
    assert cal.is_business_day(d("2026-08-10"))


def test_weekends_are_closed_and_weekdays_open():
    cal = BusinessCalendar()
    # a plain week in June 2026 without holidays
    for offset in range(14):
        day = d("2026-06-01") + timedelta(days=offset)
        assert cal.is_business_day(day) == (day.weekday() < 5), day


def test_every_day_2025_to_2028_matches_holidays_package():
    cal = BusinessCalendar()  # no office closed days
    day = d("2025-01-01")
    while day <= d("2028-12-31"):
        assert cal.is_business_day(day) == independent_is_business_day(day, set()), day
        day += timedelta(days=1)


def test_office_new_year_closure():
    cal = BusinessCalendar(DEFAULT_CLOSED_DAYS)
    # 2026-12-28 is a Monday and a working day; 29 Dec .. 3 Jan closed; 4 Jan 2027 is a Monday
    assert cal.is_business_day(d("2026-12-28"))
    for offset in range(6):
        assert not cal.is_business_day(d("2026-12-29") + timedelta(days=offset))
    assert d("2027-01-04").weekday() == 0
    assert cal.is_business_day(d("2027-01-04"))
    assert cal.on_or_after(d("2026-12-29")) == d("2027-01-04")
    assert cal.add_business_days(d("2026-12-24"), 1) == d("2026-12-25")  # Thu -> Fri
    assert cal.add_business_days(d("2026-12-25"), 1) == d("2026-12-28")  # Fri -> Mon
    assert cal.add_business_days(d("2026-12-25"), 2) == d("2027-01-04")
    assert cal.add_business_days(d("2026-12-28"), 1) == d("2027-01-04")
    assert cal.add_business_days(d("2026-12-28"), 3) == d("2027-01-06")
    # A calendar without the closure works 29 and 30 December (Tue, Wed)
    plain = BusinessCalendar()
    assert plain.add_business_days(d("2026-12-28"), 1) == d("2026-12-29")
    assert plain.on_or_after(d("2026-12-31")) == d("2026-12-31")
    assert plain.on_or_after(d("2027-01-01")) == d("2027-01-04")  # New Year's Day, then weekend


def test_recurring_closed_day_repeats_every_year():
    cal = BusinessCalendar(["08-14"])  # an office's own summer day off
    for year in range(2026, 2032):
        day = date(year, 8, 14)
        assert not cal.is_business_day(day)
        if day.weekday() < 5 and day not in JP:
            assert cal.on_or_after(day) > day
    assert cal.is_business_day(d("2026-08-13"))  # Thursday


def test_one_off_closed_day_applies_once():
    cal = BusinessCalendar(["2026-06-10"])  # a Wednesday, e.g. office move
    assert not cal.is_business_day(d("2026-06-10"))
    assert cal.on_or_after(d("2026-06-10")) == d("2026-06-11")
    assert cal.is_business_day(d("2027-06-10"))  # a Thursday the next year: open
    assert cal.add_business_days(d("2026-06-09"), 1) == d("2026-06-11")


def test_add_business_days_counts_only_business_days():
    cal = BusinessCalendar()
    assert cal.add_business_days(d("2026-04-17"), 1) == d("2026-04-20")  # Fri -> Mon
    assert cal.add_business_days(d("2026-04-18"), 1) == d("2026-04-20")  # Sat -> Mon
    assert cal.add_business_days(d("2026-04-20"), 5) == d("2026-04-27")
    assert cal.add_business_days(d("2026-07-17"), 1) == d("2026-07-21")  # over Marine Day


def test_on_or_after_keeps_a_business_day():
    cal = BusinessCalendar(DEFAULT_CLOSED_DAYS)
    assert cal.on_or_after(d("2026-04-28")) == d("2026-04-28")


def test_no_business_day_within_a_year_is_an_error():
    every_day = [f"{m:02d}-{day:02d}" for m in range(1, 13) for day in range(1, 32) if _valid(2024, m, day)]
    cal = BusinessCalendar(every_day)
    with pytest.raises(ValueError, match="no business day"):
        cal.on_or_after(d("2026-04-28"))


def _valid(y: int, m: int, day: int) -> bool:
    try:
        date(y, m, day)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------ properties

closed_specs = st.lists(
    st.one_of(
        st.dates(date(2000, 1, 1), date(2040, 12, 31)).map(lambda x: x.isoformat()),
        st.dates(date(2024, 1, 1), date(2024, 12, 31)).map(lambda x: x.strftime("%m-%d")),
    ),
    max_size=40,
)


def _closed_set(specs: list[str], start: date, end: date) -> set[date]:
    """The closed days between start and end, worked out without BusinessCalendar."""
    out = set()
    for spec in specs:
        parts = [int(p) for p in spec.split("-")]
        if len(parts) == 3:
            out.add(date(*parts))
        else:
            for year in range(start.year, end.year + 1):
                if _valid(year, parts[0], parts[1]):
                    out.add(date(year, parts[0], parts[1]))
    return out


@settings(max_examples=300, deadline=None)
@given(st.dates(date(2000, 1, 1), date(2040, 12, 31)), closed_specs)
def test_on_or_after_is_the_first_business_day(day, specs):
    cal = BusinessCalendar(specs)
    got = cal.on_or_after(day)
    closed = _closed_set(specs, day, got + timedelta(days=1))
    assert got >= day
    assert independent_is_business_day(got, closed)
    between = day
    while between < got:
        assert not independent_is_business_day(between, closed), between
        between += timedelta(days=1)


@settings(max_examples=200, deadline=None)
@given(st.dates(date(2000, 1, 1), date(2040, 12, 31)), closed_specs, st.integers(1, 30))
def test_add_business_days_skips_exactly_n(day, specs, n):
    cal = BusinessCalendar(specs)
    got = cal.add_business_days(day, n)
    closed = _closed_set(specs, day, got + timedelta(days=1))
    assert independent_is_business_day(got, closed)
    count = sum(independent_is_business_day(day + timedelta(days=i), closed) for i in range(1, (got - day).days + 1))
    assert count == n
