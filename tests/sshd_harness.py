"""Test harness: a private, real OpenSSH ``sshd`` on a free loopback port.

Public API:

* :func:`sshd_available` -- is an ``sshd`` binary installed (``/usr/sbin/sshd`` or on PATH)?
* :func:`start_sshd` -- start ``sshd -D`` with its own config, host key, client key,
  authorized_keys, known_hosts, pid file and log, all inside ``workdir``; returns an
  :class:`SshdServer` once the port answers with an SSH banner.
* :class:`SshdServer` -- connection details (``host``, ``port``, ``user``, ``host_key_line``,
  ``client_key_path``), ``known_hosts_entry()``, ``ssh_command(*remote)`` (argv for the real
  ``ssh`` client), ``logs()`` and ``stop()``. Also usable as a context manager.

The server logs in the *current* OS user (:func:`current_user`: ``getpass.getuser()`` resolved
from the effective uid) with public-key auth only (``AllowUsers`` that user). The user's real
``~/.ssh`` is never read or written (``AuthorizedKeysFile`` points into ``workdir``). It runs as
root (CI) or as an unprivileged user on a high port (sshd then skips the privsep chroot and can
only log in as that same user, which is all we need).

Sessions run the user's login shell, but with ``HOME=<workdir>/home`` (``SetEnv HOME``), so the
user's dotfiles are not sourced: bash reads ``~/.bashrc`` even for ``ssh host cmd``, and root's
here runs ``pyenv rehash``, which is slow and, if a session is killed mid-rehash, leaves a lock
that hangs every later session. The working directory is still the real home (sshd chdirs
there). PATH is sshd's default (``/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin``).

Unprivileged caveat: PTY sessions need ``/dev/pts`` mounted with ``gid=5`` (the normal Linux
default); under a devpts mounted without it (some containers, e.g. this sandbox) a non-root sshd
dies with ``chown(/dev/pts/N, uid, 5) failed``. Non-PTY commands work either way. Root is fine.

``stop()`` also kills every session sshd spawned (per-connection sshd children call ``setsid()``,
so killing the listener's process group alone would leave them running).

Password authentication is deliberately NOT supported: with ``UsePAM no`` sshd checks the
password against ``/etc/shadow`` for a real system account, so supporting it would mean setting
a password on a real user (root, in CI). ``start_sshd(password=...)`` therefore raises
``ValueError`` and ``SshdServer.password`` is always ``None``; both are kept so callers can be
written against a stable signature.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")
HOST = "127.0.0.1"

# Servers not yet stopped; stopped at interpreter exit in case a test forgot (or was aborted).
_LIVE: set[SshdServer] = set()

# Per-attempt retry when the port chosen by bind(0) got taken before sshd bound it.
_START_ATTEMPTS = 3


def _sshd_path() -> str | None:
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("sshd")
    # sshd refuses to re-exec itself unless started by an absolute path.
    return os.path.abspath(found) if found else None


def sshd_available() -> bool:
    """True if an OpenSSH server binary is installed (``/usr/sbin/sshd`` or ``sshd`` on PATH)."""
    return _sshd_path() is not None


def current_user() -> str:
    """The account this process runs as (what ``getpass.getuser()`` returns unless LOGNAME/USER
    are stale, e.g. after ``setpriv``/``sudo -E``): the only account an unprivileged sshd can
    log in, and the one a root sshd is told to allow."""
    return pwd.getpwuid(os.geteuid()).pw_name


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found on PATH (install openssh-client)")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _keygen(path: Path, comment: str) -> str:
    """Create an ed25519 key pair at ``path`` (0600) and ``path.pub``; return the pub line."""
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    proc = subprocess.run(
        [_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ssh-keygen failed for {path}: {proc.stderr or proc.stdout}")
    path.chmod(0o600)
    return path.with_name(path.name + ".pub").read_text().strip()


def _key_type_and_blob(pub_line: str) -> str:
    """``"ssh-ed25519 AAAA... comment"`` -> ``"ssh-ed25519 AAAA..."``."""
    parts = pub_line.split()
    return f"{parts[0]} {parts[1]}"


def _quote(path: Path) -> str:
    # sshd_config accepts double-quoted arguments; paths never contain a double quote here.
    return f'"{path}"'


def _root_account_locked(user: str) -> bool:
    """With ``UsePAM no`` sshd refuses accounts whose shadow hash starts with ``!`` (locked),
    even for public-key logins. Only root can read /etc/shadow, and only root's own account
    matters here (an unprivileged sshd cannot read shadow, so it never sees the lock)."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/etc/shadow", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if name == user:
                    return rest.startswith("!")
    except OSError:
        return False
    return False


def _write_config(
    path: Path,
    *,
    port: int,
    user: str,
    host_key: Path,
    authorized_keys: Path,
    pid_file: Path,
    home: Path,
    use_pam: bool,
) -> None:
    lines = [
        "# Generated by tests/sshd_harness.py -- private test sshd, loopback only.",
        f"ListenAddress {HOST}",
        f"Port {port}",
        "AddressFamily inet",
        f"HostKey {_quote(host_key)}",
        f"PidFile {_quote(pid_file)}",
        f"AuthorizedKeysFile {_quote(authorized_keys)}",
        "AuthorizedPrincipalsFile none",
        "StrictModes no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "PermitEmptyPasswords no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "GSSAPIAuthentication no",
        f"UsePAM {'yes' if use_pam else 'no'}",
        "PermitRootLogin prohibit-password",
        f"AllowUsers {user}",
        "Subsystem sftp internal-sftp",
        "AcceptEnv LANG LC_* HOOP_*",
        # Sessions get a private HOME so the user's dotfiles (pyenv/conda hooks in ~/.bashrc,
        # which bash sources even for `ssh host cmd`) neither slow sessions down nor see them.
        f"SetEnv HOME={home}",
        "PrintMotd no",
        "PrintLastLog no",
        "Banner none",
        "UseDNS no",
        "X11Forwarding no",
        "LogLevel VERBOSE",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "MaxAuthTries 10",
        "LoginGraceTime 30",
        "",
    ]
    path.write_text("\n".join(lines))


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Field 2 (comm) may contain spaces and parentheses; ppid follows the last ')'.
        try:
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(pid: int) -> list[int]:
    children = _children_map()
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


@dataclass(eq=False)
class SshdServer:
    """A running private sshd. All files live in ``workdir``."""

    port: int
    host: str
    user: str
    host_key_line: str
    client_key_path: Path
    password: str | None
    workdir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / "sshd.log"

    @property
    def known_hosts_path(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def config_path(self) -> Path:
        return self.workdir / "sshd_config"

    def known_hosts_entry(self) -> str:
        """``"[127.0.0.1]:PORT ssh-ed25519 AAAA..."`` -- an OpenSSH known_hosts line."""
        return f"[{self.host}]:{self.port} {self.host_key_line}"

    def ssh_command(self, *remote: str) -> list[str]:
        """Argv for the real ``ssh`` client: this server, the client key, strict host key
        checking against ``workdir/known_hosts``, BatchMode, and no user/system ssh config.

        ``remote`` words are passed after ``--``, so they may start with ``-``. Like ssh itself,
        the remote side joins them with spaces and runs them through the user's shell.
        """
        return [
            shutil.which("ssh") or "ssh",
            "-F",
            "none",
            "-i",
            str(self.client_key_path),
            "-p",
            str(self.port),
            "-l",
            self.user,
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts_path}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "CheckHostIP=no",
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            self.host,
            "--",
            *remote,
        ]

    def logs(self) -> str:
        """sshd's log file (LogLevel VERBOSE), including per-connection children."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Stop sshd and every session it spawned. Idempotent.

        Per-connection sshd children call ``setsid()`` (and so do session shells), so killing
        the listener's process group is not enough: freeze the listener and all its
        descendants with SIGSTOP (so nothing forks or reparents meanwhile), SIGKILL the
        descendants, then SIGTERM the listener's group and SIGKILL it if it lingers.
        """
        proc = self.process
        _LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            pid = proc.pid
            _signal(pid, signal.SIGSTOP)
            frozen: set[int] = set()
            for _ in range(50):
                new = [p for p in _descendants(pid) if p not in frozen]
                if not new:
                    break
                for child in new:
                    _signal(child, signal.SIGSTOP)
                frozen.update(new)
            for child in frozen:
                _signal(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            _signal(pid, signal.SIGCONT)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # Anything left in the group (there should be nothing).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.process = None

    def __enter__(self) -> SshdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_for_banner(proc: subprocess.Popen[bytes], port: int, deadline: float) -> str | None:
    """Poll until the port returns an ``SSH-`` banner. None if sshd exited or time ran out."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as sock:
                sock.settimeout(2.0)
                data = b""
                while b"\n" not in data and len(data) < 1024:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(b"SSH-"):
                    return data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
        except OSError:
            pass
        time.sleep(0.05)
    return None


def start_sshd(
    workdir: Path,
    *,
    password: str | None = None,
    timeout: float = 15.0,
) -> SshdServer:
    """Start a private sshd on a free 127.0.0.1 port for the current user.

    Generates an ed25519 host key and client key in ``workdir``, authorises the client key,
    writes ``sshd_config`` and ``known_hosts``, validates the config with ``sshd -t`` and runs
    ``sshd -D -E sshd.log -f sshd_config`` as a new session (process group leader). Returns once
    the port answers with an SSH banner; raises RuntimeError with sshd's output otherwise.
    ``password`` is not supported (see the module docstring) and must be None.
    """
    if password is not None:
        raise ValueError(
            "sshd_harness does not support password auth: it would need a password on a real "
            "system account (UsePAM no checks /etc/shadow); use client_key_path instead"
        )
    sshd = _sshd_path()
    if sshd is None:
        raise RuntimeError("sshd not installed (apt-get install openssh-server)")

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    user = current_user()

    host_key = workdir / "ssh_host_ed25519_key"
    client_key = workdir / "client_ed25519_key"
    host_key_line = _key_type_and_blob(_keygen(host_key, "hoop-test-sshd-host"))
    client_pub = _keygen(client_key, f"hoop-test-client-{user}")
    authorized_keys = workdir / "authorized_keys"
    authorized_keys.write_text(client_pub + "\n")
    authorized_keys.chmod(0o600)

    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        # sshd running as root chroots its pre-auth child here and refuses to start without it.
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        PRIVSEP_DIR.chmod(0o755)

    # UsePAM no is what we want (works unprivileged, no PAM session modules). Only a root whose
    # shadow entry is locked ("!") needs PAM, because without PAM sshd refuses locked accounts.
    use_pam = _root_account_locked(user)

    home = workdir / "home"
    home.mkdir(exist_ok=True)
    config = workdir / "sshd_config"
    log_path = workdir / "sshd.log"
    pid_file = workdir / "sshd.pid"
    failures: list[str] = []
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = _free_port()
        _write_config(
            config,
            port=port,
            user=user,
            host_key=host_key,
            authorized_keys=authorized_keys,
            pid_file=pid_file,
            home=home,
            use_pam=use_pam,
        )
        check = subprocess.run(
            [sshd, "-t", "-f", str(config)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check.returncode != 0:
            raise RuntimeError(
                f"sshd -t rejected {config} (exit {check.returncode}):\n"
                f"{check.stderr}{check.stdout}\n--- config ---\n{config.read_text()}"
            )
        log_path.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [sshd, "-D", "-E", str(log_path), "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
            start_new_session=True,
        )
        server = SshdServer(
            port=port,
            host=HOST,
            user=user,
            host_key_line=host_key_line,
            client_key_path=client_key,
            password=None,
            workdir=workdir,
            process=proc,
        )
        _LIVE.add(server)
        banner = _wait_for_banner(proc, port, time.monotonic() + timeout)
        if banner is not None:
            (workdir / "known_hosts").write_text(server.known_hosts_entry() + "\n")
            return server
        exited = proc.poll()
        server.stop()
        log = server.logs()
        failures.append(
            f"attempt {attempt} on port {port}: "
            + (f"sshd exited with {exited}" if exited is not None else "no SSH banner in time")
            + f"\n{log}"
        )
        port_taken = "Address already in use" in log or "Bind to port" in log
        if not port_taken:
            break
    cmdline = shlex.join([sshd, "-D", "-E", str(log_path), "-f", str(config)])
    raise RuntimeError(f"could not start sshd ({cmdline}):\n" + "\n".join(failures))
