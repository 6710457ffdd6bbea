"""The approval workflow: requests, decisions, expiry, execution and access grants.

Rules kept here, for every way in (sessions, hoop-api, the expiry sweeper):
- separation of duties: the requester never decides their own request; only members of the
  approver groups decide; each approver decides once;
- `approvals_needed` approvals approve; any deny denies;
- a pending request expires at `expires_at` (expired = denied for the requester) and no
  decision is taken after that; an approved command may run once until its new `expires_at`
  (the rule's timeout again, counted from the approval); a grant lasts until `grant_until`;
- each step is an audit event and a push to waiting sessions and watching approvers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from broker.approvals.notifier import Change, Notifier, Subscription
from broker.approvals.standing import StandingApprovals
from broker.approvals.store import CHANGES_KEPT, AlreadyDecided, ApprovalStore
from broker.audit.events import AuditEvent, AuditLog
from broker.database import Listener
from broker.sessions.approvals import (
    DEFAULT_TIMEOUT,
    SCREEN_LINES,
    ApprovalError,
    ApprovalRecord,
    ReviewRequest,
    StandingApproval,
    command_hash,
    decided_by,
)

if TYPE_CHECKING:
    from broker.config import BrokerConfig
    from broker.store import Store

log = logging.getLogger("hoop.broker.approvals")

# The sweeper looks at least this often, and sooner when a request is due.
SWEEP_EVERY = 30.0
# With workers sharing the store, each reads the others' changes from the feed this often.
FEED_POLL = 0.05
FEED_FALLBACK = 1.0  # PostgreSQL: the feed is read at each NOTIFY, and at least this often
CHANGES_CHANNEL = "hoop_approvals"
FEED_TRIM_EVERY = 60.0
PUBLISHED_KEPT = 10_000
MAX_COMMENT = 2000
MAX_REASON = 2000
MAX_SCREEN_LINE = 512
OVERRIDE_WINDOW = 86400.0  # a denial this recent, then an approval, is an override


def when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


class ApprovalHost(Protocol):
    """What the approval service needs of the broker that runs it."""

    config: BrokerConfig
    store: Store
    audit: AuditLog


class ApprovalService:
    """The broker's ApprovalGate, and what the hoop-api approval methods call."""

    def __init__(self, broker: ApprovalHost, *, shared: bool = False) -> None:
        self._broker = broker
        self.store = ApprovalStore(broker.store.db)
        self.notifier = Notifier()
        self._wake = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        # SHARED: other processes (workers) change requests in the same store; their changes
        # come in through the store's change feed.
        self._shared = shared
        self._feed: asyncio.Task[None] | None = None
        # What was last pushed of each request, so a change is pushed once however it came.
        self._published: dict[str, tuple[object, ...]] = {}
        self.standing = StandingApprovals(self)

    @property
    def broker(self) -> ApprovalHost:
        return self._broker

    # -- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.create_tables()
        await self.expire_due()
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep_loop(), name="approval-expiry")
        if self._shared:
            after = await self.store.last_change()
            self._feed = loop.create_task(self._feed_loop(after), name="approval-feed")

    async def stop(self) -> None:
        for task in (self._sweeper, self._feed):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _feed_loop(self, after: int) -> None:
        """Push the changes other processes made to the store, as they appear in its feed:
        read every FEED_POLL, or, on PostgreSQL, when a change NOTIFYs (and every second)."""
        listener = self._broker.store.listener(CHANGES_CHANNEL)
        try:
            await self._follow_feed(after, listener)
        finally:
            if listener is not None:
                await listener.close()

    async def _follow_feed(self, after: int, listener: Listener | None) -> None:
        while True:
            if listener is None:
                await asyncio.sleep(FEED_POLL)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listener.changed.wait(), FEED_FALLBACK)
                listener.changed.clear()
            try:
                changes = await self.store.changes_after(after)
                for request_id in dict.fromkeys(request for _, request in changes):
                    record = await self.store.get(request_id)
                    if record is not None:
                        self._publish("updated", record)
                if changes:
                    after = changes[-1][0]
            except (ValueError, sqlite3.ProgrammingError):
                return  # the store was closed: the broker is stopping
            except Exception:
                log.exception("reading the approval change feed failed")

    async def _sweep_loop(self) -> None:
        """Expire requests when their time comes: a timer to the next expiry, re-armed on change.
        Also trims the change feed, which the store's triggers fill in every mode (only
        workers read it)."""
        trimmed = time.monotonic()
        while True:
            self._wake.clear()
            try:
                await self.expire_due()
                if time.monotonic() - trimmed > FEED_TRIM_EVERY:
                    trimmed = time.monotonic()
                    await self.store.forget_changes(time.time() - CHANGES_KEPT)
                next_at = await self.store.next_expiry()
            except (ValueError, sqlite3.ProgrammingError):
                return  # the store was closed: the broker is stopping
            except Exception:
                log.exception("approval expiry sweep failed")
                next_at = None
            delay = SWEEP_EVERY
            if next_at is not None:
                delay = min(SWEEP_EVERY, max(0.05, next_at - time.time() + 0.01))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def expire_due(self) -> None:
        for request_id, state in await self.store.due(time.time()):
            await self._expire(request_id, state)

    async def _expire(self, request_id: str, state: str) -> None:
        if not await self.store.expire(request_id, state, time.time()):
            return
        record = await self.store.get(request_id)
        assert record is not None
        await self._audit(
            "approval.expired",
            record,
            actor=None,
            outcome="failure",
            reason="the grant ended"
            if record.kind == "access" and state == "approved"
            else "approved but not run in time"
            if state == "approved"
            else "no decision in time",
            previous_state=state,
        )
        self._publish("updated", record)

    # -- reading --------------------------------------------------------------------------
    async def get(self, request_id: str) -> ApprovalRecord | None:
        """The request as stored; one whose time is up is expired first."""
        if not isinstance(request_id, str) or not request_id:
            return None
        record = await self.store.get(request_id)
        if (
            record is not None
            and record.state in ("pending", "approved")
            and record.expires_at <= time.time()
        ):
            await self._expire(record.id, record.state)
            record = await self.store.get(request_id)
        return record

    @staticmethod
    def may_decide(record: ApprovalRecord, user: str, groups: Sequence[str]) -> bool:
        return record.requester != user and bool(set(groups) & set(record.approver_groups))

    @classmethod
    def visible(cls, record: ApprovalRecord, user: str, groups: Sequence[str]) -> bool:
        return (
            record.requester == user
            or bool(set(groups) & set(record.approver_groups))
            or any(d.approver == user for d in record.decisions)
        )

    async def get_visible(
        self, request_id: str, user: str, groups: Sequence[str]
    ) -> ApprovalRecord:
        record = await self.get(request_id)
        if record is None or not self.visible(record, user, groups):
            raise ApprovalError("not_found", f"no request {request_id} that you may see")
        return record

    async def list_for(
        self,
        user: str,
        groups: Sequence[str],
        *,
        scope: str | None,
        state: str | None,
        limit: int = 500,
    ) -> list[ApprovalRecord]:
        await self.expire_due()
        return await self.store.list(
            user=user, groups=groups, scope=scope or "all", state=state, limit=limit
        )

    async def wait(self, request_id: str, seconds: float) -> ApprovalRecord:
        """The request once it changes (at once if it is no longer pending), or after SECONDS."""
        with self.notifier.subscription() as changes:
            record = await self.get(request_id)
            if record is None:
                raise ApprovalError("not_found", f"no request {request_id}", exit_status=2)
            if record.state != "pending":
                return record
            await self._next_change(changes, request_id, seconds)
        return await self.get(request_id) or record

    async def changed(self, request_id: str, seconds: float) -> None:
        """Return when REQUEST_ID changes, or after SECONDS."""
        with self.notifier.subscription() as changes:
            await self._next_change(changes, request_id, seconds)

    @staticmethod
    async def _next_change(changes: Subscription, request_id: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            change = await changes.get(left)
            if change is None or changes.overflowed or change.record.id == request_id:
                return

    async def can_be_decided(self, requester: str, approver_groups: Sequence[str]) -> bool:
        wanted = set(approver_groups)
        return any(
            user != requester and wanted & set(groups)
            for user, groups in await self.store.identities()
        )

    # -- requests -------------------------------------------------------------------------
    def kind_of(self, user: str) -> str:
        """ "person" or "agent", as USER authenticated (they are connected: they just asked)."""
        return self._broker.audit.actor_kinds.get(user, "person")

    async def submit(self, request: ReviewRequest) -> ApprovalRecord:
        decision = request.decision
        now = time.time()
        timeout = int(decision.timeout or DEFAULT_TIMEOUT)
        bound = request.session_id if request.in_session else None
        screen = [line[:MAX_SCREEN_LINE] for line in request.screen[-SCREEN_LINES:]]
        request_id = await self.store.insert(
            {
                "kind": "command",
                "state": "pending",
                "requester": request.user,
                "requester_kind": self.kind_of(request.user),
                "requester_groups": json.dumps(list(request.groups)),
                "target": request.target,
                "session": request.session_id,
                "bound_session": bound,
                "subject": request.subject,
                "command": request.command,
                "command_sha256": command_hash(
                    request.command, request.target, request.user, bound
                ),
                "rule": decision.rule,
                "policy": json.dumps(
                    {
                        "action": decision.action,
                        "reason": decision.reason,
                        "unknown": decision.unknown,
                        "matched": decision.matched,
                    }
                ),
                "reason": (request.reason or None) and request.reason[:MAX_REASON],
                "approver_groups": json.dumps(list(request.approver_groups)),
                "approvals_needed": max(1, decision.approvals),
                "screen": json.dumps(screen),
                "timeout": timeout,
                "created_at": now,
                "expires_at": now + timeout,
            }
        )
        return await self._requested(request_id)

    async def request_access(
        self,
        *,
        user: str,
        groups: Sequence[str],
        target_name: Any,
        duration: Any,
        reason: Any,
    ) -> ApprovalRecord:
        config = self._broker.config
        target = config.target(target_name) if isinstance(target_name, str) else None
        if target is None or not set(groups) & set(target.allowed_groups):
            raise ApprovalError("not_found", f"no target {target_name!r} is open to you")
        if target.access != "request":
            raise ApprovalError(
                "bad_request", f"target {target.name} needs no access request: connect to it"
            )
        if not target.access_approvers:
            raise ApprovalError(
                "bad_request",
                f"target {target.name} names no access_approvers, so nobody can grant access",
            )
        if isinstance(duration, bool) or not isinstance(duration, int | float) or duration <= 0:
            raise ApprovalError("bad_request", "duration must be a positive number of seconds")
        if not isinstance(reason, str) or not reason.strip():
            raise ApprovalError("bad_request", "a reason is required: --reason TEXT")
        now = time.time()
        request_id = await self.store.insert(
            {
                "kind": "access",
                "state": "pending",
                "requester": user,
                "requester_kind": self.kind_of(user),
                "requester_groups": json.dumps(list(groups)),
                "target": target.name,
                "session": None,
                "bound_session": None,
                "subject": "access",
                "command": None,
                "command_sha256": None,
                "rule": None,
                "policy": json.dumps({"access": "request"}),
                "reason": reason.strip()[:MAX_REASON],
                "approver_groups": json.dumps(list(target.access_approvers)),
                "approvals_needed": target.access_approvals,
                "screen": "[]",
                "timeout": DEFAULT_TIMEOUT,
                "created_at": now,
                "expires_at": now + DEFAULT_TIMEOUT,
                "duration": int(min(duration, target.access_max)),
            }
        )
        return await self._requested(request_id)

    async def _requested(self, request_id: str) -> ApprovalRecord:
        record = await self.store.get(request_id)
        assert record is not None
        policy = record.extra.get("policy", {})
        await self._audit(
            "approval.requested",
            record,
            actor=record.requester,
            groups=record.requester_groups,
            reason=policy.get("reason"),
            decision="review",
            rule=record.rule,
            unknown=policy.get("unknown", False),
            requester_reason=record.reason,
            approver_groups=list(record.approver_groups),
            approvals_needed=record.approvals_needed,
            expires_at=record.expires_at,
            **({"duration": record.duration} if record.kind == "access" else {}),
        )
        self._publish("requested", record)
        self._wake.set()
        return record

    async def decide(
        self,
        request_id: Any,
        *,
        actor: str,
        groups: Sequence[str],
        decision: Any,
        comment: Any = None,
    ) -> ApprovalRecord:
        if decision not in ("approve", "deny"):
            raise ApprovalError("bad_request", 'decision must be "approve" or "deny"')
        if comment is not None and not isinstance(comment, str):
            raise ApprovalError("bad_request", "comment must be text")
        comment = (comment or "").strip()[:MAX_COMMENT] or None
        # Someone who may not see the request learns nothing of it, not even its approvers.
        record = await self.get_visible(request_id, actor, groups)
        if record.requester == actor:
            await self.signal(
                "self-approval",
                user=actor,
                groups=groups,
                target=record.target,
                session=record.session,
                details={"what": "request", "request": record.id, "decision": decision},
            )
            raise ApprovalError("forbidden", "you cannot approve your own request")
        if not set(groups) & set(record.approver_groups):
            raise ApprovalError("forbidden", f"only members of {record.groups_text()} may decide")
        if any(d.approver == actor for d in record.decisions):
            raise ApprovalError("conflict", "you already decided on this request")
        self._refuse_unless_pending(record)
        try:
            recorded = await self.store.decide(record.id, actor, decision, comment, time.time())
        except AlreadyDecided:
            raise ApprovalError("conflict", "you already decided on this request") from None
        if not recorded:
            # It changed under us: expired, decided by others, or cancelled.
            current = await self.get(record.id)
            assert current is not None
            self._refuse_unless_pending(current)
            raise ApprovalError("conflict", f"request is {current.state}")
        current = await self.store.get(record.id)
        assert current is not None
        if current.state == "approved" and current.kind == "command":
            await self._overridden(current, actor, groups)
        approvals = len(current.approvers())
        await self._audit(
            "approval.approved" if decision == "approve" else "approval.denied",
            current,
            actor=actor,
            groups=groups,
            outcome="success" if decision == "approve" else "failure",
            decision=decision,
            comment=comment,
            approvals=f"{approvals}/{current.approvals_needed}",
        )
        self._publish("updated", current)
        self._wake.set()
        return current

    @staticmethod
    def _refuse_unless_pending(record: ApprovalRecord) -> None:
        if record.state == "expired" or (
            record.state == "pending" and record.expires_at <= time.time()
        ):
            raise ApprovalError("expired", f"request expired at {when(record.expires_at)}")
        if record.state != "pending":
            raise ApprovalError("conflict", f"request is {record.state}")

    async def cancel(
        self, request_id: str, actor: str, groups: Sequence[str] = ()
    ) -> ApprovalRecord:
        record = await self.get(request_id)
        if record is None or not self.visible(record, actor, groups):
            raise ApprovalError("not_found", f"no request {request_id} that you may see")
        if record.requester != actor:
            raise ApprovalError("forbidden", "only the requester may cancel a request")
        if not await self.store.cancel(record.id, actor, time.time()):
            current = await self.get(record.id)
            assert current is not None
            raise ApprovalError("conflict", f"request is {current.state}")
        current = await self.store.get(record.id)
        assert current is not None
        await self._audit(
            "approval.cancelled",
            current,
            actor=actor,
            outcome="failure",
            previous_state=record.state,
        )
        self._publish("updated", current)
        return current

    # -- running an approved command ------------------------------------------------------
    async def check_run(
        self,
        request_id: str,
        *,
        user: str,
        target: str,
        command: str | None,
        session: str | None,
        in_session: bool,
    ) -> tuple[ApprovalRecord, str]:
        """Every check that running REQUEST_ID makes, without running it: (record, hash)."""
        record = await self.get(request_id)
        if record is None:
            raise ApprovalError("not_found", f"no request {request_id}", exit_status=2)
        if record.requester != user:
            raise ApprovalError("forbidden", f"request {record.id} is not yours")
        if record.kind != "command":
            raise ApprovalError(
                "bad_request",
                f"request {record.id} is an access request: connect to {record.target} "
                "while the grant lasts",
            )
        self._refuse_unless_approved(record)
        if record.target != target:
            raise ApprovalError(
                "conflict", f"request {record.id} is for target {record.target}, not {target}"
            )
        if in_session:
            bound = session
        else:
            bound = record.bound_session
            if bound and await self.store.session_open(bound):
                raise ApprovalError(
                    "conflict",
                    f"request {record.id} belongs to session {bound}, which is still open; "
                    "it runs there",
                )
        text = record.command if command is None else command
        digest = command_hash(text or "", target, user, bound)
        if digest != record.command_sha256:
            raise ApprovalError(
                "conflict", f"request {record.id}: the command does not match the approved command"
            )
        return record, digest

    @staticmethod
    def _refuse_unless_approved(record: ApprovalRecord) -> None:
        state = record.state
        if state == "approved":
            return
        if state == "pending":
            raise ApprovalError(
                "conflict",
                f"request {record.id} is still pending: not approved yet by {record.groups_text()}",
            )
        if state == "denied":
            raise ApprovalError(
                "denied",
                f"request {record.id} was denied by {decided_by(record, 'deny')}",
                exit_status=3,
            )
        if state == "expired":
            raise ApprovalError(
                "expired", f"request {record.id} expired at {when(record.expires_at)}"
            )
        if state == "executed":
            raise ApprovalError(
                "conflict",
                f"request {record.id} was already executed at {when(record.executed_at or 0)}",
            )
        raise ApprovalError("conflict", f"request {record.id} is {state}")

    async def execute(
        self,
        request_id: str,
        *,
        user: str,
        target: str,
        command: str | None,
        session: str | None,
        in_session: bool,
    ) -> ApprovalRecord:
        record, digest = await self.check_run(
            request_id,
            user=user,
            target=target,
            command=command,
            session=session,
            in_session=in_session,
        )
        if not await self.store.execute(record.id, digest, time.time()):
            current = await self.get(record.id)
            assert current is not None
            self._refuse_unless_approved(current)
            raise ApprovalError("conflict", f"request {record.id} can no longer run")
        current = await self.store.get(record.id)
        assert current is not None
        await self._audit(
            "approval.executed",
            current,
            actor=user,
            session=session,
            approvers=[d.approver for d in current.approvers()],
            request_session=current.session,
        )
        self._publish("updated", current)
        return current

    # -- access grants --------------------------------------------------------------------
    async def active_grant(self, user: str, target: str) -> ApprovalRecord | None:
        return await self.store.active_grant(user, target, time.time())

    async def pending_access(self, user: str, target: str) -> ApprovalRecord | None:
        return await self.store.pending_access(user, target, time.time())

    async def access_requests(self, user: str) -> list[ApprovalRecord]:
        await self.expire_due()
        return await self.store.access_requests(user)

    # -- signals ----------------------------------------------------------------------------
    async def signal(self, name: str, **fields: Any) -> None:
        """Fire an insider-threat signal (broker.signals), if the broker watches for them."""
        signals = getattr(self._broker, "signals", None)
        if signals is None or not signals.settings.enabled:
            return
        try:
            await signals.fire(name, **fields)
        except Exception:
            log.exception("signal %s could not be recorded", name)

    async def _overridden(self, record: ApprovalRecord, actor: str, groups: Sequence[str]) -> None:
        """RECORD was just approved: was the same command, asked by the same person, denied
        by another approver lately (asking again until someone says yes)?"""
        earlier = await self.store.denied_like(record, since=time.time() - OVERRIDE_WINDOW)
        for denied in earlier:
            deniers = [d.approver for d in denied.decisions if d.decision == "deny"]
            if deniers and actor not in deniers:
                await self.signal(
                    "approval-overridden",
                    user=record.requester,
                    groups=record.requester_groups,
                    target=record.target,
                    session=record.session,
                    details={
                        "request": record.id,
                        "denied_request": denied.id,
                        "denied_by": ", ".join(deniers),
                        "approved_by": actor,
                        "command": record.command,
                    },
                )
                return

    async def standing_record(self, standing_id: str) -> StandingApproval | None:
        return await self.store.standing(standing_id)

    async def use_standing(self, **kwargs: Any) -> StandingApproval | None:
        return await self.standing.use(**kwargs)

    # -- audit and push -------------------------------------------------------------------
    def _publish(self, kind: str, record: ApprovalRecord) -> None:
        seen = (
            record.state,
            len(record.decisions),
            record.expires_at,
            record.decided_at,
            record.executed_at,
            record.grant_until,
        )
        known = self._published.get(record.id)
        if known == seen:
            return  # already pushed (by this process, or from the feed)
        if known is None and record.state == "pending" and not record.decisions:
            kind = "requested"  # first heard of through the feed: another worker's request
        self._published.pop(record.id, None)  # re-inserted last: the oldest are dropped first
        self._published[record.id] = seen
        if len(self._published) > PUBLISHED_KEPT:
            del self._published[next(iter(self._published))]
        self.notifier.publish(Change(kind, record))  # type: ignore[arg-type]

    async def _audit(
        self,
        event_type: str,
        record: ApprovalRecord,
        *,
        actor: str | None,
        groups: Sequence[str] = (),
        outcome: str = "success",
        reason: str | None = None,
        session: str | None = None,
        decision: str | None = None,
        comment: str | None = None,
        **details: Any,
    ) -> None:
        await self._broker.audit.emit(
            AuditEvent(
                type=event_type,
                actor=actor,
                groups=tuple(groups),
                target=record.target,
                session=session or record.session,
                outcome=outcome,
                reason=reason,
                details={
                    "request": record.id,
                    "kind": record.kind,
                    "target": record.target,
                    "command": record.command,
                    "subject": record.subject,
                    "decision": decision,
                    "comment": comment,
                    "state": record.state,
                    "requester": record.requester,
                    **details,
                },
            )
        )
