"""File transfers with plain OpenSSH clients (docs/native-clients.md): sftp, scp and rsync.

A transfer session serves one SSH channel of a client that reached the broker through the Host
block of `hoopctl ssh-config` (``HOOP_TARGET``):

* the ``sftp`` subsystem (sftp, and scp in its default SFTP mode): the broker is the SFTP
  server (:class:`SftpBridge`) and passes each operation on to the target through the unit's
  own SFTP client (``TerminalUnit.open_sftp``), with the same path bytes;
* legacy scp (``scp -O``: the command ``scp -t|-f PATH``): asyncssh's SCP server runs over the
  same bridge, so every file goes through the same checks and accounting;
* rsync (``rsync --server …``): its server runs on the target (``TerminalUnit.run_stream``)
  and the broker relays the stream, after checking its options against a short list.

The target's ``transfer`` setting decides what may move: ``download`` (target to client),
``upload`` (client to target), ``both`` or ``none``. A refused transfer moves no byte: the open
is refused before the target is asked to open anything. Operations that change the target's
files without moving content (remove, rename, mkdir, rmdir, setting attributes, links) count as
uploads. Reading names and attributes (ls, stat) is allowed under every setting.

Each file is one ``file.transfer`` audit event (tool, direction, path, size, sha256, state) and
one note in the session's recording; each change is a ``file.change`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import posixpath
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import asyncssh
from asyncssh.scp import run_scp_server

from broker.config import LocalTarget, SshTarget
from broker.credentials import CredentialError
from broker.protocols import terminal_unit
from broker.protocols.base import TargetError
from broker.protocols.terminal import ByteReader, ByteWriter, TerminalUnit
from broker.recording import RecordingError
from broker.sessions.base import SessionBase

if TYPE_CHECKING:
    from asyncssh import SFTPAttrs, SFTPClient, SFTPClientFile, SFTPName, SFTPVFSAttrs

log = logging.getLogger("hoop.broker.session")

Direction = Literal["download", "upload"]
Tool = Literal["sftp", "scp", "rsync"]

# What each `transfer` setting lets move.
ALLOWED: dict[str, tuple[Direction, ...]] = {
    "none": (),
    "download": ("download",),
    "upload": ("upload",),
    "both": ("download", "upload"),
}
# Out-of-order data held back for the sha256, per file; past this the digest is given up.
# (The broker answers one SFTP request at a time, so a client's pieces arrive in its order.)
MAX_PENDING = 1024 * 1024
# Files one SFTP channel may hold open at once.
MAX_OPEN_FILES = 64
_READ_SIZE = 65536


def transfer_refusal(target: SshTarget | LocalTarget, direction: Direction) -> str | None:
    """Why TARGET's config refuses DIRECTION (None: allowed)."""
    setting = getattr(target, "transfer", "none")
    if direction in ALLOWED.get(setting, ()):
        return None
    return f'target {target.name} allows no {direction}s (transfer = "{setting}")'


def show_path(path: bytes) -> str:
    """A path as the audit and the recording show it: UTF-8, other bytes as \\xNN."""
    return path.decode("utf-8", "backslashreplace")


class Digest:
    """Size and sha256 of a file moved in pieces at offsets (SFTP reads and writes).

    Pieces are hashed in offset order from 0; a piece that arrives early waits (at most
    MAX_PENDING bytes). The sha256 is known when the pieces covered the file from 0 once,
    without a gap and without an overlap; otherwise (a resumed transfer, holes, a piece
    written twice, whose second version the hash would not show) it is None and ``size``
    counts the bytes that moved."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._next = 0
        self._pending: dict[int, bytes] = {}
        self._pending_size = 0
        self._broken = False
        self.moved = 0

    def add(self, offset: int, data: bytes) -> None:
        self.moved += len(data)
        if self._broken or not data:
            return
        if offset > self._next:
            if offset in self._pending:
                self._give_up()
                return
            self._pending[offset] = data
            self._pending_size += len(data)
            if self._pending_size > MAX_PENDING:
                self._give_up()
            return
        self._feed(offset, data)
        while self._pending and not self._broken:
            start = min(self._pending)
            if start > self._next:
                break
            piece = self._pending.pop(start)
            self._pending_size -= len(piece)
            self._feed(start, piece)

    def _feed(self, offset: int, data: bytes) -> None:
        if offset != self._next:  # bytes already hashed come again
            self._give_up()
            return
        self._hash.update(data)
        self._next += len(data)

    def _give_up(self) -> None:
        self._broken = True
        self._pending.clear()
        self._pending_size = 0

    def truncated(self, size: int) -> None:
        """The file was cut to SIZE bytes: the hash holds only if that is where it ends."""
        if size != self._next or self._pending:
            self._give_up()

    def opaque(self, moved: int) -> None:
        """The bytes moved were a protocol's stream, not the file: a size, and no sha256."""
        self._give_up()
        self.moved = moved

    def result(self) -> tuple[int, str | None]:
        """(size, sha256 hex or None)."""
        if self._broken or self._pending:
            return self.moved, None
        return self._next, self._hash.hexdigest()


@dataclass
class OpenFile:
    """One file opened through the bridge: what the audit event will say of it."""

    direction: Direction
    path: bytes
    remote: SFTPClientFile | None = None
    # Opened to append: the bytes go after what the file held.
    append: bool = False
    digest: Digest = field(default_factory=Digest)
    # The target's error on a read or write, if one failed: the file's transfer failed.
    error: str | None = None
    done: bool = False


class FileTransferSession(SessionBase):
    """One channel of sftp, scp or rsync; see the module docstring."""

    def __init__(
        self,
        *args: Any,
        tool: Tool,
        command: str | None = None,
        say: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._target: SshTarget | LocalTarget = self._target  # type: ignore[assignment]
        self._unit: TerminalUnit[Any] = terminal_unit(self._target.type)
        self.tool: Tool = tool
        self._command = command
        self._say_line = say
        self._stack = contextlib.AsyncExitStack()
        self._started = False
        self._ended = False
        self._terminated = False
        self._target_failed = False
        self.failures = 0
        self.end_reason: str | None = None
        # Called when the session must stop at once (its access grant ended).
        self.on_stop: Callable[[], None] | None = None

    # -- telling the user -----------------------------------------------------------------
    def say(self, text: str) -> None:
        """One line on the client's stderr (ssh shows a channel's stderr to the user)."""
        if self._say_line is not None:
            self._say_line(text)
            return
        with contextlib.suppress(OSError, asyncssh.Error):
            self._process.stderr.write(f"hoop-broker: {text}\n".encode())

    def _stderr(self, text: str) -> None:
        self.say(text)

    # -- the session ----------------------------------------------------------------------
    async def start(self) -> bool:
        """Open the recording and record the session's start; False: refused (said)."""
        started = time.time()
        title = f"{self._ctx.user}@{self._target.name} {self.tool}"
        try:
            self._open_recording(
                width=80,
                height=24,
                started=started,
                command=self._command or self.tool,
                title=title,
            )
        except RecordingError as exc:
            self.say(f"session refused: the recording cannot be written ({exc})")
            await self._audit("session.rejected", outcome="failure", reason=str(exc))
            return False
        await self._begin(
            kind="transfer",
            started=started,
            command=self._command or self.tool,
            details={
                "kind": "transfer",
                "tool": self.tool,
                "command": self._command,
                "recording": f"{self.session_id}.cast",
            },
            on_grant_warning=self.say,
            on_grant_end=self._grant_ended,
        )
        self._started = True
        return True

    def _grant_ended(self, text: str) -> None:
        self.say(text)
        self.end_reason = text
        self._terminated = True
        if self.on_stop is not None:
            self.on_stop()

    async def open_target_sftp(self) -> SFTPClient | None:
        """The unit's SFTP client on the target, kept until finish(); None: failed (said)."""
        try:
            return await self._stack.enter_async_context(self._unit.open_sftp(self._target))
        except (TargetError, CredentialError) as exc:
            self.say(str(exc))
            self.end_reason = str(exc)
            self._target_failed = True
            return None

    async def finish(self, status: int, *, state: str | None = None) -> None:
        """Close what the session opened on the target and record its end (once)."""
        if self._ended:
            return
        self._ended = True
        with contextlib.suppress(Exception):
            await self._stack.aclose()
        if not self._started:
            return
        if state is None:
            state = (
                "terminated" if self._terminated else "failed" if self._target_failed else "closed"
            )
        await self._end(state=state, status=status, reason=self.end_reason)

    # -- the checks and the record of each file -------------------------------------------
    async def refuse(
        self, direction: Direction, path: bytes, *, extra: dict[str, Any] | None = None
    ) -> str | None:
        """The reason DIRECTION to PATH may not happen (audited and said), or None."""
        refusal = transfer_refusal(self._target, direction)
        if refusal is None and self._recording_broken():
            refusal = "the session's recording cannot be written"
        if refusal is None:
            return None
        self.failures += 1
        message = f"{direction} of {show_path(path)} refused: {refusal}"
        if self.tool == "sftp":
            # OpenSSH's sftp and scp show the status code of a refusal, not its text.
            self.say(message)
        self._note(f"refused: {message}")
        await self._audit(
            "file.transfer",
            outcome="failure",
            reason=refusal,
            details={
                "tool": self.tool,
                "direction": direction,
                "path": show_path(path),
                "size": 0,
                "sha256": None,
                "state": "refused",
                **(extra or {}),
            },
        )
        return message

    def noted(self, direction: Direction, path: bytes) -> bool:
        """Note in the recording that a transfer starts; False when a strict recording cannot
        take the note (the transfer must not start)."""
        return self._note(f"{direction} started: {show_path(path)}")

    async def transferred(
        self,
        file: OpenFile,
        *,
        error: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """FILE's transfer is over: its audit event and its note in the recording."""
        if file.done:
            return
        file.done = True
        error = error or file.error
        size, sha256 = file.digest.result()
        state = "failed" if error else "closed"
        if error:
            self.failures += 1
        summary = f"sha256 {sha256}" if sha256 else "sha256 not known"
        self._note(
            f"{file.direction} {state}: {show_path(file.path)} ({size} bytes, {summary})"
            + (f": {error}" if error else "")
        )
        await self._audit(
            "file.transfer",
            outcome="failure" if error else "success",
            reason=error,
            details={
                "tool": self.tool,
                "direction": file.direction,
                "path": show_path(file.path),
                "size": size,
                "sha256": sha256,
                "state": state,
                **({"append": True} if file.append else {}),
                **(extra or {}),
            },
        )

    async def changed(
        self, operation: str, path: bytes, new_path: bytes | None = None
    ) -> Callable[[str | None], Any]:
        """Check a change to the target's files (it counts as an upload); returns the
        coroutine function that records its result (None, or the error). Raises
        SFTPPermissionDenied when refused (audited)."""
        shown = show_path(path) + (f" -> {show_path(new_path)}" if new_path is not None else "")
        details: dict[str, Any] = {
            "tool": self.tool,
            "operation": operation,
            "path": show_path(path),
        }
        if new_path is not None:
            details["new_path"] = show_path(new_path)
        refusal = transfer_refusal(self._target, "upload")
        if refusal is not None:
            self.failures += 1
            message = f"{operation} {shown} refused: {refusal}"
            if self.tool == "sftp":
                self.say(message)
            self._note(f"refused: {message}")
            await self._audit(
                "file.change",
                outcome="failure",
                reason=refusal,
                details={**details, "state": "refused"},
            )
            raise asyncssh.SFTPPermissionDenied(f"hoop: {message}")

        async def result(error: str | None) -> None:
            self._note(f"{operation} {'failed' if error else 'done'}: {shown}")
            await self._audit(
                "file.change",
                outcome="failure" if error else "success",
                reason=error,
                details={**details, "state": "failed" if error else "done"},
            )

        return result

    def _note(self, text: str) -> bool:
        """A line in the recording (a marker, and the same text as output for the player),
        written at once. False when a strict recording cannot take it."""
        if self._recorder is None:
            return False
        try:
            self._recorder.mark(f"file {text}")
            self._recorder.output(f"[hoop] {text}\r\n".encode())
            self._recorder.flush()
        except RecordingError:
            return False
        return not self._recording_broken()

    def _recording_broken(self) -> bool:
        """A strict recording that can no longer be written: nothing more may move."""
        recorder = self._recorder
        return recorder is None or (recorder.strict and recorder.failed is not None)

    # -- legacy scp and rsync (an exec request) -------------------------------------------
    async def run(self) -> int:
        if self.on_stop is None:
            self.on_stop = self._process.close
        if not await self.start():
            return 1
        status = 1
        try:
            if self.tool == "rsync":
                status = await self._run_rsync()
            else:
                status = await self._run_scp()
            return status
        finally:
            await self.finish(status)

    async def _run_scp(self) -> int:
        client = await self.open_target_sftp()
        if client is None:
            return 1
        bridge = SftpBridge(self._process.channel, self, client)
        handler = run_scp_server(
            bridge,
            self._command or "",
            self._process.stdin,
            self._process.stdout,
            self._process.stderr,
        )
        if handler is None:  # asyncssh said what is wrong with the command
            return 2
        await handler
        return 1 if self.failures else 0

    async def _run_rsync(self) -> int:
        try:
            spec = parse_rsync(self._command or "")
        except RsyncRefused as exc:
            self.failures += 1
            self.say(f"rsync refused: {exc}")
            self._note(f"refused: rsync: {exc}")
            await self._audit(
                "file.transfer",
                outcome="failure",
                reason=str(exc),
                details={
                    "tool": "rsync",
                    "direction": exc.direction,
                    "path": exc.paths[0] if exc.paths else None,
                    "paths": list(exc.paths),
                    "size": 0,
                    "sha256": None,
                    "state": "refused",
                },
            )
            return 1
        first = spec.paths[0].encode("utf-8", "surrogateescape")
        extra: dict[str, Any] = {"paths": list(spec.paths)}
        message = await self.refuse(spec.direction, first, extra=extra)
        if message is not None:
            self.say(message)
            return 1
        file = OpenFile(spec.direction, first)
        if not self.noted(spec.direction, first):
            self.say("transfer refused: the session's recording cannot be written")
            return 1
        try:
            async with self._unit.run_stream(self._target, spec.command) as child:
                moved, left = await self._relay_rsync(child.stdin, child.stdout, child.stderr, spec)
                # A client that left mid-stream: leaving the context ends rsync's server.
                status = 255 if left else await child.wait()
        except (TargetError, CredentialError) as exc:
            self.say(str(exc))
            self.end_reason = str(exc)
            self._target_failed = True
            await self.transferred(file, error=str(exc), extra=extra)
            return 1
        file.digest.opaque(moved)  # rsync's own protocol, not the files themselves
        error = (
            None
            if status == 0
            else "the client left before the end"
            if left
            else f"rsync on the target exited with status {status}"
        )
        await self.transferred(file, error=error, extra=extra)
        return status

    async def _relay_rsync(
        self, stdin: ByteWriter, stdout: ByteReader, stderr: ByteReader, spec: RsyncSpec
    ) -> tuple[int, bool]:
        """Relay the client's stream and rsync's: the bytes that went the transfer's way, and
        whether the client left before rsync's server ended its output."""
        counts = {"up": 0, "down": 0}
        left = False

        async def up() -> None:
            try:
                while True:
                    data = await self._process.stdin.read(_READ_SIZE)
                    if not data:
                        break
                    counts["up"] += len(data)
                    stdin.write(data)
                    await stdin.drain()
            except (OSError, asyncssh.Error, asyncssh.SignalReceived, asyncssh.BreakReceived):
                pass
            finally:
                with contextlib.suppress(OSError, asyncssh.Error):
                    stdin.write_eof()

        async def down(stream: ByteReader, writer: Any, key: str | None) -> None:
            while True:
                data = await stream.read(_READ_SIZE)
                if not data:
                    return
                if key:
                    counts[key] += len(data)
                try:
                    writer.write(data)
                    await writer.drain()
                except (OSError, asyncssh.Error):
                    # The client is gone: stop here; leaving run_stream ends rsync's server.
                    raise ConnectionError("the client left") from None

        tasks = [
            asyncio.ensure_future(up()),
            asyncio.ensure_future(down(stdout, self._process.stdout, "down")),
            asyncio.ensure_future(down(stderr, self._process.stderr, None)),
        ]
        try:
            await asyncio.gather(*tasks[1:])
        except ConnectionError:
            left = True
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(*tasks, return_exceptions=True)
        return (counts["down"] if spec.direction == "download" else counts["up"]), left


class SftpBridge(asyncssh.SFTPServer):
    """The broker's SFTP server: every operation goes to the target's SFTP server, with the
    same path bytes, after the session's checks. Nothing here touches the broker's own
    files: every method of asyncssh.SFTPServer is overridden, and ``map_path`` (which its
    local-file defaults go through) refuses."""

    def __init__(
        self,
        chan: asyncssh.SSHServerChannel[bytes],
        session: FileTransferSession | None,
        client: SFTPClient | None,
        *,
        refusal: str = "no target session",
        on_exit: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(chan)
        self._session = session
        self._client = client
        self._refusal = refusal
        self._on_exit = on_exit
        self._files: list[OpenFile] = []

    def _target(self) -> tuple[FileTransferSession, SFTPClient]:
        if self._session is None or self._client is None:
            raise asyncssh.SFTPPermissionDenied(f"hoop: {self._refusal}")
        return self._session, self._client

    # -- never the broker's own files -----------------------------------------------------
    def map_path(self, path: bytes) -> bytes:
        raise asyncssh.SFTPPermissionDenied("hoop: no local files")

    def reverse_map_path(self, path: bytes) -> bytes:
        raise asyncssh.SFTPPermissionDenied("hoop: no local files")

    def format_user(self, uid: int | None) -> str:
        return str(uid) if uid is not None else ""

    def format_group(self, gid: int | None) -> str:
        return str(gid) if gid is not None else ""

    # -- files ----------------------------------------------------------------------------
    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> OpenFile:
        session, client = self._target()
        reads = bool(pflags & asyncssh.FXF_READ)
        writes = bool(
            pflags
            & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC)
        )
        if reads and writes:
            raise asyncssh.SFTPOpUnsupported(
                "hoop: a file opened for both reading and writing cannot pass the broker"
            )
        direction: Direction = "upload" if writes else "download"
        if len(self._files) >= MAX_OPEN_FILES:
            raise asyncssh.SFTPFailure(f"hoop: at most {MAX_OPEN_FILES} files open at once")
        message = await session.refuse(direction, path)
        if message is not None:
            raise asyncssh.SFTPPermissionDenied(f"hoop: {message}")
        if not session.noted(direction, path):
            session.say("transfer refused: the session's recording cannot be written")
            raise asyncssh.SFTPPermissionDenied("hoop: the session's recording cannot be written")
        file = OpenFile(direction, path, append=bool(pflags & asyncssh.FXF_APPEND))
        try:
            file.remote = await client.open(path, pflags, attrs, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            await session.transferred(file, error=_error_text(exc))
            raise
        self._files.append(file)
        return file

    async def open56(
        self, path: bytes, desired_access: int, flags: int, attrs: SFTPAttrs
    ) -> OpenFile:
        raise asyncssh.SFTPOpUnsupported("hoop: SFTP version 3 only")

    def _file(self, file_obj: object) -> tuple[FileTransferSession, OpenFile, SFTPClientFile]:
        session, _ = self._target()
        if not isinstance(file_obj, OpenFile) or file_obj.remote is None:
            raise asyncssh.SFTPInvalidHandle("hoop: not an open file")
        return session, file_obj, file_obj.remote

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        _, file, remote = self._file(file_obj)
        if file.direction != "download":
            raise asyncssh.SFTPPermissionDenied("hoop: the file was opened for writing")
        try:
            data = await remote.read(size, offset)
        except (asyncssh.Error, OSError) as exc:
            file.error = _error_text(exc)
            raise
        file.digest.add(offset, data)
        return data

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        _, file, remote = self._file(file_obj)
        if file.direction != "upload":
            raise asyncssh.SFTPPermissionDenied("hoop: the file was opened for reading")
        try:
            await remote.write(data, offset)
        except (asyncssh.Error, OSError) as exc:
            file.error = _error_text(exc)
            raise
        file.digest.add(offset, data)
        return len(data)

    async def close(self, file_obj: object) -> None:
        session, file, remote = self._file(file_obj)
        error: str | None = None
        if file.direction == "upload" and not file.append:
            # The sha256 stands for the file only if the file is exactly the bytes hashed (not
            # an old tail left behind by a shorter write without truncation).
            try:
                file.digest.truncated((await remote.stat()).size or 0)
            except (asyncssh.Error, OSError):
                file.digest.truncated(-1)
        try:
            await remote.close()
        except (asyncssh.Error, OSError) as exc:
            error = _error_text(exc)
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._files.remove(file)
            await session.transferred(file, error=error)

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        _, _, remote = self._file(file_obj)
        return await remote.stat()

    async def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        session, file, remote = self._file(file_obj)
        if file.direction == "upload":  # part of the upload (scp and sftp set mode and size)
            await remote.setstat(attrs)
            if attrs.size is not None:
                file.digest.truncated(attrs.size)
            return
        await self._change(session, "setstat", file.path, None, lambda: remote.setstat(attrs))

    async def fstatvfs(self, file_obj: object) -> SFTPVFSAttrs:
        _, _, remote = self._file(file_obj)
        return await remote.statvfs()

    async def fsync(self, file_obj: object) -> None:
        _, _, remote = self._file(file_obj)
        await remote.fsync()

    async def lock(self, file_obj: object, offset: int, length: int, flags: int) -> None:
        raise asyncssh.SFTPOpUnsupported("hoop: locks are not passed on")

    async def unlock(self, file_obj: object, offset: int, length: int) -> None:
        raise asyncssh.SFTPOpUnsupported("hoop: locks are not passed on")

    # -- names and attributes (allowed under every setting) -------------------------------
    async def lstat(self, path: bytes) -> SFTPAttrs:
        _, client = self._target()
        return await client.lstat(path)

    async def stat(self, path: bytes) -> SFTPAttrs:
        _, client = self._target()
        return await client.stat(path)

    async def realpath(self, path: bytes) -> bytes:
        _, client = self._target()
        return await client.realpath(path)  # type: ignore[no-any-return]

    async def readlink(self, path: bytes) -> bytes:
        _, client = self._target()
        return await client.readlink(path)  # type: ignore[no-any-return]

    async def statvfs(self, path: bytes) -> SFTPVFSAttrs:
        _, client = self._target()
        return await client.statvfs(path)

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        _, client = self._target()
        async for name in client.scandir(path):
            yield name

    # -- changes (they count as uploads) --------------------------------------------------
    async def _change(
        self,
        session: FileTransferSession,
        operation: str,
        path: bytes,
        new_path: bytes | None,
        work: Callable[[], Awaitable[None]],
    ) -> None:
        record = await session.changed(operation, path, new_path)  # raises when refused
        try:
            await work()
        except (asyncssh.Error, OSError) as exc:
            await record(_error_text(exc))
            raise
        await record(None)

    async def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        session, client = self._target()
        await self._change(session, "setstat", path, None, lambda: client.setstat(path, attrs))

    async def lsetstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        session, client = self._target()
        await self._change(
            session,
            "setstat",
            path,
            None,
            lambda: client.setstat(path, attrs, follow_symlinks=False),
        )

    async def remove(self, path: bytes) -> None:
        session, client = self._target()
        await self._change(session, "remove", path, None, lambda: client.remove(path))

    async def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        session, client = self._target()
        await self._change(session, "mkdir", path, None, lambda: client.mkdir(path, attrs))

    async def rmdir(self, path: bytes) -> None:
        session, client = self._target()
        await self._change(session, "rmdir", path, None, lambda: client.rmdir(path))

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        session, client = self._target()
        await self._change(
            session, "rename", oldpath, newpath, lambda: client.rename(oldpath, newpath)
        )

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        session, client = self._target()
        await self._change(
            session, "rename", oldpath, newpath, lambda: client.posix_rename(oldpath, newpath)
        )

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        session, client = self._target()
        # The link is made at NEWPATH, pointing to OLDPATH.
        await self._change(
            session, "symlink", newpath, oldpath, lambda: client.symlink(oldpath, newpath)
        )

    async def link(self, oldpath: bytes, newpath: bytes) -> None:
        session, client = self._target()
        await self._change(session, "link", newpath, oldpath, lambda: client.link(oldpath, newpath))

    # -- the end --------------------------------------------------------------------------
    async def exit(self) -> None:
        """The channel is closing: files still open are recorded as they are."""
        session = self._session
        if session is not None:
            for file in list(self._files):
                if file.remote is not None:
                    with contextlib.suppress(Exception):
                        await file.remote.close()
                await session.transferred(file, error="the client left with the file still open")
            self._files.clear()
        if self._on_exit is not None:
            result = self._on_exit()
            if asyncio.iscoroutine(result):
                await result
            # As sshd does when its sftp-server exits: OpenSSH's scp fails without a status.
            with contextlib.suppress(OSError, asyncssh.Error):
                self._chan.exit(1 if session is not None and session.failures else 0)


def _error_text(exc: BaseException) -> str:
    """The target's error as one line (an SFTP status's text, or the exception's)."""
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return " ".join(str(reason).split())


# -- rsync ---------------------------------------------------------------------------------


class RsyncRefused(ValueError):
    """An rsync server command the broker does not pass on; the message says why."""

    def __init__(self, message: str, direction: Direction, paths: tuple[str, ...]) -> None:
        super().__init__(message)
        self.direction = direction
        self.paths = paths


@dataclass(frozen=True)
class RsyncSpec:
    direction: Direction
    paths: tuple[str, ...]
    # What the broker runs on the target (re-quoted from the checked words).
    command: str


# Single-letter options rsync's client sends its server, that move nothing but what the
# direction says. Not here: c (checksums of the target's files compared with the sender's: an
# oracle on their content, allowed for downloads only), s (the arguments would come over the
# stream, unchecked), y (fuzzy: other files become the basis), and anything else.
_RSYNC_LETTERS = set("vqbunlLkKHogDtUNpEAXrRdWIxSOJmCzi")
_RSYNC_DOWNLOAD_LETTERS = set("c")
# Long options, by name: for both directions, and for uploads only (they write on the target).
_RSYNC_LONG_BOTH = {
    "--log-format",
    "--timeout",
    "--contimeout",
    "--bwlimit",
    "--compress-level",
    "--compress-choice",
    "--zc",
    "--new-compress",
    "--old-compress",
    "--checksum-choice",
    "--cc",
    "--numeric-ids",
    "--safe-links",
    "--munge-links",
    "--copy-unsafe-links",
    "--size-only",
    "--modify-window",
    "--ignore-errors",
    "--max-size",
    "--min-size",
    "--existing",
    "--ignore-existing",
    "--no-implied-dirs",
    "--one-file-system",
    "--open-noatime",
    "--stats",
    "--8-bit-output",
    "--iconv",
}
_RSYNC_LONG_UPLOAD = {
    "--delete",
    "--delete-before",
    "--delete-during",
    "--delete-delay",
    "--delete-after",
    "--delete-excluded",
    "--force",
    "--max-delete",
    "--partial",
    "--partial-dir",
    "--inplace",
    "--delay-updates",
    "--suffix",
    "--backup-dir",
    "--chmod",
    "--chown",
    "--usermap",
    "--groupmap",
    "--mkpath",
    "--preallocate",
    "--fake-super",
    "--temp-dir",
}


def is_rsync_server(argv: list[str]) -> bool:
    return bool(argv) and posixpath.basename(argv[0]) == "rsync" and "--server" in argv


def parse_rsync(command: str) -> RsyncSpec:
    """Check an `rsync --server …` command word by word; what the broker will run for it.

    Uploads always run with --whole-file: the target's rsync then sends back no block
    checksums of the files it already has (from which their content could be guessed)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise RsyncRefused(f"cannot read the command: {exc}", "upload", ()) from None
    direction: Direction = "download" if "--sender" in argv else "upload"
    paths = tuple(argv[argv.index(".") + 1 :]) if "." in argv else ()

    def refused(message: str) -> RsyncRefused:
        return RsyncRefused(message, direction, paths)

    if len(argv) < 2 or argv[0] != "rsync" or argv[1] != "--server":
        raise refused("only `rsync --server …` as rsync's client sends it is passed on")
    if "." not in argv:
        raise refused("the command has no `.` before its paths")
    options = argv[2 : argv.index(".")]
    if direction == "download":
        options.remove("--sender")
    if not paths or (direction == "upload" and len(paths) != 1):
        raise refused("an upload names one destination, a download at least one source")
    for word in options:
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            allowed = _RSYNC_LONG_BOTH | (_RSYNC_LONG_UPLOAD if direction == "upload" else set())
            if name not in allowed:
                raise refused(f"rsync option {name} is not passed on by the broker")
        elif word.startswith("-") and len(word) > 1:
            letters, _, version = word[1:].partition("e")
            if version and not all(ch.isalnum() or ch == "." for ch in version):
                raise refused(f"rsync option {word} is not passed on by the broker")
            allowed_letters = _RSYNC_LETTERS | (
                _RSYNC_DOWNLOAD_LETTERS if direction == "download" else set()
            )
            for letter in letters:
                if letter not in allowed_letters:
                    raise refused(f"rsync option -{letter} is not passed on by the broker")
        else:
            raise refused(f"unexpected word {word!r} before the paths")
    extra = ["--sender"] if direction == "download" else ["--whole-file"]
    words = ["rsync", "--server", *extra, *options, ".", *paths]
    return RsyncSpec(direction, paths, shlex.join(words))


def is_scp_server(argv: list[str]) -> bool:
    """`scp -t PATH` / `scp -f PATH` (legacy scp, `scp -O`): the remote end of a copy."""
    if not argv or posixpath.basename(argv[0]) != "scp":
        return False
    for word in argv[1:]:
        if word == "--" or not word.startswith("-"):
            return False
        if "t" in word[1:] or "f" in word[1:]:
            return True
    return False
