"""Session recordings in asciicast v2 format, written as the session goes.

A recording is one JSON header line followed by one ``[time, code, data]`` line per
event (https://docs.asciinema.org/manual/asciicast/v2/):

* ``"o"`` output from the target, ``"i"`` input typed by the user,
* ``"r"`` a terminal resize (``"COLSxROWS"``), ``"m"`` a marker (its label).

``time`` is the number of seconds since the recorder started, written with six decimals
and never decreasing. Terminal bytes are decoded with one incremental UTF-8 decoder per
stream, so a character split across two chunks arrives whole and invalid bytes become
U+FFFD; escape sequences are kept as they are (JSON-escaped), so ``asciinema play``
reproduces the screen. Input typed while the target does not echo (passwords) is stored
as one ``*`` per character, never the characters themselves.

The header carries the standard keys plus a ``"hoop"`` object (session id, user,
target); asciinema ignores keys it does not know.

Durability: event lines are collected in memory and written to the file (one
``os.write`` of whole lines) when ``flush_interval`` seconds have passed since the last
flush -- checked each time an event is recorded -- or when more than ``MAX_PENDING``
bytes are waiting. A quiet session records no events and so checks nothing; the session
therefore also calls :meth:`Recorder.flush` from a one-second timer. Together these mean a
broker that is killed leaves a file that is valid and plays up to at most about a second
before it died. If a write fails part way through, the file is cut back to the last
complete line, so it stays readable. :meth:`Recorder.close` flushes, fsyncs and closes.

Errors: in strict mode any ``OSError`` while writing raises :class:`RecordingError` (the
session ends); in best-effort mode the error is kept in :attr:`Recorder.failed`, nothing
more is written and nothing is raised (the session warns and goes on).
"""

from __future__ import annotations

import codecs
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from broker.errors import BrokerError

MAX_PENDING = 1 << 20
"""Write out the pending lines once this many bytes are waiting, whatever the time."""


class RecordingError(BrokerError):
    """A session recording could not be created, written or read."""


@dataclass(frozen=True)
class RecordingHeader:
    session_id: str
    user: str
    target: str
    width: int
    height: int
    started_at: float  # unix time
    term: str = "xterm-256color"
    command: str | None = None
    title: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The asciicast v2 header object; ``title`` and ``command`` only when set."""
        header: dict[str, Any] = {
            "version": 2,
            "width": self.width,
            "height": self.height,
            "timestamp": int(self.started_at),
            "env": {"TERM": _clean(self.term)},
        }
        if self.title is not None:
            header["title"] = _clean(self.title)
        if self.command is not None:
            header["command"] = _clean(self.command)
        header["hoop"] = {
            "session_id": _clean(self.session_id),
            "user": _clean(self.user),
            "target": _clean(self.target),
        }
        return header


def _json_text(text: str) -> bytes:
    """TEXT as a JSON string in UTF-8: the bytes `json.dumps(text, ensure_ascii=False)`
    encodes to, made by orjson, about six times faster on a session's output (the recording's
    JSON escaping was a tenth of the broker's CPU in a large export)."""
    try:
        return orjson.dumps(text)
    except orjson.JSONEncodeError:  # a lone surrogate, which UTF-8 cannot hold
        return orjson.dumps(_clean(text))


def _clean(text: str) -> str:
    """``text`` as valid UTF-8: lone surrogates (from surrogateescape) become ``?``."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"terminal {name} must be a positive integer, not {value!r}")


def _new_decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


class Recorder:
    """Writes one session's asciicast v2 recording; see the module docstring.

    Not thread-safe: call it from one thread (the event loop). Events recorded after
    :meth:`close` are dropped.
    """

    def __init__(
        self,
        path: Path,
        header: RecordingHeader,
        *,
        strict: bool = True,
        flush_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create ``path`` (never overwriting) and write the header line at once.

        The parent directory is created with mode 0700 when missing and the file with
        mode 0600. Failing to create the file raises :class:`RecordingError` in both
        modes; failing to write the header follows ``strict``.
        """
        _check_size(header.width, header.height)
        self.path = Path(path)
        self.header = header
        self.strict = strict
        self.flush_interval = flush_interval
        self._clock = clock
        self._start = clock()
        self._last_time = 0.0
        self._last_flush = self._start
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._written = 0
        self._failed: RecordingError | None = None
        self._finished = False
        self._closed = False
        self._out_decoder = _new_decoder()
        self._in_decoder = _new_decoder()
        self._in_pending_redacted = False
        # Told each event as it is recorded (time, code, data): the session's search index
        # is built from them while the session runs (broker.audit.index.RecordingTap).
        self.tap: Callable[[float, str, str], None] | None = None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordingError(
                f"recording {self.path} cannot be created: {exc.strerror or exc}"
            ) from exc
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
            self._fd = os.open(self.path, flags, 0o600)
        except FileExistsError as exc:
            raise RecordingError(f"recording {self.path} already exists") from exc
        except OSError as exc:
            raise RecordingError(
                f"recording {self.path} cannot be created: {exc.strerror or exc}"
            ) from exc
        try:
            os.fchmod(self._fd, 0o600)  # exactly 0600, whatever the umask
        except OSError:
            pass
        self._append(json.dumps(header.to_json(), ensure_ascii=False).encode() + b"\n")
        try:
            self.flush()
        except RecordingError:
            self._closed = True
            os.close(self._fd)
            raise

    # -- properties -------------------------------------------------------------------

    @property
    def failed(self) -> RecordingError | None:
        """The write error that stopped the recording, or None while it is healthy."""
        return self._failed

    @property
    def bytes_written(self) -> int:
        """Bytes the operating system has accepted so far (header included), i.e. the
        file's size; lines still waiting for the next flush are not counted."""
        return self._written

    @property
    def closed(self) -> bool:
        return self._closed

    # -- events -----------------------------------------------------------------------

    def output(self, data: bytes) -> None:
        """Record bytes the target sent to the user's terminal."""
        if self._stopped():
            return
        text = self._out_decoder.decode(data)
        if text:
            self._event("o", text)

    def input(self, data: bytes, *, redact: bool = False) -> None:
        """Record bytes the user typed; with ``redact`` only one ``*`` per character.

        A character split between a redacted chunk and the next one is redacted too.
        """
        if self._stopped():
            return
        decoder = self._in_decoder
        head = ""
        if not redact and self._in_pending_redacted:
            # Finish the character a redacted chunk left half-decoded, masked.
            index = 0
            while decoder.getstate()[0] and index < len(data):
                head += decoder.decode(data[index : index + 1])
                index += 1
            data = data[index:]
            head = "*" * len(head)
        text = decoder.decode(data)
        if redact:
            text = "*" * len(text)
        self._in_pending_redacted = (redact or self._in_pending_redacted) and bool(
            decoder.getstate()[0]
        )
        if head or text:
            self._event("i", head + text)

    def resize(self, width: int, height: int) -> None:
        """Record that the user's terminal is now ``width`` columns by ``height`` rows."""
        _check_size(width, height)
        if self._stopped():
            return
        self._event("r", f"{width}x{height}")

    def mark(self, label: str) -> None:
        """Record a marker (a point of interest shown by players) named ``label``."""
        if self._stopped():
            return
        self._event("m", _clean(label))

    # -- writing ----------------------------------------------------------------------

    def flush(self) -> None:
        """Write every pending line to the file now (a cheap no-op when none)."""
        if self._failed is not None:
            if self.strict and not self._closed:
                raise self._failed
            return
        if self._closed:
            return
        self._last_flush = self._clock()
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            self._written += self._cut_back(data[:done])
            self._fail(exc)
        else:
            self._written += done

    def finish(self) -> None:
        """Record nothing more, and write every line still waiting (a character left
        half-decoded too): the file's content is final, and `close` only makes it durable, so
        the two can run side by side (the session's end signs the file while it is synced).
        Idempotent; in strict mode a write error found here raises :class:`RecordingError`.
        """
        if self._closed or self._finished:
            return
        self._finished = True
        if self._failed is not None:
            return
        tail = self._out_decoder.decode(b"", final=True)
        if tail:
            self._event("o", tail, flush=False)
        tail = self._in_decoder.decode(b"", final=True)
        if tail:
            masked = "*" * len(tail) if self._in_pending_redacted else tail
            self._event("i", masked, flush=False)
        self.flush()

    def close(self) -> None:
        """Finish, fsync and close the file. Idempotent.

        In strict mode a write error found here raises :class:`RecordingError` (after the
        file has been closed); an error that was already raised is not raised again.
        """
        if self._closed:
            return
        already_failed = self._failed is not None
        try:
            if not already_failed:
                self.finish()
                if self._failed is None:
                    try:
                        os.fsync(self._fd)
                    except OSError as exc:
                        self._fail(exc)
        finally:
            self._closed = True
            self._pending.clear()
            try:
                os.close(self._fd)
            except OSError as exc:
                if self._failed is None and not already_failed:
                    self._failed = self._error(exc)
                    if self.strict:
                        raise self._failed from exc

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------

    def _stopped(self) -> bool:
        """True when events are to be dropped; raises the stored error in strict mode."""
        if self._closed or self._finished:
            return True
        if self._failed is not None:
            if self.strict:
                raise self._failed
            return True
        return False

    def _event(self, code: str, data: str, *, flush: bool = True) -> None:
        now = self._clock()
        elapsed = max(self._last_time, now - self._start)
        self._last_time = elapsed
        self._append(b'[%.6f, "%s", %s]\n' % (elapsed, code.encode(), _json_text(data)))
        if self.tap is not None:
            self.tap(round(elapsed, 6), code, data)
        if flush and (
            now - self._last_flush >= self.flush_interval or self._pending_size >= MAX_PENDING
        ):
            self.flush()

    def _append(self, line: bytes) -> None:
        self._pending.append(line)
        self._pending_size += len(line)

    def _cut_back(self, written: bytes) -> int:
        """After a failed write, drop a partly written last line so the file stays valid.

        Returns how many of the ``written`` bytes remain in the file.
        """
        whole = written.rfind(b"\n") + 1
        if whole == len(written):
            return whole
        try:
            os.ftruncate(self._fd, self._written + whole)
        except OSError:
            return len(written)
        return whole

    def _error(self, exc: OSError) -> RecordingError:
        reason = exc.strerror or str(exc)
        return RecordingError(f"recording {self.path} cannot be written: {reason}")

    def _fail(self, exc: OSError) -> None:
        self._failed = self._error(exc)
        self._pending.clear()
        self._pending_size = 0
        if self.strict:
            raise self._failed from exc


def read_events(path: Path | str) -> tuple[dict[str, Any], list[tuple[float, str, str]]]:
    """Parse a recording: its header and its ``(time, code, data)`` events.

    A last line without its newline that does not parse is what a crash mid-write leaves;
    it is left out. Any other line that does not parse raises :class:`RecordingError`
    naming the line.
    """
    path = Path(path)
    header: dict[str, Any] | None = None
    events: list[tuple[float, str, str]] = []
    try:
        with path.open("rb") as file:
            for lineno, raw in enumerate(file, 1):
                complete = raw.endswith(b"\n")
                try:
                    value = json.loads(raw.decode("utf-8"))
                except ValueError as exc:
                    if not complete and lineno > 1:
                        break  # truncated last line
                    raise RecordingError(
                        f"recording {path} is corrupted at line {lineno}: {exc}"
                    ) from exc
                if lineno == 1:
                    if not isinstance(value, dict) or value.get("version") != 2:
                        raise RecordingError(
                            f"recording {path} is corrupted at line 1: not an asciicast v2 header"
                        )
                    header = value
                    continue
                if not (
                    isinstance(value, list)
                    and len(value) == 3
                    and isinstance(value[0], int | float)
                    and not isinstance(value[0], bool)
                    and isinstance(value[1], str)
                    and isinstance(value[2], str)
                ):
                    raise RecordingError(
                        f"recording {path} is corrupted at line {lineno}: not a [time, code, data] event"
                    )
                events.append((float(value[0]), value[1], value[2]))
    except OSError as exc:
        raise RecordingError(f"recording {path} cannot be read: {exc.strerror or exc}") from exc
    if header is None:
        raise RecordingError(f"recording {path} is empty")
    return header, events
