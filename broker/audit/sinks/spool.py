"""An on-disk FIFO of audit events for one webhook sink: segment files and a cursor.

Layout (``DATA_DIR/audit-spool/NAME/``, mode 0700):

* ``000000000001.spool``, ``000000000002.spool``, …: JSON lines (one event each), in order.
  Each segment is allocated in full when it is created (``posix_fallocate``,
  ``SEGMENT_SIZE`` or one event's size if larger), so the space a segment needs is taken
  before anything is written to it; unused space reads as NUL bytes and marks the end.
* ``cursor``: where delivery stands, one fixed-width line ``SEGMENT OFFSET SEQ`` rewritten in
  place (so advancing it never needs new disk space), fsynced after every advance.

Space is reserved ahead: once the current segment is half full the next one is allocated.
If that fails (disk full, file size limit, ``spool_max_size``) the spool keeps writing into
what it has and reports :attr:`Spool.low_space`: in strict mode the broker then refuses new
sessions before a single event has to be refused by the spool.

All methods are blocking; the webhook sink calls them from one worker thread of its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

SEGMENT_SIZE = 1 << 20
READ_CHUNK = 1 << 20
_CURSOR_FORMAT = "{:012d} {:012d} {:020d}\n"


class SpoolFull(OSError):
    """The spool reached spool_max_size."""


@dataclass(frozen=True)
class Position:
    segment: int
    offset: int


def _segment_name(index: int) -> str:
    return f"{index:012d}.spool"


class Spool:
    def __init__(self, directory: Path, max_size: int) -> None:
        self.directory = directory
        self.max_size = max_size
        self.low_space: str | None = None  # why the next segment could not be reserved
        self.last_seq: int | None = None  # newest event written
        self.delivered_seq: int | None = None  # newest event the endpoint accepted
        self._cursor = Position(1, 0)
        self._cursor_fd: int | None = None
        self._w_index = 0
        self._w_fd: int | None = None
        self._w_pos = 0
        self._w_alloc = 0
        self._next_ready = False

    # -- opening ----------------------------------------------------------------------------

    def _segments(self) -> list[int]:
        indexes = []
        for path in self.directory.glob("*.spool"):
            with contextlib.suppress(ValueError):
                indexes.append(int(path.stem))
        return sorted(indexes)

    def _path(self, index: int) -> Path:
        return self.directory / _segment_name(index)

    def open(self) -> None:
        """Find where writing and delivery stand (after a restart, or for the first time)."""
        self.close()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cursor_path = self.directory / "cursor"
        fd = os.open(cursor_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._cursor_fd = fd
        raw = os.pread(fd, 128, 0).decode("ascii", "replace").split()
        if len(raw) == 3 and all(part.isdigit() for part in raw):
            self._cursor = Position(int(raw[0]), int(raw[1]))
            self.delivered_seq = int(raw[2]) or None
        else:
            self._write_cursor(self._cursor, 0)
        segments = self._segments()
        if segments:
            self._cursor = max(self._cursor, Position(segments[0], 0), key=_order)
            self._w_index = segments[-1]
            path = self._path(self._w_index)
            self._w_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            self._w_alloc = os.fstat(self._w_fd).st_size
            self._w_pos, last = self._scan_end(path)
            if last is not None:
                self.last_seq = last
            elif len(segments) > 1:
                _, self.last_seq = self._scan_end(self._path(segments[-2]))
            # a segment prepared ahead and never written is the current one; none beyond it
        if self.last_seq is None:
            self.last_seq = self.delivered_seq

    @staticmethod
    def _scan_end(path: Path) -> tuple[int, int | None]:
        """(offset where data ends, seq of the last complete event) of one segment."""
        data = path.read_bytes()
        nul = data.find(b"\0")
        if nul >= 0:
            data = data[:nul]
        end = data.rfind(b"\n") + 1
        last_line = data[:end].rstrip(b"\n").rsplit(b"\n", 1)[-1]
        last_seq = None
        if last_line:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                last_seq = int(json.loads(last_line)["seq"])
        return end, last_seq

    # -- writing ----------------------------------------------------------------------------

    def _allocated(self) -> int:
        total = 0
        for index in self._segments():
            with contextlib.suppress(OSError):
                total += self._path(index).stat().st_size
        return total

    def _create(self, index: int, size: int) -> None:
        """Create segment INDEX with SIZE bytes allocated; raise OSError when it cannot be."""
        if self._allocated() + size > self.max_size:
            raise SpoolFull(
                errno.ENOSPC, f"the spool reached spool_max_size ({self.max_size} bytes)"
            )
        path = self._path(index)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.posix_fallocate(fd, 0, size)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        os.close(fd)

    def _reserve_next(self) -> None:
        try:
            self._create(self._w_index + 1, SEGMENT_SIZE)
        except OSError as exc:
            self.low_space = (
                f"cannot reserve the next {SEGMENT_SIZE >> 20} MiB: {exc.strerror or exc}"
            )
            self._next_ready = False
        else:
            self.low_space = None
            self._next_ready = True

    def _next_segment(self, need: int) -> None:
        index = self._w_index + 1
        if not (self._next_ready and need <= SEGMENT_SIZE):
            self._create(index, max(SEGMENT_SIZE, need))
        if self._w_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._w_fd, self._w_pos)  # give back what the old one did not use
            os.close(self._w_fd)
        self._w_fd = os.open(self._path(index), os.O_RDWR | os.O_CLOEXEC)
        self._w_index = index
        self._w_pos = 0
        self._w_alloc = os.fstat(self._w_fd).st_size
        self._next_ready = False

    def append(self, lines: list[bytes], last_seq: int | None) -> None:
        """Write LINES (each one JSON event ending in a newline); raise OSError, writing none.

        A failure part way cuts the current segment back to where it was, so the spool only
        ever holds whole batches.
        """
        data = b"".join(lines)
        if self._w_fd is None or self._w_pos + len(data) > self._w_alloc:
            self._next_segment(len(data))
        assert self._w_fd is not None
        start = self._w_pos
        try:
            written = os.pwrite(self._w_fd, data, start)
            if written < len(data):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
        except OSError:
            with contextlib.suppress(OSError):
                os.pwrite(self._w_fd, b"\0" * len(data), start)
            raise
        self._w_pos = start + len(data)
        if last_seq is not None:
            self.last_seq = last_seq
        if not self._next_ready and (self._w_pos * 2 > self._w_alloc or self.low_space):
            self._reserve_next()

    def check_space(self) -> None:
        """Try again to reserve the next segment (clears low_space when it works)."""
        if self.low_space is not None or not self._next_ready:
            self._reserve_next()

    # -- reading and delivery ---------------------------------------------------------------

    def read(self, max_events: int) -> tuple[list[bytes], Position]:
        """Up to MAX_EVENTS lines from the cursor, and the position just after them."""
        lines: list[bytes] = []
        position = self._cursor
        while len(lines) < max_events:
            if position.segment > self._w_index:
                break
            end = self._w_pos if position.segment == self._w_index else None
            try:
                with self._path(position.segment).open("rb") as file:
                    file.seek(position.offset)
                    limit = None if end is None else max(0, end - position.offset)
                    chunk = file.read(READ_CHUNK if limit is None else min(limit, READ_CHUNK))
                    if chunk and b"\n" not in chunk and (limit is None or len(chunk) < limit):
                        chunk += file.readline()  # one event longer than a chunk
            except FileNotFoundError:
                chunk = b""
            nul = chunk.find(b"\0")
            if nul >= 0:
                chunk = chunk[:nul]
            offset = position.offset
            for raw in chunk.splitlines(keepends=True):
                if not raw.endswith(b"\n") or len(lines) >= max_events:
                    break
                lines.append(raw)
                offset += len(raw)
            if offset != position.offset:
                position = Position(position.segment, offset)
                continue
            if position.segment < self._w_index:
                position = Position(position.segment + 1, 0)  # that segment is used up
                continue
            break
        return lines, position

    def commit(self, position: Position, seq: int | None) -> None:
        """The endpoint accepted everything before POSITION: move the cursor, free segments."""
        self._cursor = position
        if seq is not None:
            self.delivered_seq = seq
        self._write_cursor(position, seq or 0)
        for index in self._segments():
            if index < position.segment:
                with contextlib.suppress(OSError):
                    self._path(index).unlink()

    def _write_cursor(self, position: Position, seq: int) -> None:
        assert self._cursor_fd is not None
        os.pwrite(
            self._cursor_fd,
            _CURSOR_FORMAT.format(position.segment, position.offset, seq).encode(),
            0,
        )
        os.fsync(self._cursor_fd)

    @property
    def backlog(self) -> int:
        if self.last_seq is None:
            return 0
        return max(0, self.last_seq - (self.delivered_seq or 0))

    def close(self) -> None:
        for fd in (self._w_fd, self._cursor_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._w_fd = self._cursor_fd = None


def _order(position: Position) -> tuple[int, int]:
    return position.segment, position.offset
