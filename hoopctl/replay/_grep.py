"""Finding the first moment a regular expression shows: in a mark or in the output's text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from hoopctl.replay._cast import CastFile
from hoopctl.replay.errors import NoMatch, RecordingDamaged, ReplayUsageError

_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC
    r"|\x1b[()*+].|\x1b[ -/]*[0-~]"  # charset designations, other escapes
    r"|[\x00-\x07\x0b-\x0c\x0e-\x1f\x7f]"  # controls other than BS, LF, CR
)
_LINE_LIMIT = 4096


class Match(NamedTuple):
    time: float
    line: int  # the line of the event that completed the match
    source: str  # "output" or "mark"
    text: str  # the matching line or mark label


def compile_pattern(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ReplayUsageError(
            f"--grep {pattern!r} is not a valid regular expression: {exc}"
        ) from None


def first_match(path: Path | str, pattern: str | re.Pattern[str]) -> Match:
    """The first event after which ``pattern`` shows: a mark whose label matches, or a line of
    output (escape sequences removed, backspaces applied) that matches.

    Raises :class:`NoMatch` when there is none (naming the damage that ended the search, if
    any).
    """
    regex = compile_pattern(pattern) if isinstance(pattern, str) else pattern
    current = ""  # the output line being written
    with CastFile(path) as cast:
        try:
            while True:
                event = cast.read()
                if event is None:
                    break
                if event.code == "m":
                    if regex.search(event.data):
                        return Match(event.time, event.line, "mark", event.data)
                    continue
                if event.code != "o":
                    continue
                text = _ESCAPES.sub("", event.data)
                if not text:
                    continue
                *complete, last = text.split("\n")
                for index, piece in enumerate([*complete, last]):
                    current = _apply(current if index == 0 else "", piece)
                    if regex.search(current):
                        return Match(event.time, event.line, "output", current)
                current = current[-_LINE_LIMIT:]
        except RecordingDamaged as exc:
            raise NoMatch(
                f"no match for {regex.pattern!r} in {path} before its damage at line "
                f"{exc.line} (byte {exc.offset}): {exc.reason}"
            ) from None
    raise NoMatch(f"no match for {regex.pattern!r} in {path}")


def _apply(line: str, text: str) -> str:
    """``line`` with ``text`` written after it; BS removes a character. CR is dropped: what
    a shell redraws after it is searched together with what was there, so neither is missed."""
    if "\r" in text:
        text = text.replace("\r", "")
    if "\b" in text:
        out = list(line)
        for char in text:
            if char == "\b":
                if out:
                    out.pop()
            else:
                out.append(char)
        return "".join(out)
    return line + text
