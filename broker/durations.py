"""Durations as people write them in config files and flags: "90s", "15m", "8h", "90d"."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str) -> int:
    """Return the number of seconds in TEXT ("1h30m", "45s", "2d"); raise ValueError if malformed."""
    cleaned = text.strip().lower()
    if cleaned.isdigit():
        return int(cleaned)
    pos = 0
    total = 0
    for match in _PART.finditer(cleaned):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(cleaned) or not cleaned:
        raise ValueError(f"not a duration: {text!r} (use forms like 90s, 15m, 8h, 2d)")
    return total


def format_duration(seconds: float) -> str:
    """Render SECONDS compactly for people: 3h05m, 12m30s, 45s."""
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
