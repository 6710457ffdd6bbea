"""The broker's end of the session helper (shell_agent.py) on a terminal target.

The helper is started as the session's process by the target's unit (``open_agent``): on a
local target as the target's OS user, on an ssh target as the command of an SSH session
without a PTY (the helper makes its own). Both give the broker a byte stream in each
direction; this module frames it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import asyncssh

from broker.protocols.base import TargetError

HEADER = struct.Struct(">cI")
MAX_FRAME = 16 << 20
START_TIMEOUT = 20.0
COMPLETE_TIMEOUT = 1.0
AGENT_SOURCE = (Path(__file__).with_name("shell_agent.py")).read_text()
# `python3 -I -c AGENT_BOOTSTRAP AGENT_SOURCE` runs the helper; it needs Python 3 on the
# target, and anything else is the standard library.
AGENT_BOOTSTRAP = "import sys;exec(compile(sys.argv[1],'hoop-shell-agent','exec'))"


@dataclass
class AgentEvent:
    kind: str  # output, prompt, echo, exit, error
    data: bytes = b""
    info: dict[str, Any] = field(default_factory=dict)


class AgentLink:
    """Frames to and from one running helper."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        read: Callable[[int], Awaitable[bytes]],
        close: Callable[[], None],
        stderr: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self._write = write
        self._read = read
        self._close = close
        self._stderr = stderr
        self.events: asyncio.Queue[AgentEvent] = asyncio.Queue(maxsize=64)
        self._completions: dict[int, asyncio.Future[list[str]]] = {}
        self._ids = count(1)
        self._reader = asyncio.create_task(self._read_frames())
        self.closed = False

    # -- to the helper --------------------------------------------------------------------
    def _send(self, kind: bytes, payload: bytes) -> None:
        if self.closed:
            return
        try:
            self._write(HEADER.pack(kind, len(payload)) + payload)
        except (OSError, asyncssh.Error, BrokenPipeError, RuntimeError):
            self.closed = True

    def hello(self, *, term: str, cols: int, rows: int, env: dict[str, str]) -> None:
        self._send(
            b"H", json.dumps({"term": term, "cols": cols, "rows": rows, "env": env}).encode()
        )

    def run(self, text: str) -> None:
        self._send(b"R", text.encode("utf-8", "surrogateescape"))

    def keys(self, data: bytes) -> None:
        self._send(b"K", data)

    def resize(self, cols: int, rows: int) -> None:
        self._send(b"W", json.dumps({"cols": cols, "rows": rows}).encode())

    def hangup(self) -> None:
        self._send(b"X", b"")

    async def complete(self, kind: str, word: str) -> list[str]:
        ident = next(self._ids)
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._completions[ident] = future
        self._send(b"C", json.dumps({"id": ident, "kind": kind, "word": word}).encode())
        try:
            return await asyncio.wait_for(future, COMPLETE_TIMEOUT)
        except TimeoutError:
            return []
        finally:
            self._completions.pop(ident, None)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self._close()

    # -- from the helper ------------------------------------------------------------------
    async def _read_frames(self) -> None:
        buffer = bytearray()
        try:
            while True:
                while len(buffer) < HEADER.size or len(buffer) < HEADER.size + _size(buffer):
                    if len(buffer) >= HEADER.size and _size(buffer) > MAX_FRAME:
                        raise ValueError("frame too large")
                    chunk = await self._read(65536)
                    if not chunk:
                        await self._ended(bytes(buffer))
                        return
                    buffer += chunk
                kind, size = HEADER.unpack_from(buffer)
                payload = bytes(buffer[HEADER.size : HEADER.size + size])
                del buffer[: HEADER.size + size]
                await self._dispatch(kind, payload)
        except (OSError, asyncssh.Error, ValueError) as exc:
            await self.events.put(AgentEvent("error", info={"reason": f"helper link: {exc}"}))
        except asyncio.CancelledError:
            raise

    async def _ended(self, rest: bytes) -> None:
        detail = ""
        if self._stderr is not None:
            with contextlib.suppress(Exception):
                detail = (await asyncio.wait_for(self._stderr(), 1.0)).decode("utf-8", "replace")
        detail = detail.strip().splitlines()[-1] if detail.strip() else ""
        await self.events.put(
            AgentEvent(
                "gone", info={"reason": "the session helper on the target ended", "detail": detail}
            )
        )

    async def _dispatch(self, kind: bytes, payload: bytes) -> None:
        if kind == b"O":
            await self.events.put(AgentEvent("output", payload))
        elif kind == b"P":
            await self.events.put(AgentEvent("prompt", info=json.loads(payload)))
        elif kind == b"E":
            await self.events.put(AgentEvent("echo", info=json.loads(payload)))
        elif kind == b"Q":
            await self.events.put(AgentEvent("exit", info=json.loads(payload)))
        elif kind == b"!":
            await self.events.put(
                AgentEvent("error", info={"reason": payload.decode("utf-8", "replace")})
            )
        elif kind == b"c":
            answer = json.loads(payload)
            future = self._completions.get(answer.get("id"))
            if future is not None and not future.done():
                future.set_result([str(m) for m in answer.get("matches", [])])


def _size(buffer: bytearray) -> int:
    return int(HEADER.unpack_from(buffer)[1])


async def wait_started(
    link: AgentLink, target_name: str
) -> tuple[list[AgentEvent], dict[str, Any]]:
    """Wait for the helper's first prompt; the events before it (output) are returned."""
    early: list[AgentEvent] = []
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                event = await link.events.get()
                if event.kind == "prompt":
                    return early, event.info
                if event.kind in ("output", "echo"):
                    early.append(event)
                    continue
                reason = event.info.get("detail") or event.info.get("reason") or event.kind
                raise TargetError(
                    f"target {target_name}: the strict guard cannot start: {reason} "
                    '(it needs python3 and bash on the target; guard = "screen" is the weaker grade)'
                )
    except TimeoutError:
        raise TargetError(
            f"target {target_name}: the strict guard cannot start: the session helper did not "
            "answer in time"
        ) from None
