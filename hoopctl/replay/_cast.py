"""Reading asciicast files line by line, with the place (line, byte, time) of every event.

Any asciinema recording plays, not only the broker's: asciicast v2 (a JSON header line,
then one ``[time, code, data]`` line per event, times in seconds since the start) and
asciicast v3 (the same shape with a ``term`` object in the header, times as intervals since
the previous event, and ``#`` comment lines). Unknown event codes are kept and ignored by
the player; times that go backwards are held at the previous time.

Damage is reported as :class:`RecordingDamaged` with the line, byte offset and time of the
last good event: a line that is not JSON or not an event, or -- when the file is finished --
an incomplete last line. While a file is still being written (``live``), an incomplete last
line is simply not there yet.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from hoopctl.replay.errors import NotARecording, RecordingDamaged, ReplayError

MAX_WIDTH = 1000
MAX_HEIGHT = 1000
"""Terminal sizes above these are clamped for the emulator (a header cannot make us allocate
or paint a screen of a million columns)."""

_HEADER_LIMIT = 1 << 20
LINE_LIMIT = 64 << 20
"""An event line longer than this is damage (a corrupted file without newlines is not read
into memory whole)."""


class Event(NamedTuple):
    time: float
    code: str
    data: str
    line: int  # 1-based line number in the file
    offset: int  # byte offset of the line
    end: int  # byte offset just after the line


class Position(NamedTuple):
    """Where reading resumes: the next line's byte offset and number, and the time of the
    last event before it (v3 times are relative to it)."""

    offset: int
    line: int
    time: float


@dataclass(frozen=True)
class Header:
    version: int
    width: int
    height: int
    idle_time_limit: float | None
    raw: dict[str, Any]
    end: int  # byte offset of line 2

    @property
    def start(self) -> Position:
        return Position(self.end, 2, 0.0)


def open_recording(path: Path | str) -> BinaryIO:
    path = Path(path)
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise ReplayError(f"{path}: no such recording") from None
    except IsADirectoryError:
        raise ReplayError(f"{path} is a directory, not a recording") from None
    except OSError as exc:
        raise ReplayError(f"{path} cannot be read: {exc.strerror or exc}") from None


def read_header(file: BinaryIO, path: Path | str) -> Header:
    """Parse line 1; raise :class:`NotARecording` with the reason when it is not a header."""
    file.seek(0)
    try:
        raw = file.readline(_HEADER_LIMIT)
    except OSError as exc:
        raise ReplayError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if not raw:
        raise NotARecording(f"{path} is empty, not an asciicast recording")
    if not raw.endswith(b"\n") and len(raw) >= _HEADER_LIMIT:
        raise NotARecording(f"{path} is not an asciicast recording (its first line is too long)")
    try:
        value = json.loads(raw)
    except ValueError:
        raise NotARecording(
            f"{path} is not an asciicast recording (its first line is not a JSON header)"
        ) from None
    if not isinstance(value, dict) or "version" not in value:
        raise NotARecording(
            f"{path} is not an asciicast recording (its first line has no asciicast version)"
        )
    version = value.get("version")
    if version == 2:
        width, height = value.get("width"), value.get("height")
    elif version == 3:
        term = value.get("term") if isinstance(value.get("term"), dict) else {}
        width, height = term.get("cols"), term.get("rows")
    else:
        raise NotARecording(
            f"{path} is an asciicast version {version!r} file; only versions 2 and 3 play"
        )
    for name, size in (("width", width), ("height", height)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise NotARecording(
                f"{path} is not a valid asciicast recording (its header has no valid {name})"
            )
    limit = value.get("idle_time_limit")
    idle = (
        float(limit)
        if isinstance(limit, int | float) and not isinstance(limit, bool) and limit > 0
        else None
    )
    return Header(
        version=version,
        width=min(width, MAX_WIDTH),
        height=min(height, MAX_HEIGHT),
        idle_time_limit=idle,
        raw=value,
        end=len(raw),
    )


def _parse_event(raw: bytes) -> tuple[float, str, str]:
    """``(time, code, data)`` of one line; ValueError with a short reason otherwise."""
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValueError("not valid JSON") from None
    if not (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], int | float)
        and not isinstance(value[0], bool)
        and isinstance(value[1], str)
        and isinstance(value[2], str)
    ):
        raise ValueError("not a [time, code, data] event")
    time = float(value[0])
    if not math.isfinite(time) or time < 0:
        raise ValueError(f"bad event time {value[0]!r}")
    return time, value[1], value[2]


class CastFile:
    """An open recording: its header, and events read forward from any :class:`Position`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._file = open_recording(self.path)
        try:
            self.header = read_header(self._file, self.path)
        except BaseException:
            self._file.close()
            raise
        self._relative = self.header.version == 3
        self._pos = self.header.start
        self._file.seek(self._pos.offset)
        self.pending = False  # an incomplete last line waits (live files)

    # -- position --------------------------------------------------------------------

    @property
    def position(self) -> Position:
        return self._pos

    def seek(self, position: Position) -> None:
        self._pos = position
        self._file.seek(position.offset)
        self.pending = False

    def size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    # -- reading ---------------------------------------------------------------------

    def read(self, *, live: bool = False) -> Event | None:
        """The next event, or None at the end of the file (for now, when ``live``).

        Raises :class:`RecordingDamaged` at a line that is not an event, and -- unless
        ``live`` -- at an incomplete last line that does not parse.
        """
        file = self._file
        while True:
            offset, line, last = self._pos
            try:
                raw = file.readline(LINE_LIMIT)
            except OSError as exc:
                raise ReplayError(f"{self.path} cannot be read: {exc.strerror or exc}") from None
            if not raw:
                self.pending = False
                return None
            complete = raw.endswith(b"\n")
            if not complete and len(raw) >= LINE_LIMIT:
                raise RecordingDamaged(
                    self.path,
                    line=line,
                    offset=offset,
                    time=last,
                    reason=f"a line longer than {LINE_LIMIT:,} bytes",
                )
            if not complete and live:
                file.seek(offset)
                self.pending = True
                return None
            end = offset + len(raw)
            stripped = raw.strip()
            if not stripped or (self._relative and stripped.startswith(b"#")):
                self._pos = Position(end, line + 1, last)
                continue
            try:
                time, code, data = _parse_event(raw)
            except ValueError as exc:
                if not complete:
                    raise RecordingDamaged(
                        self.path,
                        line=line,
                        offset=offset,
                        time=last,
                        reason="the last line is incomplete",
                        truncated=True,
                    ) from None
                raise RecordingDamaged(
                    self.path, line=line, offset=offset, time=last, reason=str(exc)
                ) from None
            time = last + time if self._relative else max(time, last)
            self._pos = Position(end, line + 1, time)
            return Event(time, code, data, line, offset, end)

    def read_mark(self, *, live: bool = False) -> Event | None:
        """The next ``m`` event, or None. In v2 files a line without ``"m"`` in it cannot be
        a mark and is skipped without being parsed (so damage there goes unnoticed)."""
        if self._relative:
            while True:
                event = self.read(live=live)
                if event is None or event.code == "m":
                    return event
        file = self._file
        while True:
            offset, line, last = self._pos
            raw = file.readline(LINE_LIMIT)
            if not raw or (live and not raw.endswith(b"\n")):
                file.seek(offset)
                return None
            if b'"m"' not in raw:
                self._pos = Position(offset + len(raw), line + 1, last)
                continue
            file.seek(offset)
            event = self.read(live=live)
            if event is None or event.code == "m":
                return event

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CastFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def parse_size(data: str) -> tuple[int, int] | None:
    """``"COLSxROWS"`` of a resize event, clamped; None when it is not one."""
    cols, sep, rows = data.partition("x")
    if not sep or not cols.isdigit() or not rows.isdigit():
        return None
    width, height = int(cols), int(rows)
    if width < 1 or height < 1:
        return None
    return min(width, MAX_WIDTH), min(height, MAX_HEIGHT)
