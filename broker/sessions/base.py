"""What every kind of session shares: its id, audit events, its store record and its recording."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh

from broker.audit import AuditEvent
from broker.config import Policy, Target
from broker.policy.decision import Decision
from broker.recording import Recorder, RecordingError, RecordingHeader
from broker.session_context import ConnectionContext
from broker.sessions.approvals import ApprovalGate, ReviewOutcome, ReviewRequest
from broker.sessions.request import SessionCommand

if TYPE_CHECKING:
    from broker.app import Broker

EXIT_DENIED = 3
EXIT_APPROVAL = 4


def new_session_id() -> str:
    return f"{time.strftime('%Y%m%d', time.gmtime())}-{uuid.uuid4().hex[:12]}"


def recording_path(data_dir: Path, session_id: str) -> Path:
    return data_dir / "recordings" / f"{session_id}.cast"


class SessionBase:
    """Every session is built the same way, from what the client asked for (one SSH channel)."""

    def __init__(
        self,
        broker: Broker,
        ctx: ConnectionContext,
        process: asyncssh.SSHServerProcess[bytes],
        target: Target,
        policy: Policy,
        gate: ApprovalGate,
        request: SessionCommand,
    ) -> None:
        self._broker = broker
        self._ctx = ctx
        self._process = process
        self._target = target
        self._policy = policy
        self._gate = gate
        self._request = request
        self._reason = request.reason
        self.session_id = new_session_id()
        self._recorder: Recorder | None = None

    async def run(self) -> int:
        raise NotImplementedError

    def _record_output(self, data: bytes) -> None:
        """Record output sent without a PTY as a terminal would have shown it."""
        if self._recorder is not None:
            self._recorder.output(data.replace(b"\n", b"\r\n"))

    async def _audit_decision(
        self,
        event_type: str,
        subject: str,
        text: str,
        decision: Decision,
        *,
        approver: str | None = None,
        note: str | None = None,
        failed: bool | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        """An audit event about one command or statement (SUBJECT: "command" or "query")."""
        details: dict[str, object] = {
            subject: text,
            "decision": decision.action,
            "rule": decision.rule,
            "unknown": decision.unknown,
            **(extra or {}),
        }
        if approver:
            details["approver"] = approver
        if failed is None:
            failed = event_type.endswith(".blocked") or event_type == "approval.requested"
        await self._audit(
            event_type,
            outcome="failure" if failed else "success",
            reason=note or decision.reason,
            details=details,
        )

    async def _hold(
        self,
        text: str,
        decision: Decision,
        *,
        say: Callable[[str], None],
        subject: str = "command",
        screen: tuple[str, ...] = (),
    ) -> ReviewOutcome:
        """A command or statement the policy did not simply allow: deny it, or ask the gate.

        The refusal is shown with SAY and audited as `<subject>.blocked`; an approval is
        returned for the caller to audit when the command actually runs.
        """
        if decision.action == "review":
            await self._audit_decision("approval.requested", subject, text, decision)
            outcome = await self._gate.review(
                ReviewRequest(
                    session_id=self.session_id,
                    user=self._ctx.user,
                    groups=self._ctx.groups,
                    target=self._target.name,
                    command=text,
                    decision=decision,
                    screen=screen,
                )
            )
            if not outcome.approved:
                say(f"not run: {outcome.message}")
                await self._audit_decision(
                    f"{subject}.blocked", subject, text, decision, note=outcome.message
                )
            return outcome
        rule = f"rule {decision.rule}" if decision.rule else "policy"
        message = f"denied by {rule}: {decision.reason}"
        say(message)
        await self._audit_decision(f"{subject}.blocked", subject, text, decision)
        return ReviewOutcome(approved=False, message=message)

    async def _audit(self, event_type: str, **fields: object) -> None:
        await self._broker.audit.emit(
            AuditEvent(
                type=event_type,
                actor=self._ctx.user,
                groups=self._ctx.groups,
                target=self._target.name,
                session=self.session_id,
                remote=self._ctx.remote,
                **fields,  # type: ignore[arg-type]
            )
        )

    def _open_recording(
        self,
        *,
        width: int,
        height: int,
        started: float,
        command: str | None,
        title: str,
        term: str = "xterm-256color",
    ) -> Recorder:
        """Create the session's recording (raises RecordingError: the session must not start)."""
        self._recorder = Recorder(
            recording_path(self._broker.data_dir, self.session_id),
            RecordingHeader(
                session_id=self.session_id,
                user=self._ctx.user,
                target=self._target.name,
                width=width,
                height=height,
                started_at=started,
                term=term,
                command=command,
                title=title,
            ),
            strict=self._target.recording == "strict",
        )
        return self._recorder

    async def _begin(
        self, *, kind: str, started: float, command: str | None, details: dict[str, object]
    ) -> None:
        await self._broker.store.create_session(
            session_id=self.session_id,
            user=self._ctx.user,
            target=self._target.name,
            kind=kind,
            started_at=started,
            recording=str(recording_path(self._broker.data_dir, self.session_id)),
            reason=self._reason,
            command=command,
        )
        await self._audit("session.start", details={"reason": self._reason, **details})

    async def _end(self, *, state: str, status: int, reason: str | None = None) -> None:
        if self._recorder is not None:
            with contextlib.suppress(RecordingError):
                self._recorder.close()
        await self._broker.store.end_session(
            self.session_id, state=state, ended_at=time.time(), exit_status=status
        )
        await self._audit(
            "session.end",
            outcome="success" if state == "closed" else "failure",
            reason=reason,
            details={"exit_status": status, "state": state},
        )
