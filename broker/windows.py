"""Change windows: weekly hours in a time zone, for rules that apply only inside (or only
outside) them (`when = { hours = "Mon-Fri 08:00-18:00", tz = "Europe/Berlin" }`).

HOURS is one or more spans separated by commas: DAYS HH:MM-HH:MM, where DAYS is one day
(`Sat`) or a range (`Mon-Fri`, `Fri-Mon` wraps the week). The end may be 24:00; an end before
the start runs past midnight into the next day (`Mon-Fri 22:00-06:00`: the nights that start
Monday to Friday). Pure functions of a time given to them: nothing here reads the clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(
    r"^\s*(?P<first>[a-z]{3})(?:\s*-\s*(?P<last>[a-z]{3}))?\s+"
    r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$",
    re.IGNORECASE,
)


def _minutes(text: str, *, end: bool) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not end)):
        raise ValueError(f"{text} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


@dataclass(frozen=True)
class Span:
    days: frozenset[int]  # 0 = Monday: the days the span starts on
    start: int  # minutes after midnight
    end: int  # minutes after midnight; <= start: into the next day

    def contains(self, weekday: int, minute: int) -> bool:
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        # Past midnight: the evening part on its own day, the morning part on the day after.
        return (weekday in self.days and minute >= self.start) or (
            (weekday - 1) % 7 in self.days and minute < self.end
        )


def parse_hours(text: str) -> tuple[Span, ...]:
    """The spans of HOURS; ValueError with what is wrong in it."""
    spans = []
    for part in text.split(","):
        match = _SPAN.match(part)
        if match is None:
            raise ValueError(
                f"expected DAYS HH:MM-HH:MM such as Mon-Fri 08:00-18:00, got {part.strip()!r}"
            )
        first = match.group("first").lower()
        last = (match.group("last") or first).lower()
        for day in (first, last):
            if day not in DAYS:
                raise ValueError(f"unknown day {day!r}: use Mon, Tue, Wed, Thu, Fri, Sat, Sun")
        a, b = DAYS.index(first), DAYS.index(last)
        days = frozenset((a + n) % 7 for n in range((b - a) % 7 + 1))
        start = _minutes(match.group("start"), end=False)
        end = _minutes(match.group("end"), end=True)
        if start == end:
            raise ValueError(f"{part.strip()!r} is empty: its start and end are the same")
        spans.append(Span(days, start, end))
    return tuple(spans)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)"
        ) from None


@dataclass(frozen=True)
class Window:
    spans: tuple[Span, ...]
    tz: ZoneInfo

    @classmethod
    def parse(cls, hours: str, tz: str = "UTC") -> Window:
        return cls(parse_hours(hours), zone(tz))

    def contains(self, when: float) -> bool:
        """Whether unix time WHEN falls in the window (in its time zone)."""
        local = datetime.fromtimestamp(when, self.tz)
        minute = local.hour * 60 + local.minute
        return any(span.contains(local.weekday(), minute) for span in self.spans)
