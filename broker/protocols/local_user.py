"""The OS user a `local` target runs as (`run_as`), and the fresh environment of its sessions.

A local target never runs as the broker's own user: its processes could then read the broker's
keys and store, or its environment (`/proc/<pid>/environ`, which may hold other targets'
secrets). Every place that starts a local target's process does so through this module:

    run_as = resolve_run_as(target.run_as)          # TargetError when it cannot be done
    env = session_environment(target, run_as, term="xterm-256color")
    await asyncio.create_subprocess_exec(*argv, env=env, **run_as.subprocess_kwargs(), ...)

`subprocess_kwargs()` gives `user`, `group`, `extra_groups` and `cwd` (the user's home); the
switch happens in the child between fork and exec, so the broker needs root (or CAP_SETUID and
CAP_SETGID). Without them the session is refused with a one-line reason, never started as the
broker's user.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.config import LocalTarget
from broker.credentials import resolve_credential
from broker.protocols.base import TargetError

# The session's PATH unless the target's `env` sets one: the broker's own is never passed on.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Locale and time zone are the only things taken from the broker's environment (no secrets).
PASS_THROUGH = ("LANG", "LC_ALL", "TZ")
NEEDS_PRIVILEGE = (
    "the broker must run as root (or with CAP_SETUID/CAP_SETGID) to start local targets "
    "as run_as users"
)
_CAP_SETGID = 6
_CAP_SETUID = 7


@dataclass(frozen=True)
class RunAs:
    """A `run_as` user as the passwd and group databases give it."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, the primary group not repeated
    home: str
    shell: str

    @property
    def workdir(self) -> str:
        """Where the target's processes start: the user's home, or / if it has none."""
        return self.home if os.path.isdir(self.home) else "/"

    def subprocess_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for asyncio.create_subprocess_exec (and subprocess.Popen) that
        start the child as this user, with its groups, in its home."""
        return {
            "user": self.uid,
            "group": self.gid,
            "extra_groups": list(self.groups),
            "cwd": self.workdir,
        }

    def chown(self, path: str | Path) -> None:
        """Give PATH to this user (and its primary group), e.g. a directory the target writes."""
        os.chown(path, self.uid, self.gid)


def can_switch_users() -> bool:
    """True when this process may start children as another user: CAP_SETUID and CAP_SETGID in
    its effective set (root has them unless they were dropped)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps >> _CAP_SETUID & 1 and caps >> _CAP_SETGID & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def lookup_run_as(name: str) -> RunAs:
    """NAME's passwd entry and groups; TargetError if there is no such user or it is root or
    the broker's own user (config loading checks the same; the host may have changed since)."""
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, ValueError):
        raise TargetError(f"run_as: no OS user named {name!r} on this host") from None
    if entry.pw_uid == 0 or entry.pw_uid in (os.getuid(), os.geteuid()):
        raise TargetError(
            f"run_as: {name!r} is root or the broker's own user; a local target needs a user "
            "of its own"
        )
    groups = sorted(set(os.getgrouplist(name, entry.pw_gid)) - {entry.pw_gid})
    return RunAs(
        name=name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=tuple(groups),
        home=entry.pw_dir or "/",
        shell=entry.pw_shell or "/bin/sh",
    )


def resolve_run_as(name: str) -> RunAs:
    """The user a local target's processes are started as, checked for this session.

    TargetError (a one-line reason, shown to the user) when the user is missing, is root or
    the broker's own user, or when the broker lacks the privilege to switch to it.
    """
    run_as = lookup_run_as(name)
    if not can_switch_users():
        raise TargetError(NEEDS_PRIVILEGE)
    return run_as


def session_environment(target: LocalTarget, run_as: RunAs, *, term: str) -> dict[str, str]:
    """The environment of a session on TARGET, built fresh: nothing is inherited from the
    broker but LANG, LC_ALL and TZ.

    PATH (DEFAULT_PATH), HOME, USER, LOGNAME and SHELL (from the passwd entry), TERM,
    HOOP_TARGET, then the target's `env` entries (credential references `env:`, `file:`,
    `keyring:` resolved by the broker), and LESSSECURE=1 last, so that less (and man, git …
    through it) cannot start shell commands.
    """
    env = {key: os.environ[key] for key in PASS_THROUGH if key in os.environ}
    env.update(
        PATH=DEFAULT_PATH,
        HOME=run_as.home,
        USER=run_as.name,
        LOGNAME=run_as.name,
        SHELL=run_as.shell,
        TERM=term,
        HOOP_TARGET=target.name,
    )
    for key, value in target.env.items():
        if value.startswith(("env:", "file:", "keyring:")):
            env[key] = resolve_credential(value, target=target.name).strip()
        else:
            env[key] = value
    env["LESSSECURE"] = "1"
    return env
