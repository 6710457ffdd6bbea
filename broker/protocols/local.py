"""`local` targets: a command on the broker host under a PTY, run as the target's own OS user
(`run_as`, see broker/protocols/local_user.py) in a fresh environment that holds its
credentials."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shlex
import signal
import struct
import tempfile
import termios
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from broker.config import LocalTarget
from broker.protocols.agent_link import AGENT_BOOTSTRAP, AGENT_SOURCE, AgentLink
from broker.protocols.base import TargetError
from broker.protocols.local_user import resolve_run_as, session_environment
from broker.protocols.shell_agent import signal_session
from broker.protocols.shell_integration import (
    SHELLS,
    bash_rcfile,
    sh_env_file,
    write_zsh_dotdir,
)
from broker.protocols.terminal import (
    CommandProcess,
    StreamProcess,
    TerminalRequest,
    TerminalUnit,
)

if TYPE_CHECKING:
    import asyncssh

_READ_SIZE = 65536
SHELL_PROGRAMS = ("bash", "sh", "zsh", "dash", "ksh")  # may run one-off commands with -c
# The session helper needs Python 3; anything else is the standard library.
_PYTHON = next(
    (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if Path(p).exists()), "python3"
)


def _set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _exit_status(status: int) -> int:
    """A negative status (the process was killed by a signal) as a shell reports it."""
    return status if status >= 0 else 128 - status


def _become_session_leader_with_tty() -> None:
    # Runs in the child before exec: stdin is the PTY slave; make it the controlling terminal
    # so Ctrl-C, Ctrl-Z and SIGHUP reach the target's process group.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _with_shell_integration(
    argv: list[str], env: dict[str, str], workdir: Path
) -> tuple[list[str], bool]:
    """Rewrite a shell's argv (and env) so the shell emits prompt marks; other programs as they are."""
    shell = Path(argv[0]).name
    flags = argv[1:]
    if shell not in SHELLS or "-c" in flags:
        return argv, False
    no_startup = "--norc" in flags or "-f" in flags
    login = "-l" in flags or "--login" in flags
    if shell == "bash":
        startup = "none" if no_startup else "login" if login else "bashrc"
        rest = [a for a in flags if a not in ("--norc", "--noprofile", "-l", "--login", "-i")]
        rcfile = workdir / "bashrc"
        rcfile.write_text(bash_rcfile(startup=startup))
        return [argv[0], "--noprofile", "--rcfile", str(rcfile), "-i", *rest], True
    if shell == "zsh":
        write_zsh_dotdir(workdir, startup=not no_startup)
        env["ZDOTDIR"] = str(workdir)
        rest = [a for a in flags if a not in ("-f", "--no-rcs", "-i")]
        return [argv[0], "-i", *rest], True
    env_file = workdir / "shrc"
    env_file.write_text(sh_env_file(startup=False))
    env["ENV"] = str(env_file)
    rest = [a for a in flags if a != "-i"]
    return [argv[0], "-i", *rest], True


def _readable_by_group(folder: str, gid: int) -> None:
    """The shell-integration files stay the broker's; the target's group may read, not change."""
    os.chown(folder, -1, gid)
    os.chmod(folder, 0o750)  # noqa: S103 - group is the target user's own; no write, no other
    for name in os.listdir(folder):
        os.chown(os.path.join(folder, name), -1, gid)
        os.chmod(os.path.join(folder, name), 0o640)


class LocalPty:
    """A child process on the broker host attached to a fresh PTY."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        master: int,
        workdir: tempfile.TemporaryDirectory[str],
        shell_integration: bool,
    ) -> None:
        self._process = process
        self._master = master
        self._workdir = workdir
        self.shell_integration = shell_integration
        # Bounded: when it is full the broker stops reading the PTY, and the kernel then
        # stops the program writing to it.
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
        self._eof = False
        self._reading = True
        asyncio.get_running_loop().add_reader(master, self._on_readable)

    @classmethod
    async def spawn(cls, target: LocalTarget, request: TerminalRequest) -> LocalPty:
        run_as = resolve_run_as(target.run_as)
        env = session_environment(target, run_as, term=request.term)
        workdir = tempfile.TemporaryDirectory(prefix="hoop-local-")
        argv = list(target.command)
        integration = False
        if request.command:
            # Only a shell target may run arbitrary commands; any other program stays confined.
            if Path(argv[0]).name not in SHELL_PROGRAMS:
                workdir.cleanup()
                raise TargetError(
                    f"target {target.name} runs a fixed program; it takes no one-off commands"
                )
            argv = [argv[0], "-c", shlex.join(request.command)]
        else:
            argv, integration = _with_shell_integration(argv, env, Path(workdir.name))
            _readable_by_group(workdir.name, run_as.gid)
        master, slave = os.openpty()
        try:
            # The terminal belongs to the session's user, as login(1) would leave it.
            os.fchown(slave, run_as.uid, -1)
            _set_winsize(slave, request.cols, request.rows)
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                start_new_session=True,
                preexec_fn=_become_session_leader_with_tty,
                **run_as.subprocess_kwargs(),
            )
        except OSError as exc:
            os.close(master)
            workdir.cleanup()
            raise TargetError(
                f"target {target.name}: cannot start {argv[0]}: {exc.strerror}"
            ) from None
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return cls(process, master, workdir, integration)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: every slave end is closed; the child is gone
        if not data:
            self._stop_reading()
        self._queue.put_nowait(data)
        if self._queue.full() and self._reading:
            self._reading = False
            asyncio.get_running_loop().remove_reader(self._master)

    def _stop_reading(self) -> None:
        if not self._eof:
            self._eof = True
            if self._reading:
                self._reading = False
                asyncio.get_running_loop().remove_reader(self._master)

    async def read(self) -> bytes:
        data = await self._queue.get()
        if not self._reading and not self._eof and not self._queue.full():
            self._reading = True
            asyncio.get_running_loop().add_reader(self._master, self._on_readable)
        return data

    def end_input(self) -> None:
        self.write(b"\x04")  # always a PTY: Ctrl-D is end of input

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                # The PTY input buffer is full; it drains fast, so a short blocking wait is fine.
                os.set_blocking(self._master, True)
                try:
                    written = os.write(self._master, view)
                finally:
                    os.set_blocking(self._master, False)
            except OSError:
                return
            view = view[written:]

    def resize(self, cols: int, rows: int) -> None:
        with contextlib.suppress(OSError):
            _set_winsize(self._master, cols, rows)

    def echo_enabled(self) -> bool | None:
        try:
            attrs = termios.tcgetattr(self._master)
        except termios.error:
            return None
        return bool(attrs[3] & termios.ECHO)

    def hangup(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGHUP)

    async def wait(self) -> int:
        status = await self._process.wait()
        self._stop_reading()
        with contextlib.suppress(OSError):
            os.close(self._master)
        self._workdir.cleanup()
        return _exit_status(status)


async def _start_piped(
    target: LocalTarget, argv: list[str], *, term: str, stdin: int, what: str
) -> asyncio.subprocess.Process:
    """ARGV without a PTY, its stdout and stderr piped: as the target's own OS user, in its
    home, in a fresh environment. WHAT names the program in the error."""
    run_as = resolve_run_as(target.run_as)
    env = session_environment(target, run_as, term=term)
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
            **run_as.subprocess_kwargs(),
        )
    except OSError as exc:
        raise TargetError(
            f"target {target.name}: cannot start {what}: {exc.strerror or exc}"
        ) from None


class LocalUnit(TerminalUnit[LocalTarget]):
    name = "local"

    async def open_terminal(self, target: LocalTarget, request: TerminalRequest) -> LocalPty:
        return await LocalPty.spawn(target, request)

    async def open_agent(self, target: LocalTarget, *, term: str) -> AgentLink:
        process = await _start_piped(
            target,
            [_PYTHON, "-I", "-c", AGENT_BOOTSTRAP, AGENT_SOURCE],
            term=term,
            stdin=asyncio.subprocess.PIPE,
            what="the session helper",
        )
        assert process.stdin is not None and process.stdout is not None
        stdin, stdout, stderr = process.stdin, process.stdout, process.stderr

        def close() -> None:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()

        async def read_stderr() -> bytes:
            return await stderr.read() if stderr is not None else b""

        return AgentLink(stdin.write, stdout.read, close, read_stderr)

    @contextlib.asynccontextmanager
    async def run_command(self, target: LocalTarget, command: str) -> AsyncIterator[CommandProcess]:
        shell = target.command[0]
        if Path(shell).name not in SHELL_PROGRAMS:
            raise TargetError(
                f"target {target.name} runs a fixed program; it takes no one-off commands"
            )
        child = await _start_piped(
            target,
            [shell, "-c", command],
            term="dumb",
            stdin=asyncio.subprocess.DEVNULL,
            what=shell,
        )
        assert child.stdout is not None and child.stderr is not None

        async def wait() -> int:
            return _exit_status(await child.wait())

        yield CommandProcess(child.stdout, child.stderr, wait)

    def open_sftp(
        self, target: LocalTarget
    ) -> contextlib.AbstractAsyncContextManager[asyncssh.SFTPClient]:
        # The config refuses `transfer` on local targets; this is the second lock.
        raise TargetError(f"target {target.name}: local targets take no file transfers")

    def run_stream(
        self, target: LocalTarget, command: str
    ) -> contextlib.AbstractAsyncContextManager[StreamProcess]:
        raise TargetError(f"target {target.name}: local targets take no file transfers")

    def end_session(self, shell_pid: int) -> None:
        if shell_pid:
            for sig in (signal.SIGHUP, signal.SIGCONT, signal.SIGKILL):
                signal_session(shell_pid, sig)


UNIT = LocalUnit()
