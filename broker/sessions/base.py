"""What every kind of session shares: its id, audit events, its store record and its recording."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import asyncssh

from broker.audit.events import AuditEvent
from broker.audit.index import RecordingTap, index_for, schedule_indexing
from broker.audit.integrity import seal_recording
from broker.config import Policy, Target
from broker.durations import format_duration
from broker.policy.decision import Decision
from broker.policy.standing import matches as standing_matches
from broker.recording import Recorder, RecordingError, RecordingHeader
from broker.session_context import ConnectionContext
from broker.sessions.approvals import (
    ApprovalError,
    ApprovalGate,
    ApprovalRecord,
    OutcomeState,
    ReviewOutcome,
    ReviewRequest,
    StandingApproval,
    decided_by,
)
from broker.sessions.budgets import StatementRate
from broker.sessions.request import SessionCommand
from broker.sessions.signaling import SessionSignals

if TYPE_CHECKING:
    from broker.audit.events import AuditLog
    from broker.keys import BrokerKeys
    from broker.store import Store

log = logging.getLogger("hoop.broker.session")

EXIT_DENIED = 3
EXIT_APPROVAL = 4
# A session under an access grant is warned this many seconds before the grant ends.
GRANT_WARNING = 60
# Without a live status line, a waiting session says so at most this often.
PLAIN_STATUS_EVERY = 10.0

# Asks the user for a reason (the prompt text); None if they cancelled.
AskReason = Callable[[str], Awaitable[str | None]]


def _clock(seconds: float) -> str:
    """m:ss (h:mm:ss past an hour), rounded up so a timer never shows 0:00 while time is left."""
    total = max(0, int(-(-seconds // 1)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _PlainStatus:
    """The waiting line for clients without a live status line: at once, then every 10 s."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self._say = say
        self._last: float | None = None

    def __call__(self, text: str | None) -> None:
        if text is None:
            return
        now = time.monotonic()
        if self._last is None or now - self._last >= PLAIN_STATUS_EVERY:
            self._last = now
            self._say(text)


def new_session_id() -> str:
    return f"{time.strftime('%Y%m%d', time.gmtime())}-{uuid.uuid4().hex[:12]}"


def recording_path(data_dir: Path, session_id: str) -> Path:
    return data_dir / "recordings" / f"{session_id}.cast"


def _close_recording(recorder: Recorder) -> None:
    """Sync and close a finished recording (in a worker thread: an fsync of a large one takes
    tens of milliseconds); a failure is the recorder's own to report (`Recorder.failed`)."""
    with contextlib.suppress(RecordingError):
        recorder.close()


class SessionHost(Protocol):
    """What a session needs of the broker: where to record, sign and audit."""

    store: Store
    audit: AuditLog
    keys: BrokerKeys
    rates: StatementRate

    @property
    def data_dir(self) -> Path: ...


class SessionBase:
    """Every session is built the same way, from what the client asked for (one SSH channel)."""

    def __init__(
        self,
        broker: SessionHost,
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
        # As they apply to this actor: rules for the other kind of actor (people, agents) left
        # out, and the actor's budget's statement timeout where it is the shorter.
        for_actor = getattr(target, "for_actor", None)
        self._target = for_actor(ctx.kind) if for_actor is not None else target
        self._actor_policy = policy.for_actor(ctx.kind)
        self._gate = gate
        self._request = request
        self._reason = request.reason
        self.session_id = new_session_id()
        self._recorder: Recorder | None = None
        self._search_text: RecordingTap | None = None
        # The access grant this session runs under (targets with access = "request").
        self.grant: ApprovalRecord | None = None
        self._grant_task: asyncio.Future[None] | None = None
        self._limit_task: asyncio.Future[None] | None = None
        self._started_at: float | None = None
        self._signals_start: asyncio.Future[None] | None = None
        self._signals = SessionSignals(
            getattr(broker, "signals", None),
            ctx,
            self._target,
            self.session_id,
            policy.on_signal,
        )

    async def run(self) -> int:
        raise NotImplementedError

    def _stderr(self, text: str) -> None:
        """A line from the broker on the channel's stderr (an interactive session's)."""
        with contextlib.suppress(OSError, asyncssh.Error):
            self._process.stderr.write(f"[hoop] {text}\r\n".encode())

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
        standing: str | None = None,
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
        if standing:
            details["standing_approval"] = standing
        if failed is None:
            failed = event_type.endswith(".blocked") or event_type == "approval.requested"
        await self._audit(
            event_type,
            outcome="failure" if failed else "success",
            reason=note or decision.reason,
            details=details,
        )
        await self._signals.decided(event_type, subject, text, decision, details, approver)

    @property
    def _policy(self) -> Policy:
        """The policy in force now: for this kind of actor, and inside or outside the change
        windows its rules name (judged at each decision, so a long session crosses them)."""
        return self._signals.policy(self._actor_policy.at(time.time()))

    async def _hold(
        self,
        text: str,
        decision: Decision,
        *,
        say: Callable[[str], None],
        subject: str = "command",
        screen: tuple[str, ...] = (),
        ask_reason: AskReason | None = None,
        status: Callable[[str | None], None] | None = None,
        watch_cancel: Callable[[], Awaitable[bool]] | None = None,
        wait: float | None = None,
        in_session: bool = True,
        inform: Callable[[str], None] | None = None,
    ) -> ReviewOutcome:
        """A command or statement the policy did not simply allow: deny it, or ask for approval.

        For `review`, a request is stored and the session waits (at most WAIT seconds, 0 for
        not at all; None: until the request expires) for approvers to decide. Optional parts
        for interactive sessions: ASK_REASON asks the user for a reason where the rule wants
        one (otherwise the session's --reason is used, or the hold is refused); STATUS shows a
        live status line about once a second (None clears it; without it SAY gets a line at
        once and then every 10 s); WATCH_CANCEL returns True when the user cancels (Ctrl-C)
        and False when they left without cancelling (the request then stays pending).
        Cancelling the task that runs _hold cancels the request too. IN_SESSION binds the approval to this session (a command typed in it),
        as opposed to a one-off command that `--request ID` may run later. INFORM shows what
        is not a refusal (the request id, who approved); SAY when not given.

        Every refusal is shown with SAY and audited as `<subject>.blocked`. An approved
        outcome means "run it now": the request is already marked executed (exactly once);
        the caller audits the command when it runs.
        """
        started = time.time()
        if decision.action != "review":
            rule = f"rule {decision.rule}" if decision.rule else "policy"
            message = f"denied by {rule}: {decision.reason}"
            say(message)
            outcome = ReviewOutcome(approved=False, message=message, state="blocked")
            async with self._attempt(subject, text, outcome, standalone=not in_session, at=started):
                await self._audit_decision(f"{subject}.blocked", subject, text, decision)
            return outcome
        outcome = await self._review(
            text,
            decision,
            say=say,
            subject=subject,
            screen=screen,
            ask_reason=ask_reason,
            status=status,
            watch_cancel=watch_cancel,
            wait=wait,
            in_session=in_session,
            inform=inform or say,
        )
        if not outcome.approved:
            # Still pending (--no-wait, the wait ran out): it may run later, so it is not yet
            # a refused attempt.
            standalone = not in_session and outcome.state != "pending"
            async with self._attempt(subject, text, outcome, standalone=standalone, at=started):
                await self._audit_decision(
                    f"{subject}.blocked",
                    subject,
                    text,
                    decision,
                    # Who refused it, when a person did: the timeline shows the denier.
                    approver=outcome.approver if outcome.state == "denied" else None,
                    note=outcome.message,
                    extra={"request": outcome.request_id} if outcome.request_id else None,
                )
        return outcome

    @contextlib.asynccontextmanager
    async def _attempt(
        self, subject: str, text: str, outcome: ReviewOutcome, *, standalone: bool, at: float
    ) -> AsyncIterator[None]:
        """A one-off exec refused before it ran is still a session of its own (state
        "blocked", no recording), so that `hoopctl sessions`, `sessions show` and
        `sessions search` find it; its events go between its start and its end."""
        if not standalone:
            yield
            return
        await self._broker.store.create_session(
            session_id=self.session_id,
            user=self._ctx.user,
            target=self._target.name,
            kind="exec",
            started_at=at,
            recording=None,
            reason=self._reason,
            command=text,
        )
        await self._audit(
            "session.start", details={"reason": self._reason, "kind": "exec", subject: text}
        )
        try:
            yield
        finally:
            status = outcome.exit_status
            await self._broker.store.end_session(
                self.session_id, state="blocked", ended_at=time.time(), exit_status=status
            )
            await self._audit(
                "session.end",
                outcome="failure",
                reason=outcome.message,
                details={"exit_status": status, "state": "blocked"},
            )
            schedule_indexing(self._broker.store)

    async def _review(
        self,
        text: str,
        decision: Decision,
        *,
        say: Callable[[str], None],
        subject: str,
        screen: tuple[str, ...],
        ask_reason: AskReason | None,
        status: Callable[[str | None], None] | None,
        watch_cancel: Callable[[], Awaitable[bool]] | None,
        wait: float | None,
        in_session: bool,
        inform: Callable[[str], None],
    ) -> ReviewOutcome:
        rule = f"rule {decision.rule}" if decision.rule else "the target's policy"
        # What both people see as the cause: the rule's name, or why the broker could not
        # judge the line (`cannot tell what this SQL does: cannot parse: …`).
        why = f"rule {decision.rule}" if decision.rule else decision.reason
        groups = (
            tuple(decision.approvers)
            or (tuple(self._policy.unknown_approvers) if decision.unknown else ())
            or tuple(self._target.access_approvers)
        )
        if not groups:
            message = f"not run: approval required ({why}), but {self._nobody_approves(decision)}"
            say(message)
            return ReviewOutcome(approved=False, message=message, state="refused")
        standing = await self._standing_approval(text, decision, subject, groups)
        if standing is not None:
            message = (
                f"approved by standing approval {standing.id} "
                f"(granted by {standing.granted_by} to {standing.group})"
            )
            inform(message)
            self._mark(f"approval: {message}")
            return ReviewOutcome(
                approved=True,
                message=message,
                approver=standing.granted_by,
                state="approved",
                comment=standing.comment,
                standing=standing.id,
            )
        reason = self._reason
        if decision.reason_required:
            if ask_reason is not None:
                reason = await ask_reason(f"{rule} needs a reason; why run this? ")
                if reason is None:
                    message = "not run: cancelled"
                    say(message)
                    return ReviewOutcome(approved=False, message=message, state="cancelled")
            if not (reason or "").strip():
                message = f"not run: {rule} requires a reason: run it again with --reason TEXT"
                say(message)
                return ReviewOutcome(approved=False, message=message, state="usage")
        names = ", ".join(groups)
        no_wait = wait is not None and wait <= 0
        nobody = not no_wait and not await self._gate.can_be_decided(self._ctx.user, groups)
        # A request nobody waits for in this session is not bound to it: `--request` runs it.
        will_wait = not (no_wait or nobody)
        record = await self._gate.submit(
            ReviewRequest(
                session_id=self.session_id,
                user=self._ctx.user,
                groups=self._ctx.groups,
                target=self._target.name,
                command=text,
                decision=decision,
                screen=screen,
                reason=reason,
                approver_groups=groups,
                in_session=in_session and will_wait,
                subject=subject,
            )
        )
        self._mark(f"approval requested: {record.id}")
        later = f"once approved run: hoopctl exec {self._target.name} --request {record.id}"
        if no_wait:
            message = f"approval required ({why}): request {record.id} waits for {names}; {later}"
            say(message)
            return self._outcome(record, message, "pending")
        if nobody:
            message = (
                f"not run: approval required from {names} ({why}): request {record.id} waits, "
                f"but nobody in {names} has logged in to this broker yet; {later}"
            )
            say(message)
            return self._outcome(record, message, "pending")
        inform(f"approval required from {names} ({why}): request {record.id}")
        record = await self._await_decision(record, say, status, watch_cancel, wait)
        return await self._settle_hold(record, say, inform, text, in_session, later)

    async def _standing_approval(
        self, text: str, decision: Decision, subject: str, groups: tuple[str, ...]
    ) -> StandingApproval | None:
        """The standing approval that pre-approves TEXT here, used up once; None if none does.

        Never for input the broker could not judge (unknown), a rule that wants a reason,
        a session a signal made stricter, or SQL whose table names are no longer certain
        (a changed search path): each of those is for a person to look at."""
        state = getattr(self, "_sql_state", None)
        if (
            decision.unknown
            or decision.reason_required
            or self._signals.escalation is not None
            or (state is not None and state.names_unsure)
        ):
            return None
        dialect = self._target.type if subject == "query" else None
        return await self._gate.use_standing(
            user=self._ctx.user,
            groups=self._ctx.groups,
            target=self._target.name,
            session=self.session_id,
            text=text,
            subject=subject,
            approver_groups=groups,
            approvals_needed=max(1, decision.approvals),
            matches=lambda pattern: standing_matches(pattern, text, dialect),
        )

    def _nobody_approves(self, decision: Decision) -> str:
        """Why a review cannot be asked for, naming the config key that would change it."""
        if decision.unknown:
            where = (
                f"policies.{self._target.policy}.unknown_approvers"
                if self._target.policy
                else f"a policy with unknown_approvers for target {self._target.name}"
            )
            return f"no approver group is set for input the broker cannot judge ({where})"
        if decision.rule:
            return f"rule {decision.rule} names no approvers, so nobody can approve it"
        return (
            f"no approver group is set for it (access_approvers of target {self._target.name}), "
            "so nobody can approve it"
        )

    async def _await_decision(
        self,
        record: ApprovalRecord,
        say: Callable[[str], None],
        status: Callable[[str | None], None] | None,
        watch_cancel: Callable[[], Awaitable[bool]] | None,
        wait: float | None,
    ) -> ApprovalRecord:
        """Wait for approvers, showing a live timer; the request as it stands when done."""
        show = status or _PlainStatus(say)
        until = None if wait is None else time.monotonic() + wait
        cancel = asyncio.ensure_future(watch_cancel()) if watch_cancel else None
        try:
            while record.state == "pending":
                left = record.expires_at - time.time()
                if until is not None:
                    left = min(left, until - time.monotonic())
                if left <= 0:
                    if until is not None and time.monotonic() >= until:
                        break  # our wait is over; the request stays pending
                    record = await self._gate.wait(record.id, 0.2)  # expiry is due
                    continue
                ctrl_c = "; Ctrl-C cancels" if status is not None else ""
                show(
                    f"waiting for approval {record.id} from {record.groups_text()} "
                    f"({_clock(left)} left{ctrl_c})"
                )
                change = asyncio.ensure_future(self._gate.wait(record.id, min(1.0, left)))
                waiting: set[asyncio.Future[Any]] = {change, *([cancel] if cancel else [])}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if cancel is not None and cancel.done():
                    change.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ApprovalError):
                        await change
                    if cancel.result() is False:
                        # The user left without cancelling (a dropped connection): the
                        # request stays; once approved, `--request` runs it.
                        return await self._gate.get(record.id) or record
                    return await self._cancel_request(record)
                record = change.result()
            return record
        except asyncio.CancelledError:
            # The session is going away mid-wait: nobody is left to run it.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._cancel_request(record))
            raise
        finally:
            if cancel is not None:
                cancel.cancel()
                with contextlib.suppress(BaseException):
                    await cancel
            show(None)

    async def _cancel_request(self, record: ApprovalRecord) -> ApprovalRecord:
        try:
            return await self._gate.cancel(record.id, self._ctx.user)
        except ApprovalError:
            return await self._gate.get(record.id) or record

    async def _settle_hold(
        self,
        record: ApprovalRecord,
        say: Callable[[str], None],
        inform: Callable[[str], None],
        text: str,
        in_session: bool,
        later: str,
    ) -> ReviewOutcome:
        """Turn the request's state at the end of the wait into what the session does."""
        if record.state == "approved":
            try:
                record = await self._execute_approved(record, text, in_session=in_session)
            except ApprovalError as exc:
                say(exc.message)
                return self._outcome(record, exc.message, "refused")
            approvers = ", ".join(d.approver for d in record.approvers())
            message = f"approved by {decided_by(record, 'approve')}"
            inform(message)
            self._mark(f"approval: {record.id} approved by {approvers}")
            comment = record.approvers()[-1].comment if record.approvers() else None
            return ReviewOutcome(
                approved=True,
                message=message,
                approver=approvers,
                request_id=record.id,
                state="approved",
                comment=comment,
            )
        if record.state == "denied":
            denial = record.denial()
            message = f"denied by {decided_by(record, 'deny')}"
            say(message)
            self._mark(f"approval: {record.id} {message}")
            return ReviewOutcome(
                approved=False,
                message=message,
                approver=denial.approver if denial else None,
                request_id=record.id,
                state="denied",
                comment=denial.comment if denial else None,
            )
        if record.state == "pending":
            message = (
                f"approval required: request {record.id} waits for {record.groups_text()}; {later}"
            )
            say(message)
            return self._outcome(record, message, "pending")
        if record.state == "cancelled":
            message = f"request {record.id} cancelled; not run"
        elif record.state == "expired":
            message = f"request {record.id} expired"
        else:
            message = f"request {record.id} is {record.state}; not run"
        say(message)
        self._mark(f"approval: {message}")
        return self._outcome(record, message, record.state)  # type: ignore[arg-type]

    @staticmethod
    def _outcome(record: ApprovalRecord, message: str, state: OutcomeState) -> ReviewOutcome:
        return ReviewOutcome(approved=False, message=message, request_id=record.id, state=state)

    async def _client_cancelled(self) -> bool:
        """True when a client without a terminal cancels: it closes the channel or sends a
        signal (hoopctl's Ctrl-C while `exec` waits for an approval)."""
        process = self._process
        closed = asyncio.ensure_future(process.wait_closed())
        try:
            while not closed.done():
                try:
                    data = await process.stdin.read(65536)
                except asyncssh.SignalReceived:
                    return True
                except (asyncssh.TerminalSizeChanged, asyncssh.BreakReceived):
                    continue
                except (OSError, asyncssh.Error):
                    return True
                if not data:
                    # At EOF a signal still queues up behind it: look again now and then.
                    await asyncio.wait({closed}, timeout=0.25)
            return True
        finally:
            closed.cancel()

    def _mark(self, label: str) -> None:
        if self._recorder is not None:
            with contextlib.suppress(RecordingError):
                self._recorder.mark(label)

    async def _run_approved_request(
        self, request_id: str, command: str | None, *, say: Callable[[str], None]
    ) -> tuple[ApprovalRecord, str] | int:
        """`exec --request ID`: check the request can run here; (record, text) or an exit status.

        COMMAND None (no input) means the approved text. The request is not claimed yet:
        call _claim_request once the text has also passed the policy again.
        """
        try:
            record, _ = await self._gate.check_run(
                request_id,
                user=self._ctx.user,
                target=self._target.name,
                command=command,
                session=self.session_id,
                in_session=False,
            )
        except ApprovalError as exc:
            say(exc.message)
            return exc.exit_status
        return record, record.command or ""

    async def _execute_approved(
        self, record: ApprovalRecord, text: str, *, in_session: bool
    ) -> ApprovalRecord:
        """Mark an approved request executed for this user, target and session (exactly once;
        raises ApprovalError when anything about it does not match)."""
        return await self._gate.execute(
            record.id,
            user=self._ctx.user,
            target=self._target.name,
            command=text,
            session=self.session_id,
            in_session=in_session,
        )

    async def _claim_request(
        self, record: ApprovalRecord, text: str, *, say: Callable[[str], None]
    ) -> str | int:
        """Mark REQUEST executed (exactly once); the approvers' names, or an exit status."""
        try:
            record = await self._execute_approved(record, text, in_session=False)
        except ApprovalError as exc:
            say(exc.message)
            return exc.exit_status
        return ", ".join(d.approver for d in record.approvers())

    # -- time-boxed access ----------------------------------------------------------------
    def _watch_grant(self, *, warn: Callable[[str], None], end: Callable[[str], None]) -> None:
        """Warn the session a minute before its access grant ends, and end it then."""
        if self.grant is not None and self._grant_task is None:
            self._grant_task = asyncio.ensure_future(self._grant_loop(warn, end))

    async def _grant_loop(self, warn: Callable[[str], None], end: Callable[[str], None]) -> None:
        try:
            await self._follow_grant(warn, end)
        except Exception:  # fail closed: a grant that cannot be checked ends the session
            log.exception("session %s: checking the access grant failed", self.session_id)
            end(
                f"your access grant to {self._target.name} cannot be checked; this session is closed"
            )

    async def _follow_grant(self, warn: Callable[[str], None], end: Callable[[str], None]) -> None:
        assert self.grant is not None
        grant: ApprovalRecord | None = self.grant
        warned: str | None = None
        name = self._target.name
        while True:
            current = await self._gate.get(grant.id) if grant is not None else None
            now = time.time()
            if current is None or current.state != "approved" or (current.grant_until or 0) <= now:
                # A newer grant (asked for while this session ran) takes over.
                grant = await self._gate.active_grant(self._ctx.user, name)
                if grant is not None:
                    self.grant = grant
                    await self._audit(
                        "session.grant", details={"grant": grant.id, "until": grant.grant_until}
                    )
                    continue
                why = "was cancelled" if current and current.state == "cancelled" else "ended"
                end(f"your access grant to {name} {why}; this session is closed")
                return
            left = (current.grant_until or now) - now
            if left <= GRANT_WARNING and warned != current.id:
                warned = current.id
                warn(
                    f"your access grant to {name} ends in {_clock(left)}; this session will be "
                    f"closed then (more time: hoopctl request {name} --for 1h --reason ...)"
                )
            pause = left if warned == current.id else left - GRANT_WARNING
            await self._gate.changed(current.id, max(0.05, pause))

    async def _audit(self, event_type: str, **fields: object) -> None:
        await self._broker.audit.emit(
            AuditEvent(
                type=event_type,
                actor=self._ctx.user,
                groups=self._ctx.groups,
                target=self._target.name,
                session=self.session_id,
                remote=self._ctx.remote,
                actor_kind=self._ctx.kind,
                client=self._request.client_info,
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
        # The session's search text is gathered as it is recorded, not read back after it.
        self._recorder.tap = self._search_text = RecordingTap()
        return self._recorder

    async def _begin(
        self,
        *,
        kind: str,
        started: float,
        command: str | None,
        details: dict[str, object],
        on_grant_warning: Callable[[str], None] | None = None,
        on_grant_end: Callable[[str], None] | None = None,
    ) -> None:
        """Record the session's start. Under an access grant, ON_GRANT_WARNING is told a minute
        before the grant ends and ON_GRANT_END when it has ended (the session must close)."""
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
        if self.grant is not None:
            details = {**details, "grant": self.grant.id}
        await self._audit("session.start", details={"reason": self._reason, **details})
        self._started_at = started
        # Beside the session, not before it: a stop that cancels the session right after its
        # start must still find it in the code that writes its session.end.
        self._signals_start = asyncio.ensure_future(
            self._signals.started(on_grant_warning, on_grant_end)
        )
        if on_grant_end is None:
            return
        warn = on_grant_warning or (lambda _text: None)
        if self.grant is not None:
            self._watch_grant(warn=warn, end=on_grant_end)
        session_max = getattr(self._target, "session_max", None)
        if session_max:
            self._limit_task = asyncio.ensure_future(
                self._session_limit(started + session_max, session_max, warn, on_grant_end)
            )

    async def _session_limit(
        self, deadline: float, limit: int, warn: Callable[[str], None], end: Callable[[str], None]
    ) -> None:
        """The target's session_max: warn a minute before the session reaches it, end it then."""
        name = self._target.name
        await asyncio.sleep(max(0.0, deadline - GRANT_WARNING - time.time()))
        left = deadline - time.time()
        if left > 0:
            warn(
                f"this session reaches the {format_duration(limit)} limit of sessions on {name} in "
                f"{_clock(left)}; it will be closed then"
            )
            await asyncio.sleep(left)
        await self._audit(
            "session.limit",
            outcome="failure",
            reason=f"the session reached the {format_duration(limit)} limit of sessions on {name}",
            details={"session_max": limit},
        )
        limit_text = format_duration(limit)
        end(f"this session reached the {limit_text} limit of sessions on {name}; it is closed")

    async def _start(
        self,
        *,
        kind: str,
        started: float,
        command: str | None,
        width: int,
        height: int,
        term: str,
        title: str,
        details: dict[str, object],
        note: str = "",
        on_grant_warning: Callable[[str], None] | None = None,
        on_grant_end: Callable[[str], None] | None = None,
    ) -> Recorder | None:
        """Start an interactive session: open its recording, record its start (``_begin``)
        and tell the user, NOTE after the target's name. None when the recording cannot be
        written: the session is refused (said and audited) and must not run."""
        try:
            recorder = self._open_recording(
                width=width,
                height=height,
                started=started,
                term=term,
                command=command,
                title=title,
            )
        except RecordingError as exc:
            self._stderr(f"session refused: the recording cannot be written ({exc})")
            await self._audit("session.rejected", outcome="failure", reason=str(exc))
            return None
        await self._begin(
            kind=kind,
            started=started,
            command=command,
            details=details,
            on_grant_warning=on_grant_warning,
            on_grant_end=on_grant_end,
        )
        self._stderr(f"session {self.session_id} started on {self._target.name}{note}")
        return recorder

    async def _finish(self, *, state: str, status: int, reason: str | None) -> None:
        """End an interactive session (``_end``) and tell the user."""
        await self._end(state=state, status=status, reason=reason)
        self._stderr(f"session {self.session_id} ended (exit {status})")

    async def _end(self, *, state: str, status: int, reason: str | None = None) -> None:
        if getattr(self._broker, "stopping", False) and state == "closed":
            # Ended by the broker's shutdown (its channel closed under it), not by the user.
            state, reason = "interrupted", reason or "the broker stopped during the session"
        if self._limit_task is not None:
            self._limit_task.cancel()
            with contextlib.suppress(BaseException):
                await self._limit_task
        if self._grant_task is not None:
            self._grant_task.cancel()
            with contextlib.suppress(BaseException):
                await self._grant_task
        if self._signals_start is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._signals_start), 5)
        if self._started_at is not None:
            await self._signals.ended(time.time() - self._started_at)
        details: dict[str, object] = {"exit_status": status, "state": state}
        if self._recorder is not None:
            with contextlib.suppress(RecordingError):
                self._recorder.finish()
            # The broker signs the finished recording (its digest also goes into the chain)
            # while the file is synced to disk and closed: its content is final already.
            signature, _ = await asyncio.gather(
                seal_recording(self._broker.keys, self._recorder.path, self.session_id),
                asyncio.to_thread(_close_recording, self._recorder),
            )
            if signature is not None:
                details["recording_sha256"] = signature["sha256"]
        await self._broker.store.end_session(
            self.session_id, state=state, ended_at=time.time(), exit_status=status
        )
        await self._audit(
            "session.end",
            outcome="success" if state == "closed" else "failure",
            reason=reason,
            details=details,
        )
        if self._search_text is not None:
            index_for(self._broker.store).gathered(self.session_id, self._search_text.text())
        schedule_indexing(self._broker.store)
