"""Playing a recording in the terminal, at its original timing, with keys.

Timing: each event is due ``min(gap, idle_limit) / speed`` seconds after the one before it
(``gap`` in recording time). The clock is kept as "recording time ``t_last`` was shown at wall
time ``wall_last``"; a speed change or a pause moves ``wall_last`` so that playback goes on
from the same point.

Moving in time:

* a jump forward over little output (under :data:`DIRECT_LIMIT` characters) writes that
  output to the terminal as it is, which is exactly what the terminal saw;
* anything else (``at``, ``grep``, a jump back, a far jump forward) rebuilds the screen:
  the index's keyframe before the target plus the events since, through the emulator, and
  paints the result. Never by writing everything from the start.

Keys (only when stdin is a terminal; it is put in raw mode while playing): space pauses and
resumes, ``+``/``-`` double and halve the speed (0.1 to 64), right arrow skips 5 seconds ahead
(or to the next event, across a longer pause), left arrow goes 5 seconds back, ``n`` jumps to
the next command (a ``command:`` or ``query:`` mark), ``q`` quits, Ctrl-C quits with 130.

Follow (a live session): when the end of the file is reached, wait for it to grow, and play
what arrives as soon as it arrives. Stop when the ``follow`` callable returns True, when an
end mark (label ``end`` or ``end: ...``) has been played, or on ``q``.

Setting ``HOOP_REPLAY_TRACE`` to a file name appends one line per player action to that file
(start, pause, speed, skip, seek, next, quit, end): what the keys did, for debugging and
tests.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from hoopctl.replay import _keys
from hoopctl.replay._cast import CastFile, Event, Position
from hoopctl.replay._grep import compile_pattern, first_match
from hoopctl.replay.errors import (
    RecordingDamaged,
    ReplayError,
    ReplayUsageError,
    format_offset,
)
from hoopctl.replay.index import Index, open_index

MIN_SPEED = 0.1
MAX_SPEED = 64.0
SKIP_SECONDS = 5.0
DIRECT_LIMIT = 256 * 1024
FOLLOW_POLL = 0.2
COMMAND_KINDS = ("command:", "query:", "blocked:")  # where `n` stops

Follow = bool | Callable[[], bool] | None

_CLEAR = "\x1b[0m\x1b[H\x1b[2J"
_RESTORE = (
    "\x1b[0m\x1b[?25h\x1b[?7h\x1b[4l\x1b(B\x1b)B\x0f\x1b[?1l\x1b>"
    "\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?2004l"
    "\x1b7\x1b[?6l\x1b[r\x1b8\r\n"
)
_ALT_TOGGLE = re.compile(r"\x1b\[\?(?:1049|1047|47)([hl])")
_OFFSET_UNITS = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s)?")
_JUMPED = "jumped"


def parse_offset(value: str | float) -> float:
    """Seconds from an offset: ``90``, ``90.5``, ``1m30s``, ``1h2m``, ``1:30``, ``1:02:03.5``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip()
        seconds = -1.0
        try:
            if ":" in text:
                parts = text.split(":")
                if len(parts) <= 3 and all(part.strip() for part in parts):
                    seconds = 0.0
                    for part in parts[:-1]:
                        if not part.isdigit():
                            raise ValueError(part)
                        seconds = seconds * 60 + int(part)
                    last = float(parts[-1])
                    if last < 0:
                        raise ValueError(parts[-1])
                    seconds = seconds * 60 + last
            elif text and (text[0].isdigit() or text[0] == "."):
                match = _OFFSET_UNITS.fullmatch(text)
                if match and any(match.groups()):
                    hours, minutes, secs = (float(group or 0) for group in match.groups())
                    seconds = hours * 3600 + minutes * 60 + secs
                else:
                    seconds = float(text)
        except ValueError:
            seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise ReplayUsageError(
            f"{value!r} is not a time offset (use seconds, 1m30s, mm:ss or h:mm:ss)"
        )
    return seconds


def check_speed(speed: float) -> float:
    if not (isinstance(speed, int | float) and MIN_SPEED <= speed <= MAX_SPEED):
        raise ReplayUsageError(
            f"speed must be between {MIN_SPEED:g} and {MAX_SPEED:g}, not {speed}"
        )
    return float(speed)


def is_command(label: str) -> bool:
    return label.startswith(COMMAND_KINDS)


def is_end_mark(label: str) -> bool:
    return label == "end" or label.startswith("end:")


def play(
    path: Path | str,
    *,
    speed: float = 1.0,
    idle_limit: float | None = None,
    at: str | float | None = None,
    grep: str | None = None,
    follow: Follow = None,
    out: IO[Any] | None = None,
    keys: bool = True,
) -> int:
    """Play the recording at ``path`` on ``out`` (default: stdout); return the exit status.

    0 when it played to the end or ``q`` was pressed, 130 on Ctrl-C. Errors (not a
    recording, damage reached while playing, bad options, no ``grep`` match) raise
    :class:`~hoopctl.replay.errors.ReplayError` after the terminal has been restored; its
    message is one line that names the place of any damage.
    """
    speed = check_speed(speed)
    if idle_limit is not None and not (isinstance(idle_limit, int | float) and idle_limit > 0):
        raise ReplayUsageError(f"idle limit must be a positive number of seconds, not {idle_limit}")
    start = parse_offset(at) if at is not None else None
    regex = compile_pattern(grep) if grep is not None else None
    if follow:
        _wait_for_header(Path(path), follow)
    keys_fd = None
    if keys:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            if sys.stdin.isatty():
                keys_fd = sys.stdin.fileno()
    player = _Player(
        Path(path),
        speed=speed,
        idle_limit=idle_limit,
        follow=follow,
        out=out if out is not None else sys.stdout,
        keys_fd=keys_fd,
    )
    try:
        return player.run(start=start, regex=regex)
    finally:
        player.close()


class _Output:
    """Where the recording is written: text or binary stream, buffered between waits."""

    def __init__(self, out: IO[Any]) -> None:
        self._text: IO[str] | None = None
        self._binary: IO[bytes] | None = None
        if hasattr(out, "buffer"):
            with contextlib.suppress(OSError, ValueError):
                out.flush()
            self._binary = out.buffer
        elif isinstance(out, io.RawIOBase | io.BufferedIOBase):
            self._binary = out  # type: ignore[assignment]
        else:
            self._text = out
        try:
            self.tty = bool(out.isatty())
        except (AttributeError, OSError, ValueError):
            self.tty = False
        self._pending: list[str] = []
        self._size = 0
        self.alt = False  # the terminal is on its alternate screen

    def write(self, text: str) -> None:
        if text:
            self._pending.append(text)
            self._size += len(text)
            if self._size > 65536:
                self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        toggles = _ALT_TOGGLE.findall(data)
        if toggles:
            self.alt = toggles[-1] == "h"
        try:
            if self._binary is not None:
                self._binary.write(data.encode("utf-8", "replace"))
                self._binary.flush()
            else:
                assert self._text is not None
                self._text.write(data)
                self._text.flush()
        except BrokenPipeError:
            raise ReplayError("the terminal went away (output closed)") from None
        except OSError as exc:
            raise ReplayError(f"cannot write to the terminal: {exc.strerror or exc}") from None

    def finish(self) -> None:
        """Leave the terminal usable: modes the recording set are undone."""
        if self.tty:
            self.write(("\x1b[?1049l" if self.alt else "") + _RESTORE)
        with contextlib.suppress(ReplayError):
            self.flush()


class _Trace:
    def __init__(self) -> None:
        self.path = os.environ.get("HOOP_REPLAY_TRACE") or None

    def __call__(self, message: str) -> None:
        if self.path:
            with contextlib.suppress(OSError), open(self.path, "a", encoding="utf-8") as file:
                file.write(message + "\n")


class _Player:
    def __init__(
        self,
        path: Path,
        *,
        speed: float,
        idle_limit: float | None,
        follow: Follow,
        out: IO[Any],
        keys_fd: int | None,
    ) -> None:
        self.path = path
        self.cast = CastFile(path)
        self.speed = speed
        self.idle = idle_limit if idle_limit is not None else self.cast.header.idle_time_limit
        self.follow = follow
        self.live = bool(follow)
        self.out = _Output(out)
        self.keys = _keys.Keys(keys_fd)
        self.trace = _Trace()
        self.t_last = 0.0  # recording time shown ...
        self.wall_last = time.monotonic()  # ... at this wall time
        self.paused_at: float | None = None
        self.ended = False  # an end mark was played
        self.at_edge = False  # waiting for a live file to grow
        self.pending_pos: Position = self.cast.position
        self._progress_started: float | None = None
        self._last_key_poll = 0.0

    def close(self) -> None:
        self.cast.close()

    # -- the run -----------------------------------------------------------------------

    def run(self, *, start: float | None, regex: re.Pattern[str] | None) -> int:
        with _signals_interrupt():
            try:
                return self._run(start, regex)
            except KeyboardInterrupt:
                self.trace("interrupt")
                return 130

    def _run(self, start: float | None, regex: re.Pattern[str] | None) -> int:
        if regex is not None:
            match = first_match(self.path, regex)
            start = match.time
            self.trace(f"grep {regex.pattern} -> {match.time:.3f} line {match.line}")
        if start is None and self.live:
            start = math.inf
        if start is not None:
            self._check_start(start)  # before the terminal is touched
        with self.keys.raw():
            try:
                if start is None:
                    self.out.write(_CLEAR)
                    self.trace("start 0")
                else:
                    self._seek(start)
                    self.trace(f"start {self.t_last:.3f}")
                status = self._loop()
            finally:
                self.out.finish()
        self.trace(f"exit {status}")
        return status

    def _loop(self) -> int:
        while True:
            event = self._next_event()
            if isinstance(event, int):
                return event
            if event is None:
                self.trace("end")
                return 0
            result = self._wait_for(event)
            if result == _JUMPED:
                continue
            if isinstance(result, int):
                return result
            self._emit(event)

    # -- events ------------------------------------------------------------------------

    def _next_event(self) -> Event | int | None:
        while True:
            self.pending_pos = self.cast.position
            event = self.cast.read(live=self.live)
            if event is not None:
                if self.at_edge:
                    self.at_edge = False
                    self._restart_clock(event.time)
                return event
            if not self.live:
                return None
            if self._follow_done():
                return self.cast.read(live=False)  # the rest, or None
            self.at_edge = True
            self.out.flush()
            for action in self.keys.wait(FOLLOW_POLL):
                status = self._act(action, None)
                if isinstance(status, int):
                    return status

    def _follow_done(self) -> bool:
        if self.ended:
            return True
        if callable(self.follow):
            return bool(self.follow())
        return False

    def _due(self, event: Event) -> float:
        gap = max(0.0, event.time - self.t_last)
        if self.idle is not None:
            gap = min(gap, self.idle)
        return self.wall_last + gap / self.speed

    def _wait_for(self, event: Event) -> int | str | None:
        """Wait until ``event`` is due, acting on keys; None when it is, else a jump or an
        exit status."""
        while True:
            now = time.monotonic()
            if self.paused_at is None:
                due = self._due(event)
                if now >= due:
                    if now - self._last_key_poll < 0.05:
                        return None
                    timeout: float | None = 0.0  # keys stay live while output floods
                else:
                    timeout = due - now
            else:
                timeout = None if self.keys.fd is not None else 0.0
                if timeout == 0.0:
                    self.paused_at = None  # no keys to resume with
                    continue
            self.out.flush()
            self._last_key_poll = time.monotonic()
            actions = self.keys.wait(timeout)
            for action in actions:
                result = self._act(action, event)
                if result is not None:
                    return result
            if timeout == 0.0 and not actions:
                return None

    def _emit(self, event: Event) -> None:
        if event.code == "o":
            self.out.write(event.data)
        elif event.code == "m" and is_end_mark(event.data):
            self.ended = True
        self.wall_last = self._due(event)
        self.t_last = event.time

    def _restart_clock(self, at: float) -> None:
        self.t_last = at
        self.wall_last = time.monotonic()
        if self.paused_at is not None:
            self.paused_at = self.wall_last

    def _now(self, pending: Event | None) -> float:
        """The recording time on screen now."""
        now = self.paused_at if self.paused_at is not None else time.monotonic()
        shown = self.t_last + max(0.0, now - self.wall_last) * self.speed
        if pending is not None:
            shown = min(shown, pending.time)
        elif not self.at_edge:
            shown = self.t_last
        return shown

    # -- keys --------------------------------------------------------------------------

    def _act(self, action: str, pending: Event | None) -> int | str | None:
        now = time.monotonic()
        if action == _keys.QUIT:
            self.trace("quit")
            return 0
        if action == _keys.INTERRUPT:
            self.trace("interrupt")
            return 130
        if action == _keys.PAUSE:
            if self.paused_at is None:
                self.paused_at = now
                self.trace(f"pause {self._now(pending):.3f}")
            else:
                self.wall_last += now - self.paused_at
                self.paused_at = None
                self.trace(f"resume {self._now(pending):.3f}")
            return None
        if action in (_keys.FASTER, _keys.SLOWER):
            factor = 2.0 if action == _keys.FASTER else 0.5
            new = min(MAX_SPEED, max(MIN_SPEED, round(self.speed * factor, 6)))
            reference = self.paused_at if self.paused_at is not None else now
            elapsed = (reference - self.wall_last) * self.speed
            self.wall_last = reference - elapsed / new
            self.speed = new
            self.trace(f"speed {new:g}")
            return None
        if action == _keys.BACK:
            target = max(0.0, self._now(pending) - SKIP_SECONDS)
            self.trace(f"back {target:.3f}")
            self._seek(target)
            return _JUMPED
        if pending is None:  # at a live edge: nothing ahead to skip to
            return None
        if action == _keys.SKIP:
            target = self._now(pending) + SKIP_SECONDS
            self.trace(f"skip {target:.3f}")
            return self._forward(max(target, pending.time), pending, skip_gap=True)
        if action == _keys.NEXT:
            mark = self._next_command()
            if mark is None:
                self.trace("next none")
                self.out.write("\x07")
                return None
            self.trace(f"next {mark.time:.3f} {mark.data}")
            return self._forward(mark.time, pending)
        return None

    def _next_command(self) -> Event | None:
        """The next command or query mark at or after the event waiting to be played."""
        with CastFile(self.path) as scan:
            scan.seek(self.pending_pos)
            try:
                while True:
                    event = scan.read_mark(live=self.live)
                    if event is None:
                        return None
                    if is_command(event.data):
                        return event
            except RecordingDamaged:
                return None  # playback will report the damage when it gets there

    # -- moving in time ----------------------------------------------------------------

    def _forward(self, target: float, pending: Event, *, skip_gap: bool = False) -> str:
        """Show the recording at ``target`` (at or after ``pending``'s time): write the
        output in between when there is little, else rebuild the screen. With ``skip_gap``,
        when no output comes up to ``target``, go on to the next output instead."""
        chunks: list[str] = []
        size = 0
        event: Event | None = pending
        before = self.pending_pos
        try:
            while True:
                while event is not None and event.time <= target:
                    if event.code == "o":
                        chunks.append(event.data)
                        size += len(event.data)
                        if size > DIRECT_LIMIT:
                            self._seek(target)
                            return _JUMPED
                    elif event.code == "m" and is_end_mark(event.data):
                        self.ended = True
                    before = self.cast.position
                    event = self.cast.read(live=self.live)
                if skip_gap and not chunks and event is not None:
                    target = event.time  # nothing shown in the skipped span: skip the pause
                    continue
                break
        except RecordingDamaged:
            self.out.write("".join(chunks))
            raise
        self.out.write("".join(chunks))
        if event is not None:
            self.cast.seek(before)
        self._restart_clock(target)
        self.trace(f"at {target:.3f}")
        return _JUMPED

    def _check_start(self, start: float) -> None:
        """Index as far as ``start``; an offset past the end of a finished recording is a
        usage error (a second of slack: offsets are shown rounded)."""
        index = self._index(until=start)
        if (
            not self.live
            and math.isfinite(start)
            and index.damage is None
            and start > index.duration + 1.0
            and index.end.offset >= self.cast.size()
        ):
            raise ReplayUsageError(
                f"offset {format_offset(start)} is past the end of {self.path} "
                f"({format_offset(index.duration)})"
            )

    def _seek(self, target: float) -> None:
        """Rebuild and paint the screen at ``target`` from the index; reading goes on from
        the first event after it."""
        index = self._index(until=target)
        terminal, position = index.terminal_at(target, cast=self.cast)
        self.out.write(terminal.render())
        self.cast.seek(position)
        self.at_edge = False
        self._restart_clock(target if math.isfinite(target) else position.time)
        self.trace(f"seek {self.t_last:.3f}")

    def _index(self, *, until: float) -> Index:
        self._progress_started = None
        try:
            return open_index(
                self.path, until=None if math.isinf(until) else until, progress=self._progress
            )
        finally:
            if self._progress_started is not None and _stderr_is_tty():
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()

    def _progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self._progress_started is None:
            self._progress_started = now
        if now - self._progress_started < 0.3 or not _stderr_is_tty() or total <= 0:
            return
        percent = min(100, done * 100 // total)
        sys.stderr.write(f"\r\x1b[Khoopctl: indexing {self.path.name}: {percent}%")
        sys.stderr.flush()


def _wait_for_header(path: Path, follow: Follow, timeout: float = 30.0) -> None:
    """A live file may not have its whole header line yet (a download that just started):
    wait for it, until the session ends or ``timeout``; reading it then says what is wrong."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with path.open("rb") as file:
                if b"\n" in file.readline(1 << 20):
                    return
        except OSError:
            return
        if callable(follow) and follow():
            return
        time.sleep(FOLLOW_POLL / 2)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the replay like Ctrl-C, so the terminal is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
