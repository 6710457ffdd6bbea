"""`hoopctl exec NAME -- CMD` on `ssh` and `local` targets: one command without a PTY, stdout and
stderr kept apart, the command's exit status carried back; judged and recorded like a session."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import time
from typing import Any

import asyncssh

from broker.config import LocalTarget, SshTarget
from broker.credentials import CredentialError
from broker.policy.decision import Decision
from broker.policy.shell import decide_shell
from broker.protocols import terminal_unit
from broker.protocols.base import TargetError
from broker.protocols.terminal import ByteReader, TerminalUnit
from broker.recording import RecordingError
from broker.sessions.base import SessionBase


class CommandExec(SessionBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._target: SshTarget | LocalTarget = self._target  # type: ignore[assignment]
        self._unit: TerminalUnit[Any] = terminal_unit(self._target.type)
        self._argv = self._request.argv
        self._approver: str | None = None
        self._standing: str | None = None

    def _error(self, text: str) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            self._process.stderr.write(f"hoop: {text}\n".encode())

    async def run(self) -> int:
        status = await self._run_exec()
        if self._request.summary:
            summary = {"session": self.session_id, "exit_status": status}
            self._error("summary " + json.dumps(summary))
        return status

    async def _run_exec(self) -> int:
        if self._request.request_id:
            return await self._run_request(self._request.request_id)
        if not self._argv:
            self._error(f"exec {self._target.name}: give the command after --")
            return 2
        command = shlex.join(self._argv)
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

    async def _judge(self, command: str) -> Decision:
        try:
            return await asyncio.to_thread(decide_shell, self._policy, command)
        except Exception as exc:  # fail closed
            return Decision(action="deny", rule=None, reason=f"policy error: {exc}")

    async def _run_request(self, request_id: str) -> int:
        """`exec --request ID [-- CMD]`: the approved command, once; CMD must be that command."""
        given = shlex.join(self._argv) if self._argv else None
        checked = await self._run_approved_request(request_id, given, say=self._error)
        if isinstance(checked, int):
            return checked
        record, command = checked
        decision = await self._judge(command)
        if decision.action == "deny":  # the policy changed since: deny still wins
            outcome = await self._hold(command, decision, say=self._error)
            return outcome.exit_status
        claimed = await self._claim_request(record, command, say=self._error)
        if isinstance(claimed, int):
            return claimed
        self._approver = claimed
        return await self._run(command, decision)

    async def _run(self, command: str, decision: Decision) -> int:
        started = time.time()
        try:
            recorder = self._open_recording(
                width=80,
                height=24,
                started=started,
                command=command,
                title=f"{self._ctx.user}@{self._target.name} exec",
            )
        except RecordingError as exc:
            self._error(f"session refused: the recording cannot be written ({exc})")
            return 1
        await self._begin(
            kind="exec",
            started=started,
            command=command,
            details={"command": command, "kind": "exec"},
        )
        status = 1
        try:  # from the session's start on, it ends with a session.end whatever happens
            await self._audit_decision(
                "command",
                "command",
                command,
                decision,
                approver=self._approver,
                standing=self._standing,
            )
            recorder.mark(f"command: {command}")
            status = await self._run_command(command)
            return status
        except (TargetError, CredentialError) as exc:
            self._error(str(exc))
            return (status := 1)
        finally:
            await self._end(state="closed", status=status)

    async def _run_command(self, command: str) -> int:
        async with self._unit.run_command(self._target, command) as child:
            await asyncio.gather(self._relay(child.stdout, False), self._relay(child.stderr, True))
            return await child.wait()

    async def _relay(self, stream: ByteReader, to_stderr: bool) -> None:
        writer = self._process.stderr if to_stderr else self._process.stdout
        while True:
            data = await stream.read(65536)
            if not data:
                return
            self._record_output(data)
            writer.write(data)
            with contextlib.suppress(OSError, asyncssh.Error):
                await writer.drain()
