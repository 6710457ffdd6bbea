"""The broker's end of the session helper (shell_agent.py) on a terminal target.

The helper is started as the session's process: on a local target as the target's OS user,
on an ssh target as the command of an SSH session without a PTY (the helper makes its own).
Both give the broker a byte stream in each direction; this module frames it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import asyncssh

from broker.config import LocalTarget, SshTarget
from broker.targets.base import TargetError

HEADER = struct.Struct(">cI")
MAX_FRAME = 16 << 20
START_TIMEOUT = 20.0
COMPLETE_TIMEOUT = 1.0
AGENT_SOURCE = (Path(__file__).with_name("shell_agent.py")).read_text()
# The helper needs Python 3 on the target; anything else is the standard library.
_LOCAL_PYTHON = next(
    (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if Path(p).exists()), "python3"
)


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


def _python_command() -> str:
    code = "import sys;exec(compile(sys.argv[1],'hoop-shell-agent','exec'))"
    return f"exec python3 -I -c {shlex.quote(code)} {shlex.quote(AGENT_SOURCE)}"


async def open_local_agent(target: LocalTarget, *, term: str) -> tuple[AgentLink, dict[str, str]]:
    """Start the helper on the broker host as the target's OS user."""
    from broker.targets.os_user import resolve_run_as, session_environment

    run_as = resolve_run_as(target.run_as)
    env = session_environment(target, run_as, term=term)
    code = "import sys;exec(compile(sys.argv[1],'hoop-shell-agent','exec'))"
    try:
        process = await asyncio.create_subprocess_exec(
            _LOCAL_PYTHON,
            "-I",
            "-c",
            code,
            AGENT_SOURCE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
            **run_as.subprocess_kwargs(),
        )
    except OSError as exc:
        raise TargetError(
            f"target {target.name}: cannot start the session helper: {exc.strerror or exc}"
        ) from None
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr

    def close() -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def read_stderr() -> bytes:
        return await stderr.read() if stderr is not None else b""

    link = AgentLink(stdin.write, stdout.read, close, read_stderr)
    return link, {}


async def open_ssh_agent(target: SshTarget) -> tuple[AgentLink, asyncssh.SSHClientConnection]:
    """Start the helper on an ssh target as the command of a session without a PTY."""
    from broker.targets.ssh import connect_target

    conn = await connect_target(target)
    try:
        process = await conn.create_process(_python_command(), encoding=None)
    except asyncssh.Error as exc:
        conn.close()
        raise TargetError(f"target {target.name}: cannot open a session: {exc.reason}") from None

    def close() -> None:
        process.close()
        conn.close()

    async def read_stderr() -> bytes:
        return await process.stderr.read(65536)

    return AgentLink(process.stdin.write, process.stdout.read, close, read_stderr), conn


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
