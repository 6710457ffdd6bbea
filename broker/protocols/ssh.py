"""`ssh` targets: the broker logs in to the host with a credential only it holds."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import AsyncIterator

import asyncssh

from broker.config import SshTarget
from broker.credentials import resolve_credential
from broker.protocols.agent_link import AGENT_BOOTSTRAP, AGENT_SOURCE, AgentLink
from broker.protocols.base import TargetError
from broker.protocols.shell_integration import bash_rcfile, remote_bash_command
from broker.protocols.terminal import (
    CommandProcess,
    StreamProcess,
    TerminalRequest,
    TerminalUnit,
)

CONNECT_TIMEOUT = 15


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _trusted_host_key(target: SshTarget) -> asyncssh.SSHKey:
    if not target.known_host:
        raise TargetError(f"target {target.name}: no known_host configured; refusing to connect")
    try:
        return asyncssh.import_public_key(target.known_host)
    except (asyncssh.KeyImportError, ValueError):
        raise TargetError(
            f"target {target.name}: known_host is not an OpenSSH public key"
        ) from None


async def connect_target(target: SshTarget) -> asyncssh.SSHClientConnection:
    """Log in to the target with the broker's credential, checking its host key."""
    host_key = _trusted_host_key(target)
    host, port = _split(target.address)
    options: dict[str, object] = {}
    if target.credential:
        secret = resolve_credential(target.credential, target=target.name)
        if "PRIVATE KEY" in secret:
            try:
                options["client_keys"] = [asyncssh.import_private_key(secret)]
            except asyncssh.KeyImportError:
                raise TargetError(
                    f"target {target.name}: the credential is not a usable private key"
                ) from None
            options["password_auth"] = False
        else:
            options["password"] = secret.rstrip("\n")
            options["client_keys"] = []
    try:
        conn = await asyncssh.connect(
            host,
            port,
            username=target.user,
            known_hosts=([host_key], [], []),
            agent_path=None,
            config=None,
            connect_timeout=CONNECT_TIMEOUT,
            **options,  # type: ignore[arg-type]
        )
    except asyncssh.HostKeyNotVerifiable:
        raise TargetError(
            f"target {target.name}: host key does not match the configured known_host; refusing"
        ) from None
    except asyncssh.PermissionDenied:
        raise TargetError(
            f"target {target.name}: the target refused the broker's credential"
        ) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        reason = (
            exc.reason
            if isinstance(exc, asyncssh.Error)
            else (getattr(exc, "strerror", None) or str(exc) or "timeout")
        )
        raise TargetError(f"target {target.name} unreachable: {reason}") from None
    return conn


class SshTerminal:
    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        process: asyncssh.SSHClientProcess[bytes],
        shell_integration: bool,
        *,
        pty: bool = True,
    ) -> None:
        self._conn = conn
        self._process = process
        self._pty = pty
        self.shell_integration = shell_integration
        self._stdout_done = False
        # Bounded, so a flood waits in the SSH window instead of the broker's memory.
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
        self._pumps = [
            asyncio.create_task(self._pump(process.stdout)),
            asyncio.create_task(self._pump(process.stderr)),
        ]
        self._open_pumps = len(self._pumps)

    @classmethod
    async def open(cls, target: SshTarget, request: TerminalRequest) -> SshTerminal:
        conn = await connect_target(target)
        integration = False
        if request.command:
            command: str | None = shlex.join(request.command)
        else:
            command = remote_bash_command(bash_rcfile(startup="login"))
            integration = True
        try:
            process = await conn.create_process(
                command,
                term_type=request.term if request.pty else None,
                term_size=(request.cols, request.rows) if request.pty else None,
                encoding=None,
            )
        except asyncssh.Error as exc:
            conn.close()
            raise TargetError(
                f"target {target.name}: cannot open a session: {exc.reason}"
            ) from None
        return cls(conn, process, integration, pty=request.pty)

    async def _pump(self, stream: asyncssh.SSHReader[bytes]) -> None:
        try:
            while True:
                data = await stream.read(65536)
                if not data:
                    break
                await self._queue.put(data)
        except (asyncssh.Error, OSError):
            pass
        finally:
            self._open_pumps -= 1
            if self._open_pumps == 0:
                await self._queue.put(b"")

    async def read(self) -> bytes:
        return await self._queue.get()

    def write(self, data: bytes) -> None:
        try:
            self._process.stdin.write(data)
        except (asyncssh.Error, OSError, BrokenPipeError):
            pass

    def write_eof(self) -> None:
        try:
            self._process.stdin.write_eof()
        except (asyncssh.Error, OSError, BrokenPipeError):
            pass

    def end_input(self) -> None:
        if self._pty:
            self.write(b"\x04")
        else:
            self.write_eof()

    def resize(self, cols: int, rows: int) -> None:
        try:
            self._process.change_terminal_size(cols, rows)
        except (asyncssh.Error, OSError):
            pass

    def echo_enabled(self) -> bool | None:
        return None

    def hangup(self) -> None:
        # Closing the channel makes sshd send SIGHUP to the session's processes.
        self._process.close()
        self._conn.close()

    async def wait(self) -> int:
        completed = await self._process.wait(check=False)
        self._conn.close()
        status = completed.exit_status
        if status is None or status < 0:
            return (
                255
                if completed.exit_signal is None
                else 128 + _signal_number(completed.exit_signal[0])
            )
        return status


def _signal_number(name: str) -> int:
    import signal

    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        return 1


def _agent_command() -> str:
    return f"exec python3 -I -c {shlex.quote(AGENT_BOOTSTRAP)} {shlex.quote(AGENT_SOURCE)}"


async def _exit_status(remote: asyncssh.SSHClientProcess[bytes]) -> int:
    completed = await remote.wait(check=False)
    if completed.exit_status is not None and completed.exit_status >= 0:
        return completed.exit_status
    return 255


class SshUnit(TerminalUnit[SshTarget]):
    name = "ssh"

    async def open_terminal(self, target: SshTarget, request: TerminalRequest) -> SshTerminal:
        return await SshTerminal.open(target, request)

    async def open_agent(self, target: SshTarget, *, term: str) -> AgentLink:
        # The helper makes its own pty; the session has none.
        conn = await connect_target(target)
        try:
            process = await conn.create_process(_agent_command(), encoding=None)
        except asyncssh.Error as exc:
            conn.close()
            raise TargetError(
                f"target {target.name}: cannot open a session: {exc.reason}"
            ) from None

        def close() -> None:
            process.close()
            conn.close()

        async def read_stderr() -> bytes:
            return await process.stderr.read(65536)

        return AgentLink(process.stdin.write, process.stdout.read, close, read_stderr)

    @contextlib.asynccontextmanager
    async def run_command(self, target: SshTarget, command: str) -> AsyncIterator[CommandProcess]:
        conn = await connect_target(target)
        try:
            remote = await conn.create_process(command, encoding=None, stdin=asyncssh.DEVNULL)
            yield CommandProcess(remote.stdout, remote.stderr, lambda: _exit_status(remote))
        finally:
            conn.close()

    @contextlib.asynccontextmanager
    async def open_sftp(self, target: SshTarget) -> AsyncIterator[asyncssh.SFTPClient]:
        conn = await connect_target(target)
        try:
            try:
                # Paths stay bytes end to end: a name that is not UTF-8 is passed on as it is.
                client = await conn.start_sftp_client(path_encoding=None)
            except (asyncssh.Error, OSError) as exc:
                reason = exc.reason if isinstance(exc, asyncssh.Error) else str(exc)
                raise TargetError(
                    f"target {target.name}: no SFTP service on the target: {reason}"
                ) from None
            try:
                yield client
            finally:
                client.exit()
        finally:
            conn.close()

    @contextlib.asynccontextmanager
    async def run_stream(self, target: SshTarget, command: str) -> AsyncIterator[StreamProcess]:
        conn = await connect_target(target)
        try:
            try:
                remote = await conn.create_process(command, encoding=None)
            except asyncssh.Error as exc:
                raise TargetError(
                    f"target {target.name}: cannot open a session: {exc.reason}"
                ) from None
            try:
                yield StreamProcess(
                    remote.stdin, remote.stdout, remote.stderr, lambda: _exit_status(remote)
                )
            finally:
                remote.close()
        finally:
            conn.close()

    def end_session(self, shell_pid: int) -> None:
        # The broker cannot signal processes on the host: the helper ends its shell's session
        # when its input closes with the link, and its watchdog does when the helper dies.
        pass


UNIT = SshUnit()
