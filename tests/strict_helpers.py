"""Helpers for the strict-guard end-to-end tests (tests/test_guard_strict.py).

Both kinds of terminal target run on this machine: a `local` target as the OS user
hoop-target, an `ssh` target through a real sshd as the current user. What an attack would
have done is therefore checked on the file system directly, beside the broker's audit log.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect

from broker.config import LocalTarget
from tests.helpers import HOOP_BROKER, BrokerProcess, User
from tests.sshd_harness import SshdServer
from tests.terminal_helpers import SESSION_ID

# The broker draws `user@target:cwd$`, an OSC 133 B mark, then a no-break space. It redraws
# the prompt with every edit (and once more when a line is accepted), so the mark alone does
# not say that a new prompt is up: a new prompt starts by turning bracketed paste on (and the
# accepted line ends by turning it off).
STRICT_PROMPT = r"\x1b\[\?2004h[^\r\n]*?\$\x1b\]133;B\x07"
TARGET_USER = "hoop-target"
DENIED = r"denied by rule no-recursive-rm"
# Denied by a rule, or as input the broker cannot tell (on_unknown = "deny").
REFUSED = r"denied by (?:rule|policy)|not run: "
CTRL_C = "\x03"
UP = "\x1b[A"
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"

RM_DENY_ARGS = '["-[rRf]*", "-[!-]*[rRf]*", "--r*", "--f*"]'


def strict_config(data_dir: Path, *, port: int, dev_port: int, targets: str) -> str:
    """A --dev broker whose issuer approves alice (group engineers) at once, with TARGETS only."""
    return f"""
[broker]
listen = "127.0.0.1:{port}"
data_dir = "{data_dir}"
certificate_ttl = "8h"

[dev]
listen = "127.0.0.1:{dev_port}"
id_token_ttl = "1h"
auto_approve = "alice"

[dev.users.alice]
groups = ["engineers"]
{targets}
"""


def guard_policy(name: str, on_unknown: str) -> str:
    """Default allow; `rm` with -r/-f in any spelling denied; ON_UNKNOWN for what cannot be told."""
    return f"""
[policies.{name}]
default = "allow"
on_unknown = "{on_unknown}"
unknown_approvers = ["leads"]

[[policies.{name}.rules]]
name = "no-recursive-rm"
action = "deny"
program = ["rm"]
args = {RM_DENY_ARGS}
"""


def local_guard_target(name: str, policy: str) -> str:
    return f"""
[[targets]]
name = "{name}"
type = "local"
run_as = "{TARGET_USER}"
allowed_groups = ["engineers"]
policy = "{policy}"
"""


def ssh_guard_target(name: str, sshd: SshdServer, policy: str) -> str:
    return f"""
[[targets]]
name = "{name}"
type = "ssh"
address = "{sshd.host}:{sshd.port}"
user = "{sshd.user}"
credential = "file:{sshd.client_key_path}"
known_host = "{sshd.host_key_line}"
allowed_groups = ["engineers"]
policy = "{policy}"
"""


# -- the local target's OS user -----------------------------------------------------------
def run_as_supported() -> bool:
    """True once local targets have the `run_as` key (broker/config.py)."""
    return "run_as" in LocalTarget.model_fields


def ensure_target_user() -> str | None:
    """Make sure the OS user local targets run as exists (created when we are root, as
    scripts/install-system-deps.sh does); a reason to skip when it cannot be had."""
    try:
        pwd.getpwnam(TARGET_USER)
        return None
    except KeyError:
        pass
    if os.geteuid() != 0:
        return f"the OS user {TARGET_USER} is missing (scripts/install-system-deps.sh creates it)"
    result = subprocess.run(
        ["useradd", "-m", "-s", "/bin/bash", TARGET_USER], capture_output=True, text=True
    )
    if result.returncode != 0:
        return f"cannot create the OS user {TARGET_USER}: {result.stderr.strip()}"
    return None


# -- places on the target ---------------------------------------------------------------
@dataclass
class Sandbox:
    """A fresh directory under /tmp that the local target's user can reach and change
    (0755 path components, owned by that user): pytest's tmp_path is 0700 root."""

    root: Path

    @classmethod
    def create(cls) -> Sandbox:
        root = Path(tempfile.mkdtemp(prefix="hoop-strict-", dir="/tmp"))
        root.chmod(0o755)
        _give(root)
        return cls(root)

    def folder(self, label: str) -> Path:
        """A new folder of the target user's."""
        safe = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")[:40] or "t"
        path = self.root / f"{safe}-{secrets.token_hex(3)}"
        path.mkdir(mode=0o755)
        _give(path)
        return path

    def sentinel(self, label: str) -> Path:
        """A directory S with a file inside that no attack may delete (the target user could)."""
        victim = self.folder(label) / "victim"
        victim.mkdir(mode=0o755)
        (victim / "keep.txt").write_text("must survive\n")
        for path in (victim, victim / "keep.txt"):
            _give(path)
        return victim

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _give(path: Path) -> None:
    try:
        entry = pwd.getpwnam(TARGET_USER)
    except KeyError:
        return
    if os.geteuid() == 0:
        os.chown(path, entry.pw_uid, entry.pw_gid)


# -- a session ------------------------------------------------------------------------------
def open_strict(user: User, target: str, *, timeout: float = 10) -> pexpect.spawn:
    child = user.spawn("connect", target, timeout=timeout)
    child.delaybeforesend = None  # keys go out as typed; the tests pause where it matters
    child.delayafterclose = 0.05
    child.expect(SESSION_ID, timeout=30)
    child.session_id = child.match.group(1)  # type: ignore[attr-defined]
    child.expect(STRICT_PROMPT, timeout=30)
    return child


def run_line(child: pexpect.spawn, line: str, *, timeout: float = 10) -> str:
    """Type LINE and Enter; what the terminal showed between the Enter and the next prompt."""
    child.send(line + "\r")
    child.expect("\r\n", timeout=timeout)
    child.expect(STRICT_PROMPT, timeout=timeout)
    return str(child.before)


def resync(
    child: pexpect.spawn, *, interrupt: bool = True, pause: float = 0.2, timeout: float = 10
) -> str:
    """Get back to a fresh prompt whatever the last keys left behind (Ctrl-C drops a half
    typed line or stops a job: PAUSE lets a job end first), and prove the shell runs judged
    commands again."""
    if interrupt:
        child.send(CTRL_C)
        time.sleep(pause)
    token = secrets.token_hex(4)
    child.send(f"printf 'sync-%s\\n' {token}\r")
    child.expect(f"sync-{token}\r\n", timeout=timeout)
    child.expect(STRICT_PROMPT, timeout=timeout)
    return str(child.before)


def quiet(child: pexpect.spawn, *, idle: float = 0.3, limit: float = 10) -> str:
    """Read until nothing more arrives for IDLE seconds; what arrived. (The prompt is redrawn
    with every edit, so a prompt on screen alone does not say a command has ended.)"""
    seen = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            seen.append(child.read_nonblocking(65536, timeout=idle))
        except pexpect.TIMEOUT:
            break
    return "".join(seen)


def close(child: pexpect.spawn) -> int | None:
    """Leave the shell with `exit` (twice if bash says there are stopped jobs: a job killed
    while stopped is still listed until bash has reaped it); hoopctl's exit status."""
    # Keys sent while a command still runs go to it (and are discarded after it, never run
    # as a command), and bash wants a second `exit` while it lists stopped jobs: send `exit`
    # until the session ends, a few times at most.
    for _ in range(4):
        if not child.isalive():
            break
        child.send(CTRL_C)
        time.sleep(0.05)
        child.send("exit\r")
        if child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=4) == 0:
            break
    # EOF can come a moment before hoopctl exits: let it exit rather than be hung up.
    deadline = time.monotonic() + 5
    while child.isalive() and time.monotonic() < deadline:
        time.sleep(0.02)
    child.close()
    if child.exitstatus is None and child.signalstatus is not None:
        return 128 + child.signalstatus
    return child.exitstatus


def bracketed(text: str) -> str:
    """TEXT as a terminal sends it for a bracketed paste."""
    return PASTE_START + text + PASTE_END


# -- what happened ------------------------------------------------------------------------
def session_events(broker: BrokerProcess, session_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in broker.audit_events(kind) if e.get("session") == session_id]


def allowed_commands(broker: BrokerProcess, session_id: str) -> list[str]:
    return [
        str(e["details"]["command"])
        for e in session_events(broker, session_id, "command")
        if e["details"].get("decision") == "allow"
    ]


def assert_survived(
    broker: BrokerProcess,
    session_id: str,
    sentinel: Path,
    *,
    allowed: Iterable[str] = (),
) -> None:
    """The sentinel and its file are still there, and no command that names it was allowed
    to run in the session (but the ALLOWED ones, which set an attack up)."""
    assert sentinel.is_dir(), f"{sentinel} was deleted"
    assert (sentinel / "keep.txt").read_text() == "must survive\n"
    expected = set(allowed)
    ran = [c for c in allowed_commands(broker, session_id) if str(sentinel) in c]
    unexpected = [c for c in ran if c not in expected]
    assert not unexpected, f"allowed to run: {unexpected!r}"


def wait_session_end(broker: BrokerProcess, session_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ends = session_events(broker, session_id, "session.end")
        if ends:
            return ends[-1]
        time.sleep(0.1)
    raise AssertionError(f"no session.end for {session_id} within {timeout}s")


def verify_session(broker: BrokerProcess, session_id: str) -> subprocess.CompletedProcess[str]:
    """`hoop-broker verify --session`: the recording is signed (sealed) and intact."""
    return subprocess.run(
        [HOOP_BROKER, "verify", "--config", str(broker.config_path), "--session", session_id],
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- processes ------------------------------------------------------------------------------
def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""


def pids_running(*argv: str) -> set[int]:
    """PIDs whose command line is exactly ARGV."""
    wanted = b"\0".join(a.encode() for a in argv) + b"\0"
    return {int(n) for n in os.listdir("/proc") if n.isdigit() and _cmdline(int(n)) == wanted}


def helper_of(pid: int) -> int | None:
    """The session helper among PID's ancestors."""
    for _ in range(64):
        pid = _parent(pid)
        if pid in (0, 1):
            return None
        if b"hoop-shell-agent" in _cmdline(pid):
            return pid
    return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False
