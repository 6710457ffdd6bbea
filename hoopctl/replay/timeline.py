"""The command timeline of a recording: its marks (``command: ...``, ``query: ...``,
``blocked: ...``), each with its time offset."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from hoopctl.replay._cast import CastFile
from hoopctl.replay.errors import RecordingDamaged
from hoopctl.replay.index import load_index

_KIND = re.compile(r"([a-z][a-z0-9_.-]*): ?(.*)", re.DOTALL)


class Command(NamedTuple):
    time: float  # seconds from the start of the recording (what ``--at`` takes)
    kind: str  # "command", "query", "blocked", "error"...; "mark" for a label without one
    text: str


def split_label(label: str) -> tuple[str, str]:
    """``("command", "ls -l")`` from ``"command: ls -l"``; ``("mark", label)`` otherwise."""
    match = _KIND.fullmatch(label)
    if match:
        return match.group(1), match.group(2)
    return "mark", label


def iter_commands(path: Path | str) -> Iterator[Command]:
    """Every mark of the recording in order. A current index is used for the part it
    covers; the rest of the file is read and checked line by line.

    Raises :class:`RecordingDamaged` at damage, after yielding every mark before it.
    """
    path = Path(path)
    with CastFile(path) as cast:
        index = load_index(path, cast=cast)
        if index is not None:
            for mark in index.marks:
                yield Command(mark.time, *split_label(mark.label))
            if index.damage is not None:
                raise index.damage
            cast.seek(index.end)
        while True:
            event = cast.read()
            if event is None:
                return
            if event.code == "m":
                yield Command(event.time, *split_label(event.data))


def commands(path: Path | str) -> list[Command]:
    """:func:`iter_commands` as a list. On damage, :class:`RecordingDamaged` is raised with
    the marks found before it in its ``partial`` attribute."""
    found: list[Command] = []
    try:
        for command in iter_commands(path):
            found.append(command)
    except RecordingDamaged as exc:
        exc.partial = found
        raise
    return found
