"""Warm start: with HOOPCTL_PERSIST set (e.g. ``10m``), quick commands run in a process forked
from a warm one that has already imported hoopctl, instead of a fresh interpreter.

Most of what `hoopctl exec` costs on its own is start-up: importing asyncssh, cryptography,
Typer and rich takes several times longer than the command's work. The first call starts the
warm process (and runs as usual); later calls hand it their command line, environment,
working directory and standard streams (the file descriptors themselves, over a Unix socket
with SCM_RIGHTS), and it forks a child that runs the command on them. The client waits for
the child's exit status and passes Ctrl-C and other signals on to it. The warm process exits
after HOOPCTL_PERSIST without a command, like OpenSSH's ControlPersist.

Who may use it: the socket lives in a directory only this user can enter, and the warm
process serves only peers of its own uid (SO_PEERCRED). It holds no secret a fresh hoopctl
would not read itself: each child reads the keyring and profile as a cold start does.

This module is imported by every `hoopctl` run that has HOOPCTL_PERSIST set, so at module level
it imports only the standard library it needs for the hand-over; the warm process imports the
rest (hoopctl.cli) before it listens.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import select
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

PERSIST_ENV = "HOOPCTL_PERSIST"
WARM_COMMANDS = frozenset(
    {"exec", "whoami", "targets", "sessions", "approvals", "requests", "request", "ssh-config"}
)
"""Commands that run warm: none of them takes over the terminal (raw mode, window size, job
control), which a forked child, outside the terminal's foreground process group, cannot do."""
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
MAX_REQUEST = 4 << 20


def persist_seconds(value: str | None) -> float | None:
    """HOOPCTL_PERSIST as seconds: "10m", "600", "1h"; None when unset, "0", "no" or invalid."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", value or "")
    if match is None:
        return None
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    return seconds if seconds > 0 else None


def socket_path() -> Path | None:
    """This user's warm socket for this hoopctl (its version, interpreter and HOME), in a
    directory that is theirs alone; None when no such directory can be had."""
    from hoopctl import __version__

    base = os.environ.get("XDG_RUNTIME_DIR")
    directory = Path(base) / "hoopctl" if base else Path(f"/tmp/hoopctl-{os.getuid()}")  # noqa: S108
    try:
        directory.mkdir(mode=0o700, parents=bool(base), exist_ok=True)
        info = directory.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None  # someone else's, or open to others: never trust a socket found there
    identity = "\0".join(
        (
            __version__,
            os.path.realpath(sys.executable),
            str(Path(__file__).resolve()),
            os.environ.get("HOME", ""),
        )
    )
    return directory / f"warm-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.sock"


# -- the client -------------------------------------------------------------------------


def run_warm(argv: list[str]) -> int | None:
    """Run ARGV (hoopctl's arguments) in a warm child; its exit status, or None to run cold
    (not enabled, not a warm command, or no warm process yet: one is started for next time)."""
    persist = persist_seconds(os.environ.get(PERSIST_ENV))
    if persist is None or not argv or argv[0] not in WARM_COMMANDS:
        return None
    path = socket_path()
    if path is None:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        _start_server(path, persist)
        return None
    with conn:
        request = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        try:
            socket.send_fds(conn, [struct.pack("!I", len(request)) + request], [0, 1, 2])
        except OSError:
            return None  # it went away as we spoke: run cold
        return _wait_for_child(conn)


def _wait_for_child(conn: socket.socket) -> int:
    reader = conn.makefile("rb")
    first = reader.readline()
    if not first:
        return _gone()
    pid = int(json.loads(first)["pid"])

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    line = reader.readline()
    if not line:
        return _gone()
    outcome = json.loads(line)
    if "signal" in outcome:
        return 128 + int(outcome["signal"])
    return int(outcome["exit"])


def _gone() -> int:
    sys.stderr.write("hoopctl: the warm hoopctl process went away; run the command again\n")
    return 1


def _start_server(path: Path, persist: float) -> None:
    import subprocess

    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-m", "hoopctl.warm", str(path), str(persist)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )


# -- the warm process -------------------------------------------------------------------


def serve(path: Path, persist: float) -> None:
    """Listen on PATH; fork a child per command; exit after PERSIST seconds without one."""
    command = _preload()
    os.umask(0o077)
    listener = _bind(path)
    if listener is None:
        return  # another one serves there
    listener.listen(16)
    inode = path.stat().st_ino
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda signum, _frame: stopping.append(signum))
    children: dict[int, socket.socket] = {}
    idle_since = time.monotonic()
    listening = True
    try:
        while listening or children:
            if listening and (stopping or not _still_ours(path, inode)):
                # Told to stop, or its socket removed: take nothing new, finish what runs.
                listening = False
                _close_listener(listener, path, inode)
            wait = persist - (time.monotonic() - idle_since) if not children else None
            if wait is not None and wait <= 0:
                return
            watched = [wake_read, listener] if listening else [wake_read]
            readable, _, _ = select.select(watched, [], [], 1.0 if wait is None else min(wait, 1.0))
            if wake_read in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 512)
                _reap(children)
                if not children:
                    idle_since = time.monotonic()
            if listening and listener in readable:
                _accept(listener, children, command)
                idle_since = time.monotonic()
    finally:
        if listening:
            _close_listener(listener, path, inode)


def _still_ours(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


def _close_listener(listener: socket.socket, path: Path, inode: int) -> None:
    listener.close()
    if _still_ours(path, inode):
        path.unlink(missing_ok=True)


def _bind(path: Path) -> socket.socket | None:
    """A listening socket at PATH; a socket file left by a warm process that died is
    replaced, one that answers is left alone (None)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            listener.close()
            return None
    else:
        return listener
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink(missing_ok=True)
    except OSError:
        listener.close()
        return None
    else:
        listener.close()
        return None
    finally:
        probe.close()
    try:
        listener.bind(str(path))
    except OSError:
        listener.close()
        return None
    return listener


def _preload() -> Callable[[], object]:
    """Import what the warm commands use and build the command line once, so that a child
    starts with all of it done. Nothing that depends on the caller's environment (the keyring
    backend, the profile) is touched: each child does that as a cold start would."""
    import zoneinfo  # noqa: F401  (local times in listings)

    import keyring.backend  # noqa: F401
    import keyrings.alt.file  # noqa: F401
    import rich.console  # listings and messages: cold commands import rich on first use
    import rich.table  # noqa: F401
    import typer.main

    import hoopctl.credentials
    import hoopctl.exec_relay
    import hoopctl.session  # noqa: F401
    from hoopctl.cli_common import app
    from hoopctl.commands import load

    load()  # a child may run any of them

    return typer.main.get_command(app)


def _accept(
    listener: socket.socket, children: dict[int, socket.socket], command: Callable[[], object]
) -> None:
    conn, _ = listener.accept()
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            conn.close()
            return
        conn.settimeout(5)
        request, fds = _receive(conn)
    except (OSError, ValueError):
        conn.close()
        return
    child = os.fork()
    if child == 0:
        # The child keeps nothing of the server: its socket, nor other callers' connections.
        listener.close()
        for other in children.values():
            other.close()
        _run_child(conn, request, fds, command)  # never returns
    for fd in fds:
        os.close(fd)
    children[child] = conn
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"pid": child}).encode() + b"\n")


def _receive(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    if len(fds) != 3 or len(data) < 4:
        for fd in fds:
            os.close(fd)
        raise ValueError("a request with its three streams")
    (size,) = struct.unpack("!I", data[:4])
    if size > MAX_REQUEST:
        raise ValueError("request too large")
    body = bytearray(data[4:])
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise ValueError("request cut short")
        body += more
    request = json.loads(bytes(body))
    if not isinstance(request, dict):
        raise ValueError("not a request")
    return request, fds


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        if os.WIFSIGNALED(status):
            outcome = {"signal": os.WTERMSIG(status)}
        else:
            outcome = {"exit": os.waitstatus_to_exitcode(status)}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(outcome).encode() + b"\n")
        conn.close()


def _run_child(
    conn: socket.socket, request: dict[str, object], fds: list[int], command: Callable[[], object]
) -> None:
    """In the forked child: become the caller's hoopctl run, then exit with its status."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        env = request.get("env")
        argv = request.get("argv")
        cwd = request.get("cwd")
        if not isinstance(env, dict) or not isinstance(argv, list) or not isinstance(cwd, str):
            raise ValueError("bad request")
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        os.chdir(cwd)
        sys.argv = ["hoopctl", *map(str, argv)]
        _reopen_streams()
        from hoopctl.cli import main

        try:
            main(command)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                sys.stderr.write(exc.code + "\n")
        except KeyboardInterrupt:
            code = 130
    except BaseException:
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def _reopen_streams() -> None:
    """sys.stdin/stdout/stderr on the caller's streams, buffered as a fresh start would, and
    the shared consoles told what they now write to (a terminal or a pipe, colours, width)."""
    sys.stdin = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)
    sys.stdout = open(
        1,
        "w",
        encoding="utf-8",
        errors="surrogateescape",
        closefd=False,
        buffering=1 if os.isatty(1) else -1,
    )
    sys.stderr = open(
        2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1
    )
    from hoopctl.output import reopen_consoles

    reopen_consoles()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), float(sys.argv[2]))
