"""The `file` sink: JSON lines, rotated by size, keeping `keep` old files.

`path` is written (0600) until the next batch would take it past `max_size`; then `path.N`
becomes `path.N+1` (the oldest, `path.KEEP`, is deleted), `path` becomes `path.1` and a new
`path` is started. A batch is written with one write; a write that fails part way is cut back,
so the file never holds half a line, and retried every second (see DurableSink).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from broker.audit.config import SinkConfig
from broker.audit.sinks.base import DurableSink
from broker.audit.sinks.formats import dumps, render


class FileSink(DurableSink):
    type = "file"

    def __init__(self, config: SinkConfig, *, data_dir: Path) -> None:
        super().__init__(config)
        assert config.path is not None
        path = config.path.expanduser()
        self.path = path if path.is_absolute() else data_dir / path
        self._fd: int | None = None
        self._size = 0

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        keep = self.config.keep
        if keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            oldest = self.path.with_name(f"{self.path.name}.{keep}")
            oldest.unlink(missing_ok=True)
            for number in range(keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{number}")
                if older.exists():
                    older.rename(self.path.with_name(f"{self.path.name}.{number + 1}"))
            if self.path.exists():
                self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def _write_sync(self, data: bytes) -> None:
        if self._fd is None:
            self._open()
        if self._size and self._size + len(data) > self.config.max_size:
            self._rotate()
        assert self._fd is not None
        before = self._size
        try:
            written = os.write(self._fd, data)
            if written < len(data):
                raise OSError(28, f"short write ({written} of {len(data)} bytes)")
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)  # never leave half a line behind
            raise
        self._size = before + written

    async def _write(self, records: list[dict[str, Any]]) -> None:
        data = "".join(dumps(render(r, self.config.format)) + "\n" for r in records).encode()
        await asyncio.to_thread(self._write_sync, data)

    async def _shutdown(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
