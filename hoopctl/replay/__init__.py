"""Replaying recorded sessions: the player, the recording index, the command timeline, export.

Works on any asciicast v2 (or v3) file -- the broker's recordings and any asciinema
recording -- as a local file, with no broker. ``python -m hoopctl.replay FILE`` is a small
command line over the same functions (docs/replay.md).

Public API
==========

``play(path, *, speed=1.0, idle_limit=None, at=None, grep=None, follow=None, out=None, keys=True) -> int``
    Play in the terminal at the original timing. ``speed``: 0.1 to 64. ``idle_limit``:
    longest pause in seconds (default: the header's ``idle_time_limit``, else none). ``at``:
    start offset, seconds or a string (``"90"``, ``"1m30s"``, ``"1:30"``, ``"1:02:03.5"``);
    the screen at that moment is rebuilt from the index. ``grep``: a regular expression;
    start at the first mark or output line that matches. ``follow``: the file is still being
    written (a live session): True, or a callable returning True once the session has
    ended; playing goes on as the file grows and stops when the callable says so, when an
    end mark (label ``end`` or ``end: ...``) has played, or on ``q``; without ``at``/``grep``
    it starts at the live edge. ``out``: a text or binary stream (default stdout).
    ``keys``: read keys from stdin when it is a terminal (space, +, -, right, left, n, q).
    Returns 0 (played to the end, or ``q``) or 130 (Ctrl-C, SIGTERM, SIGHUP). Raises
    :class:`ReplayError` (after restoring the terminal) for everything else.

``commands(path) -> list[Command]`` and ``iter_commands(path) -> Iterator[Command]``
    The marks of the recording in order: ``Command(time, kind, text)`` -- a NamedTuple, so
    also ``(offset_seconds, kind, text)`` -- with ``kind`` "command", "query", "blocked",
    "error"... (the label's prefix), or "mark". On damage :class:`RecordingDamaged` is
    raised; ``commands`` puts what it found before in ``exc.partial``.

``export(path, fmt, out=None) -> None``
    ``fmt``: ``"cast"`` (the file as is, every line checked), ``"json"`` (one document:
    header and events) or ``"text"`` (the screen as shown, scrollback included, as plain
    text). Streams; on damage writes what comes before it, then raises.

``open_index(path, *, update=True, upto=None, until=None, progress=None) -> Index``
    The recording's index, built on first use, reused while the file is unchanged,
    extended when it grew. ``Index.terminal_at(t)`` / ``Index.screen_at(t)`` give the
    screen at any time; ``Index.marks``, ``Index.duration``, ``Index.damage``.
    ``index_paths(path)`` says where it is kept.

``parse_offset(text) -> float``, ``format_offset(seconds) -> str``
    Offsets as ``--at`` takes them and as messages print them.

Errors (all :class:`hoopctl.errors.HoopError`, so the CLI prints ``hoopctl: <message>`` and
exits with ``exit_code``): :class:`ReplayError` (1, e.g. file missing or unreadable),
:class:`NotARecording` (1), :class:`RecordingDamaged` (1; ``line``, ``offset``, ``time``,
``reason``, ``truncated``), :class:`NoMatch` (1), :class:`ReplayUsageError` (2: bad speed,
offset, regex, format, or an offset past the end).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hoopctl.replay.errors import (
        NoMatch,
        NotARecording,
        RecordingDamaged,
        ReplayError,
        ReplayUsageError,
        format_offset,
    )
    from hoopctl.replay.exporter import FORMATS, export
    from hoopctl.replay.index import Index, index_paths, open_index
    from hoopctl.replay.player import MAX_SPEED, MIN_SPEED, parse_offset, play
    from hoopctl.replay.timeline import Command, commands, iter_commands, split_label

# Each name is loaded from its module on first use (no module is named like a function it
# holds: importing hoopctl.replay.X sets the package's attribute X to that module): `hoopctl` starts without the player and
# the terminal emulator, which only replay needs.
_HOME = {
    "Command": "timeline",
    "commands": "timeline",
    "iter_commands": "timeline",
    "split_label": "timeline",
    "NoMatch": "errors",
    "NotARecording": "errors",
    "RecordingDamaged": "errors",
    "ReplayError": "errors",
    "ReplayUsageError": "errors",
    "format_offset": "errors",
    "FORMATS": "exporter",
    "export": "exporter",
    "Index": "index",
    "index_paths": "index",
    "open_index": "index",
    "MAX_SPEED": "player",
    "MIN_SPEED": "player",
    "parse_offset": "player",
    "play": "player",
}

__all__ = [
    "FORMATS",
    "MAX_SPEED",
    "MIN_SPEED",
    "Command",
    "Index",
    "NoMatch",
    "NotARecording",
    "RecordingDamaged",
    "ReplayError",
    "ReplayUsageError",
    "commands",
    "export",
    "format_offset",
    "index_paths",
    "iter_commands",
    "open_index",
    "parse_offset",
    "play",
    "split_label",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"hoopctl.replay.{module}"), name)
