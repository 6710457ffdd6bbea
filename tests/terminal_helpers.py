"""Shared set-up for terminal-session tests: a broker with shell targets and a logged-in user."""

from __future__ import annotations

import re
from pathlib import Path

import pexpect

from tests.helpers import TARGET_USER, BrokerProcess, User, dev_config, free_port, start_broker

SHELL_POLICY = """
[policies.shell]
default = "allow"
on_unknown = "deny"

[[policies.shell.rules]]
name = "no-recursive-rm"
action = "deny"
program = ["rm"]
args = ["-r*", "-f*", "--recursive"]

[[policies.shell.rules]]
name = "reboots-need-review"
action = "review"
program = ["reboot", "shutdown"]
approvers = ["approvers"]
"""

# `$ `/`# ` (bash, sh), `% ` (zsh's default for a user other than root: local targets run as one).
PROMPT = r"[$#%] \x1b\]133;B\x07"
SESSION_ID = re.compile(r"session (\d{8}-[0-9a-f]{12}) started")


def local_target(
    name: str = "shell", extra: str = "", groups: str = '["engineers"]', guard: str = "screen"
) -> str:
    """A local bash target. These shared helpers test the `screen` grade (prompt marks off the
    screen); the strict grade has its own tests (tests/test_guard_strict.py)."""
    return f"""
[[targets]]
name = "{name}"
type = "local"
guard = "{guard}"
run_as = "{TARGET_USER}"
command = ["bash", "--noprofile", "--norc", "-i"]
env = {{ PS1 = "$ " }}
allowed_groups = {groups}
policy = "shell"
{extra}
"""


def start_terminal_broker(
    tmp_path: Path,
    targets: str,
    *,
    name: str = "broker",
    workers: int = 1,
    extra: str = "",
    node: str | None = None,
) -> BrokerProcess:
    """EXTRA: more config (a [store] section, say), after the targets; NODE: [broker] node."""
    config = dev_config(
        tmp_path / f"{name}-data",
        port=free_port(),
        dev_port=free_port(),
        targets=targets + SHELL_POLICY + extra,
    )
    if node is not None:
        config = config.replace("[broker]\n", f'[broker]\nnode = "{node}"\n', 1)
    return start_broker(tmp_path, config, name=name, workers=workers)


def open_shell(user: User, target: str = "shell", *args: str) -> pexpect.spawn:
    child = user.spawn("connect", target, *args, timeout=20)
    child.expect(SESSION_ID)
    child.session_id = child.match.group(1)  # type: ignore[attr-defined]
    child.expect(PROMPT)
    return child


def run_line(child: pexpect.spawn, line: str) -> str:
    """Type LINE and Enter; return what the terminal showed until the next prompt."""
    child.send(line + "\r")
    child.expect(PROMPT)
    return str(child.before)


def close_shell(child: pexpect.spawn) -> int:
    """Leave the shell with `exit`; return hoopctl's exit status."""
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def recording_of(broker: BrokerProcess, session_id: str) -> Path:
    return broker.data_dir / "recordings" / f"{session_id}.cast"
