"""Plain OpenSSH through the broker (docs/native-clients.md).

The Host blocks `hoopctl ssh-config` writes send ``HOOP_TARGET=NAME`` (OpenSSH's ``SetEnv``)
on every session channel. With it, the channel is read as a session on that target: a shell
request as ``connect NAME``, an exec request as ``exec NAME -- CMD`` (the command text judged
and run as it came, as `hoopctl exec` runs its command), ``scp -t|-f`` and ``rsync --server``
as file transfers, and the ``sftp`` subsystem (served in server.py) as a file transfer too.
``HOOP_REASON`` (optional) is the session's reason, as ``--reason`` is for hoopctl.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from broker.sessions.command_exec import CommandExec
from broker.sessions.file_transfer import is_rsync_server, is_scp_server
from broker.sessions.request import RequestError, SessionCommand

TARGET_ENV = "HOOP_TARGET"
REASON_ENV = "HOOP_REASON"
MAX_REASON = 500

Kind = Literal["shell", "exec", "scp", "rsync"]


@dataclass(frozen=True)
class OpenSshRequest:
    kind: Kind
    request: SessionCommand
    # The exec request's command, exactly as the client sent it.
    command: str | None = None


def openssh_reason(env: Mapping[str, str]) -> str | None:
    reason = env.get(REASON_ENV)
    if reason is None:
        return None
    reason = " ".join(reason.split())
    if len(reason) > MAX_REASON:
        raise RequestError(f"{REASON_ENV} is longer than {MAX_REASON} characters")
    return reason or None


def openssh_request(
    target: str, env: Mapping[str, str], command: str | None, subsystem: str | None
) -> OpenSshRequest:
    """What a channel carrying HOOP_TARGET=TARGET asks for (raises RequestError)."""
    if not target.strip():
        raise RequestError(f"{TARGET_ENV} is empty: which target?")
    reason = openssh_reason(env)
    if subsystem is not None:
        raise RequestError(f"the subsystem {subsystem!r} is not served on targets")
    if command is None:
        return OpenSshRequest("shell", SessionCommand("connect", target, reason=reason))
    if not command.strip():
        raise RequestError("the command is empty")
    try:
        argv = shlex.split(command)
    except ValueError:
        argv = []
    kind: Kind = "scp" if is_scp_server(argv) else "rsync" if is_rsync_server(argv) else "exec"
    verb = "exec" if kind == "exec" else "transfer"
    return OpenSshRequest(kind, SessionCommand(verb, target, reason=reason), command)


class OpenSshExec(CommandExec):
    """`ssh NAME.hoop CMD`: CMD judged and run exactly as the client sent it (shell text, as
    sshd would hand it to the user's shell), without a PTY and without input, as `hoopctl
    exec` runs a command: the same policy, approvals, audit events and recording."""

    def __init__(self, *args: Any, command: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._text = command

    async def run(self) -> int:
        command = self._text
        decision = await self._judge(command)
        if decision.action != "allow":
            outcome = await self._hold(
                command,
                decision,
                say=self._error,
                wait=self._request.wait,
                watch_cancel=self._client_cancelled,
                in_session=False,
            )
            if not outcome.approved:
                return outcome.exit_status
            self._approver = outcome.approver
            self._standing = outcome.standing
        return await self._run(command, decision)
