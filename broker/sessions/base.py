"""What every kind of session shares: its id, audit events, its store record and its recording."""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from broker.audit import AuditEvent
from broker.config import Target
from broker.recording import Recorder, RecordingError, RecordingHeader
from broker.session_context import ConnectionContext

if TYPE_CHECKING:
    from broker.app import Broker

EXIT_DENIED = 3
EXIT_APPROVAL = 4


def new_session_id() -> str:
    return f"{time.strftime('%Y%m%d', time.gmtime())}-{uuid.uuid4().hex[:12]}"


def recording_path(data_dir: Path, session_id: str) -> Path:
    return data_dir / "recordings" / f"{session_id}.cast"


class SessionBase:
    def __init__(
        self, broker: Broker, ctx: ConnectionContext, target: Target, *, reason: str | None
    ) -> None:
        self._broker = broker
        self._ctx = ctx
        self._target = target
        self._reason = reason
        self.session_id = new_session_id()
        self._recorder: Recorder | None = None

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
