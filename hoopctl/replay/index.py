"""The recording index: keyframes of the screen, so that any moment is shown at once.

An index holds, for one recording:

* **keyframes**: the complete terminal state (screen, colours, cursor, modes, scroll region,
  alternate screen) after a given event, with that event's byte offset, line and time; one
  every :data:`KEYFRAME_BYTES` of recording, or every :data:`KEYFRAME_SECONDS` of recording
  time when at least :data:`KEYFRAME_MIN_BYTES` came since the last one (so an idle or
  typing-only session does not collect near-identical keyframes);
* **marks**: every ``m`` event (``command: ...``, ``query: ...``, ``blocked: ...``) with its
  time and place, for the command timeline and the ``n`` key;
* where indexing stopped (``end``), the recording's duration up to there, and the damage
  (corrupt line) that stopped it, if any.

The screen at time T is the last keyframe at or before T plus the events between it and T
fed to the emulator: at most about :data:`KEYFRAME_BYTES` of output, whatever the length of
the recording.

**File.** ``RECORDING.idx`` beside the recording, or -- when that directory is not writable --
``$XDG_CACHE_HOME/hoopctl/replay-index/<sha256 of the recording's path>.idx``; mode 0600 (it
holds screen contents, as the recording does), written to a temporary file and renamed into
place. Layout: a magic line, one JSON line of metadata (keyframe table, marks, validity
data), then the keyframes' compressed snapshots back to back. Loading reads the metadata
only; a seek reads one snapshot.

**Validity.** The index records the SHA-256 of the recording's first 64 KiB and of the
4 KiB before ``end``. When both still match, the index is reused; when the file has grown
(a live session), indexing resumes from the last keyframe; when either differs (the file was
replaced or rewritten), the index is rebuilt from the start.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from hoopctl.replay._cast import CastFile, Event, Header, Position, parse_size
from hoopctl.replay._terminal import Terminal
from hoopctl.replay.errors import RecordingDamaged

KEYFRAME_BYTES = 128 * 1024
KEYFRAME_SECONDS = 5.0
KEYFRAME_MIN_BYTES = 4 * 1024
INDEX_SUFFIX = ".idx"

_MAGIC = b"HOOPCTL-REPLAY-INDEX 1\n"
_PREFIX_BYTES = 64 * 1024
_TAIL_BYTES = 4096
_PROGRESS_EVERY = 1 << 20

Progress = Callable[[int, int], None]
"""Called with (bytes indexed, bytes to index) while an index is built."""


class Keyframe(NamedTuple):
    time: float  # time of the last event applied
    offset: int  # byte offset of the next event's line
    line: int  # its line number
    blob_offset: int
    blob_size: int

    @property
    def position(self) -> Position:
        return Position(self.offset, self.line, self.time)


class Mark(NamedTuple):
    time: float
    label: str
    line: int
    offset: int


@dataclass
class Index:
    """A recording's index (see the module docstring). Build or load it with :func:`open_index`."""

    recording: Path
    header: Header
    keyframes: list[Keyframe]
    marks: list[Mark]
    end: Position
    duration: float
    size: int  # the recording's size when it was indexed
    complete: bool  # indexing reached the end of the file (or the damage) at that size
    damage: RecordingDamaged | None = None
    path: Path | None = None  # where it is saved, None when it could not be
    _blobs: bytes | None = field(default=None, repr=False)  # in memory after a build
    _blob_base: int = field(default=0, repr=False)  # else: offset of the blobs in `path`

    # -- reading ---------------------------------------------------------------------

    def keyframe_for(self, time: float) -> Keyframe:
        """The last keyframe at or before ``time``."""
        times = [keyframe.time for keyframe in self.keyframes]
        return self.keyframes[max(0, bisect.bisect_right(times, time) - 1)]

    def keyframe_before_offset(self, offset: int) -> Keyframe:
        """The last keyframe whose position is at or before byte ``offset``."""
        offsets = [keyframe.offset for keyframe in self.keyframes]
        return self.keyframes[max(0, bisect.bisect_right(offsets, offset) - 1)]

    def snapshot(self, keyframe: Keyframe) -> bytes:
        if self._blobs is not None:
            return self._blobs[keyframe.blob_offset : keyframe.blob_offset + keyframe.blob_size]
        assert self.path is not None
        with self.path.open("rb") as file:
            file.seek(self._blob_base + keyframe.blob_offset)
            return file.read(keyframe.blob_size)

    def terminal_at(
        self, time: float, *, cast: CastFile | None = None
    ) -> tuple[Terminal, Position]:
        """The terminal as it was at ``time`` (every event at or before it applied), and the
        position of the next event to play.

        Stops early at damage (the position is then the damaged line, so that reading on
        reports it). Events after ``end`` are read from the recording itself.
        """
        keyframe = self.keyframe_for(time)
        terminal = Terminal.from_snapshot(self.snapshot(keyframe))
        own = cast is None
        cast = cast or CastFile(self.recording)
        try:
            cast.seek(keyframe.position)
            while True:
                before = cast.position
                try:
                    event = cast.read(live=True)
                except RecordingDamaged:
                    cast.seek(before)
                    return terminal, before
                if event is None or event.time > time:
                    cast.seek(before)
                    return terminal, before
                apply_event(terminal, event)
        finally:
            if own:
                cast.close()

    def terminal_at_offset(
        self, offset: int, *, cast: CastFile | None = None
    ) -> tuple[Terminal, Position]:
        """The terminal after every event whose line starts before byte ``offset``."""
        keyframe = self.keyframe_before_offset(offset)
        terminal = Terminal.from_snapshot(self.snapshot(keyframe))
        own = cast is None
        cast = cast or CastFile(self.recording)
        try:
            cast.seek(keyframe.position)
            while True:
                before = cast.position
                if before.offset >= offset:
                    return terminal, before
                try:
                    event = cast.read(live=True)
                except RecordingDamaged:
                    cast.seek(before)
                    return terminal, before
                if event is None:
                    return terminal, before
                apply_event(terminal, event)
        finally:
            if own:
                cast.close()

    def screen_at(self, time: float) -> list[str]:
        """The screen's text at ``time``, one string per line (trailing blanks removed)."""
        return self.terminal_at(time)[0].lines()

    def marks_after(self, time: float) -> list[Mark]:
        return [mark for mark in self.marks if mark.time > time]


def apply_event(terminal: Terminal, event: Event) -> None:
    """Feed one event to the emulator: output is drawn, a resize resizes, the rest is ignored."""
    if event.code == "o":
        terminal.feed(event.data)
    elif event.code == "r":
        size = parse_size(event.data)
        if size is not None:
            terminal.resize(*size)


# -- where the index lives -----------------------------------------------------------------


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hoopctl" / "replay-index"


def index_paths(recording: Path | str) -> list[Path]:
    """Where the index of ``recording`` may be: beside it, then in the cache directory."""
    recording = Path(recording)
    digest = hashlib.sha256(os.fsencode(recording.resolve())).hexdigest()[:32]
    return [
        recording.with_name(recording.name + INDEX_SUFFIX),
        cache_dir() / f"{digest}{INDEX_SUFFIX}",
    ]


# -- opening -------------------------------------------------------------------------------


def open_index(
    recording: Path | str,
    *,
    update: bool = True,
    upto: int | None = None,
    until: float | None = None,
    progress: Progress | None = None,
) -> Index:
    """The index of ``recording``: loaded when current, extended when the file grew,
    (re)built when missing or stale, and saved when it changed.

    ``upto`` (a byte offset) and ``until`` (a time): index at least that far and stop there;
    the rest is indexed the next time it is needed. Both None: index to the end of the file.
    With ``update=False`` an existing index is returned as it is (it is built only when
    there is none).

    Raises :class:`~hoopctl.replay.errors.NotARecording` and
    :class:`~hoopctl.replay.errors.ReplayError` for files that cannot be read. Damage does
    not raise: it ends the index and is kept in :attr:`Index.damage`.
    """
    recording = Path(recording)
    with CastFile(recording) as cast:
        index = load_index(recording, cast=cast)
        if index is not None and (not update or _covers(index, cast.size(), upto, until)):
            return index
        built = _build(cast, index, upto=upto, until=until, progress=progress)
        _save(built)
        return built


def _covers(index: Index, size: int, upto: int | None, until: float | None) -> bool:
    if index.damage is not None or (index.complete and index.size == size):
        return True
    if upto is None and until is None:
        return index.end.offset >= size
    if upto is not None and index.end.offset >= min(upto, size):
        return True
    return until is not None and index.duration > until


def load_index(recording: Path | str, *, cast: CastFile | None = None) -> Index | None:
    """A saved index that still matches the start of ``recording``, or None.

    It may cover only a prefix of the file (``index.end``) when the file grew since.
    """
    recording = Path(recording)
    own = cast is None
    cast = cast or CastFile(recording)
    try:
        for path in index_paths(recording):
            index = _read_index(path, recording, cast)
            if index is not None:
                return index
        return None
    finally:
        if own:
            cast.close()


def _read_index(path: Path, recording: Path, cast: CastFile) -> Index | None:
    try:
        with path.open("rb") as file:
            if file.readline() != _MAGIC:
                return None
            meta = json.loads(file.readline())
            base = file.tell()
    except (OSError, ValueError):
        return None
    try:
        end = Position(*meta["end"])
        if end.offset > cast.size():
            return None
        if meta["prefix"] != _digest(recording, 0, min(_PREFIX_BYTES, end.offset)):
            return None
        if meta["tail"] != _digest(recording, max(0, end.offset - _TAIL_BYTES), end.offset):
            return None
        damage = None
        if meta["damage"] is not None:
            found = meta["damage"]
            damage = RecordingDamaged(
                recording,
                line=found["line"],
                offset=found["offset"],
                time=found["time"],
                reason=found["reason"],
                truncated=found["truncated"],
            )
        return Index(
            recording=recording,
            header=cast.header,
            keyframes=[Keyframe(*values) for values in meta["keyframes"]],
            marks=[Mark(*values) for values in meta["marks"]],
            end=end,
            duration=meta["duration"],
            size=meta["size"],
            complete=meta["complete"],
            damage=damage,
            path=path,
            _blob_base=base,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _digest(path: Path, start: int, stop: int) -> str:
    with path.open("rb") as file:
        file.seek(start)
        return hashlib.sha256(file.read(max(0, stop - start))).hexdigest()


# -- building ------------------------------------------------------------------------------


def _build(
    cast: CastFile,
    base: Index | None,
    *,
    upto: int | None,
    until: float | None,
    progress: Progress | None,
) -> Index:
    header = cast.header
    if base is not None and base.damage is None and len(base.keyframes) > 0:
        # Resume from the last keyframe; what came after it is read again.
        last = base.keyframes[-1]
        size = last.blob_offset + last.blob_size
        blobs = bytearray(
            base._blobs[:size] if base._blobs is not None else _read_blobs(base, size)
        )
        keyframes = list(base.keyframes)
        marks = [mark for mark in base.marks if mark.offset < last.offset]
        terminal = Terminal.from_snapshot(base.snapshot(last))
        position = last.position
    else:
        terminal = Terminal(header.width, header.height)
        blob = terminal.snapshot()
        blobs = bytearray(blob)
        keyframes = [Keyframe(0.0, header.end, 2, 0, len(blob))]
        marks = []
        position = header.start
    cast.seek(position)
    total = cast.size()
    last_offset, last_time = position.offset, position.time
    next_report = position.offset + _PROGRESS_EVERY
    damage: RecordingDamaged | None = None
    duration = position.time
    complete = True
    while True:
        try:
            event = cast.read(live=True)
        except RecordingDamaged as exc:
            damage = exc
            break
        if event is None:
            break
        duration = event.time
        apply_event(terminal, event)
        if event.code == "m":
            marks.append(Mark(event.time, event.data, event.line, event.offset))
        since = event.end - last_offset
        if terminal.at_ground and (
            since >= KEYFRAME_BYTES
            or (event.time - last_time >= KEYFRAME_SECONDS and since >= KEYFRAME_MIN_BYTES)
        ):
            blob = terminal.snapshot()
            keyframes.append(Keyframe(event.time, event.end, event.line + 1, len(blobs), len(blob)))
            blobs += blob
            last_offset, last_time = event.end, event.time
        if progress is not None and event.end >= next_report:
            progress(event.end, total)
            next_report = event.end + _PROGRESS_EVERY
        if (upto is not None and event.end >= upto) or (until is not None and event.time > until):
            complete = False
            break
    if progress is not None:
        progress(cast.position.offset, total)
    return Index(
        recording=cast.path,
        header=header,
        keyframes=keyframes,
        marks=marks,
        end=cast.position,
        duration=duration,
        size=total,
        complete=complete,
        damage=damage,
        _blobs=bytes(blobs),
    )


def _read_blobs(index: Index, size: int) -> bytes:
    assert index.path is not None
    with index.path.open("rb") as file:
        file.seek(index._blob_base)
        return file.read(size)


def _save(index: Index) -> None:
    """Write ``index`` beside its recording, or in the cache directory; best effort."""
    assert index._blobs is not None
    end = index.end.offset
    meta: dict[str, Any] = {
        "recording": str(index.recording),
        "end": list(index.end),
        "prefix": _digest(index.recording, 0, min(_PREFIX_BYTES, end)),
        "tail": _digest(index.recording, max(0, end - _TAIL_BYTES), end),
        "duration": index.duration,
        "size": index.size,
        "complete": index.complete,
        "damage": index.damage.to_json() if index.damage is not None else None,
        "keyframes": [list(keyframe) for keyframe in index.keyframes],
        "marks": [list(mark) for mark in index.marks],
    }
    data = (
        _MAGIC
        + json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "surrogatepass"
        )
        + b"\n"
    )
    for path in index_paths(index.recording):
        if _write_private(path, data, index._blobs):
            index.path = path
            index._blob_base = len(data)
            return


def _write_private(path: Path, head: bytes, blobs: bytes) -> bool:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(head)
            file.write(blobs)
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return False
