"""Writing a recording out for other tools: ``cast`` (the file itself, checked), ``json`` (one
JSON document) or ``text`` (the screen as it was shown, rebuilt with the terminal emulator).

Every format is streamed: memory stays small whatever the size of the recording. On damage,
what comes before it is written (a ``json`` document is closed properly, with a ``damage``
member), then :class:`~hoopctl.replay.errors.RecordingDamaged` is raised.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import IO, Any

from hoopctl.replay._cast import CastFile, open_recording
from hoopctl.replay._terminal import Terminal
from hoopctl.replay.errors import RecordingDamaged, ReplayUsageError
from hoopctl.replay.index import apply_event

FORMATS = ("cast", "json", "text")
_COPY_CHUNK = 1 << 20


def export(path: Path | str, fmt: str, out: IO[Any] | None = None) -> None:
    """Write the recording at ``path`` to ``out`` (default: stdout) in format ``fmt``.

    * ``cast``: the file byte for byte, every line checked first (an asciicast file that
      ``asciinema play`` and ``asciinema cat`` take).
    * ``json``: ``{"header": {...}, "events": [[time, code, data], ...]}``; times in seconds
      from the start (also for asciicast v3 input, whose file stores intervals).
    * ``text``: plain text, no escape sequences: every line as it scrolled off the top of
      the screen (or was cleared from it), then the final screen, trailing blanks removed.
      Full-screen programs (alternate screen) show only if they are still on screen at the
      end.
    """
    if fmt not in FORMATS:
        raise ReplayUsageError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    writer = _Writer(out if out is not None else sys.stdout)
    try:
        with CastFile(path) as cast:
            if fmt == "cast":
                _export_cast(cast, writer)
            elif fmt == "json":
                _export_json(cast, writer)
            else:
                _export_text(cast, writer)
    finally:
        writer.flush()


class _Writer:
    def __init__(self, out: IO[Any]) -> None:
        self._binary: IO[bytes] | None = None
        self._text: IO[str] | None = None
        if hasattr(out, "buffer"):
            with contextlib.suppress(OSError, ValueError):
                out.flush()
            self._binary = out.buffer
        elif isinstance(out, io.RawIOBase | io.BufferedIOBase):
            self._binary = out  # type: ignore[assignment]
        else:
            self._text = out

    def bytes(self, data: bytes) -> None:
        if self._binary is not None:
            self._binary.write(data)
        else:
            assert self._text is not None
            self._text.write(data.decode("utf-8", "replace"))

    def text(self, data: str) -> None:
        if self._text is not None:
            self._text.write(data)
        else:
            assert self._binary is not None
            self._binary.write(data.encode("utf-8", "replace"))

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            (self._binary or self._text).flush()  # type: ignore[union-attr]


def _export_cast(cast: CastFile, writer: _Writer) -> None:
    with open_recording(cast.path) as raw:
        copied = 0

        def copy_to(offset: int) -> None:
            nonlocal copied
            raw.seek(copied)
            while copied < offset:
                data = raw.read(min(_COPY_CHUNK, offset - copied))
                if not data:
                    break
                writer.bytes(data)
                copied += len(data)

        try:
            while cast.read() is not None:
                if cast.position.offset - copied >= _COPY_CHUNK:
                    copy_to(cast.position.offset)
        except RecordingDamaged as exc:
            copy_to(exc.offset)
            raise
        copy_to(cast.position.offset)


def _export_json(cast: CastFile, writer: _Writer) -> None:
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    writer.text('{"header": ' + dumps(cast.header.raw) + ', "events": [')
    first = True
    try:
        while True:
            event = cast.read()
            if event is None:
                break
            line = dumps([round(event.time, 6), event.code, event.data])
            writer.text(("\n  " if first else ",\n  ") + line)
            first = False
    except RecordingDamaged as exc:
        writer.text('\n], "damage": ' + dumps(exc.to_json()) + "}\n")
        raise
    writer.text("\n]}\n")


def _export_text(cast: CastFile, writer: _Writer) -> None:
    header = cast.header
    terminal = Terminal(
        header.width, header.height, on_scroll=lambda line: writer.text(line + "\n")
    )

    def write_screen() -> None:
        lines = terminal.lines()
        while lines and not lines[-1]:
            lines.pop()
        for line in lines:
            writer.text(line + "\n")

    try:
        while True:
            event = cast.read()
            if event is None:
                break
            apply_event(terminal, event)
    except RecordingDamaged:
        write_screen()
        raise
    write_screen()
