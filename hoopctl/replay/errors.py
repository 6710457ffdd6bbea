"""Replay errors: each is one line a person can act on, and a hoopctl exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hoopctl.errors import EXIT_USAGE, HoopError


class ReplayError(HoopError):
    """A recording could not be played, indexed or exported."""


class ReplayUsageError(ReplayError):
    """A bad option: speed out of range, an offset that is not a time, a bad regex (exit 2)."""

    exit_code = EXIT_USAGE


class NotARecording(ReplayError):
    """The file is not an asciicast recording at all (checked on its first line)."""


class NoMatch(ReplayError):
    """``grep`` found nothing in the recording."""


class RecordingDamaged(ReplayError):
    """The recording is corrupted or truncated at a known place.

    Everything before ``line`` is valid and has been played (or exported); ``offset`` is the
    byte offset of the damaged line, ``time`` the time of the last good event.
    ``truncated`` is True when the damage is an incomplete last line (a cut-off file).
    ``partial`` holds what an API call collected before the damage (for example the
    command list of :func:`hoopctl.replay.timeline`), or None.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        line: int,
        offset: int,
        time: float,
        reason: str,
        truncated: bool = False,
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.offset = offset
        self.time = time
        self.reason = reason
        self.truncated = truncated
        self.partial: Any = None
        what = "truncated" if truncated else "damaged"
        super().__init__(
            f"{path} is {what} at line {line} (byte {offset}, after {format_offset(time)}): "
            f"{reason}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "offset": self.offset,
            "time": round(self.time, 6),
            "truncated": self.truncated,
            "reason": self.reason,
        }


def format_offset(seconds: float) -> str:
    """``seconds`` as ``M:SS.s`` or ``H:MM:SS.s``, a form ``--at`` accepts back."""
    seconds = max(0.0, seconds)
    tenths = round(seconds * 10)
    hours, rest = divmod(tenths, 36000)
    minutes, rest = divmod(rest, 600)
    secs, tenth = divmod(rest, 10)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}.{tenth}"
    return f"{minutes}:{secs:02d}.{tenth}"
