"""The decision point for `review`: what a session asks the approval gate, and what it gets back.

A session that holds a command submits a ReviewRequest; the gate stores it (the store is the
source of truth, so a request outlives the session and the broker process), tells approvers,
and wakes the waiting session when the request changes. A request is bound by hash to its
exact text, target and requester (and, for commands typed in a session, that session), so an
approval lets nothing else run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from broker.policy.decision import Decision

RequestKind = Literal["command", "access"]
RequestState = Literal["pending", "approved", "denied", "expired", "cancelled", "executed"]
STATES: tuple[str, ...] = ("pending", "approved", "denied", "expired", "cancelled", "executed")
# States after which nothing more happens to a request.
FINAL_STATES = frozenset({"denied", "expired", "cancelled", "executed"})
DEFAULT_TIMEOUT = 15 * 60
SCREEN_LINES = 20


def command_hash(text: str, target: str, requester: str, session: str | None = None) -> str:
    """sha256 over the exact command text, the target, the requester and (in-session) the session."""
    payload = json.dumps([text, target, requester, session or ""], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ReviewRequest:
    """A command or statement a session holds until approvers decide."""

    session_id: str
    user: str
    groups: tuple[str, ...]
    target: str
    command: str
    decision: Decision
    screen: tuple[str, ...] = ()
    reason: str | None = None
    # Who decides: the rule's approvers, or the target's access_approvers for a review that
    # names none (the policy's default or on_unknown).
    approver_groups: tuple[str, ...] = ()
    # True for a command typed in a running session (terminal, SQL shell): the approval is
    # bound to that session while it is open. False for one-off commands (`exec`).
    in_session: bool = True
    # What is held: "command" (a shell command line) or "query" (SQL).
    subject: str = "command"


@dataclass(frozen=True)
class Decided:
    approver: str
    decision: Literal["approve", "deny"]
    comment: str | None
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "approver": self.approver,
            "decision": self.decision,
            "comment": self.comment,
            "at": self.at,
        }


@dataclass(frozen=True)
class ApprovalRecord:
    """One request as stored; to_dict() is the record every hoop-api method returns."""

    id: str
    kind: RequestKind
    state: RequestState
    requester: str
    requester_groups: tuple[str, ...]
    target: str
    session: str | None
    command: str | None
    command_sha256: str | None
    rule: str | None
    reason: str | None
    approver_groups: tuple[str, ...]
    approvals_needed: int
    created_at: float
    expires_at: float
    decisions: tuple[Decided, ...] = ()
    screen: tuple[str, ...] = ()
    decided_at: float | None = None
    executed_at: float | None = None
    duration: int | None = None
    grant_until: float | None = None
    requester_kind: str = "person"  # "person" or "agent"
    # The session the approval is bound to while it is open (commands typed in a session).
    bound_session: str | None = None
    subject: str = "command"
    timeout: int = DEFAULT_TIMEOUT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def approvers(self) -> list[Decided]:
        return [d for d in self.decisions if d.decision == "approve"]

    def denial(self) -> Decided | None:
        return next((d for d in self.decisions if d.decision == "deny"), None)

    @property
    def policy(self) -> dict[str, Any]:
        """What the policy decided when the request was made (action, reason, unknown, matched)."""
        policy = self.extra.get("policy")
        return policy if isinstance(policy, dict) else {}

    @property
    def cause(self) -> str | None:
        """Why the broker asks: the decision's one-line reason (None for access requests)."""
        reason = self.policy.get("reason")
        return reason if isinstance(reason, str) and reason else None

    def groups_text(self) -> str:
        return ", ".join(self.approver_groups) or "nobody"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "requester": self.requester,
            "requester_kind": self.requester_kind,
            "requester_groups": list(self.requester_groups),
            "target": self.target,
            "session": self.session,
            "command": self.command,
            "command_sha256": self.command_sha256,
            "rule": self.rule,
            "reason": self.reason,
            "cause": self.cause,
            "unknown": bool(self.policy.get("unknown", False)),
            "approver_groups": list(self.approver_groups),
            "approvals_needed": self.approvals_needed,
            "decisions": [d.to_dict() for d in self.decisions],
            "screen": list(self.screen),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "decided_at": self.decided_at,
            "executed_at": self.executed_at,
            "duration": self.duration,
            "grant_until": self.grant_until,
        }


@dataclass(frozen=True)
class StandingApproval:
    """A command pattern an approver pre-approved for a group on a target, for a period.

    A review that the pattern matches runs without waiting when the requester is in GROUP,
    is not the grantor, and the rule's approver groups include one the grantor was in when
    granting (broker.policy.standing decides what matches).
    """

    id: str
    target: str
    group: str
    subject: str  # "command" (shell targets) or "query" (SQL targets)
    pattern: str
    granted_by: str
    granted_groups: tuple[str, ...]
    comment: str
    created_at: float
    expires_at: float
    revoked_at: float | None = None
    revoked_by: str | None = None
    uses: int = 0
    last_used_at: float | None = None

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.expires_at > now else "expired"

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state(now),
            "target": self.target,
            "group": self.group,
            "subject": self.subject,
            "pattern": self.pattern,
            "granted_by": self.granted_by,
            "granted_groups": list(self.granted_groups),
            "comment": self.comment,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "revoked_by": self.revoked_by,
            "uses": self.uses,
            "last_used_at": self.last_used_at,
        }


def decided_by(record: ApprovalRecord, decision: str) -> str:
    """ "bob" or "bob: comment" for each approver who decided DECISION, joined by "; "."""
    parts = [
        f"{d.approver}: {d.comment}" if d.comment else d.approver
        for d in record.decisions
        if d.decision == decision
    ]
    return "; ".join(parts) or "nobody"


class ApprovalError(Exception):
    """A refusal from the gate: CODE is stable (the hoop-api error code), MESSAGE is one line."""

    def __init__(self, code: str, message: str, *, exit_status: int = 4) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_status = exit_status


OutcomeState = Literal[
    "approved", "denied", "expired", "cancelled", "pending", "refused", "usage", "blocked"
]


@dataclass(frozen=True)
class ReviewOutcome:
    """How a hold ended. approved: run the command now (the request is already marked executed).

    state: approved | denied (by an approver) | expired | cancelled | pending (not waited for,
    or the wait ran out; the request stays open for `--request`) | refused (could not be
    asked: no approver groups) | usage (a required reason is missing) | blocked (denied by
    policy).
    """

    approved: bool
    message: str
    approver: str | None = None
    request_id: str | None = None
    state: OutcomeState = "refused"
    comment: str | None = None
    # The standing approval that let it run without waiting (its id), if one did.
    standing: str | None = None

    @property
    def exit_status(self) -> int:
        """The exit status of a one-off command that did not run (see docs/exit-codes.md)."""
        if self.state in ("denied", "blocked"):
            return 3
        if self.state == "usage":
            return 2
        return 4


class ApprovalGate(Protocol):
    """What sessions (and the SSH front door) need from the approval workflow."""

    async def submit(self, request: ReviewRequest) -> ApprovalRecord:
        """Store a pending request, audit it and tell approvers."""
        ...

    async def can_be_decided(self, requester: str, approver_groups: Sequence[str]) -> bool:
        """True if someone other than REQUESTER who has logged in is in APPROVER_GROUPS."""
        ...

    async def get(self, request_id: str) -> ApprovalRecord | None: ...

    async def wait(self, request_id: str, seconds: float) -> ApprovalRecord:
        """The request once it changes (or is already decided), or as it is after SECONDS."""
        ...

    async def cancel(
        self, request_id: str, actor: str, groups: Sequence[str] = ()
    ) -> ApprovalRecord: ...

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
        """Mark an approved request executed, exactly once (raises ApprovalError otherwise).

        COMMAND None means "the approved text". SESSION is the session that will run it;
        IN_SESSION says it runs in the session that asked (bound by hash to that session).
        """
        ...

    async def changed(self, request_id: str, seconds: float) -> None:
        """Return when the request changes in any way, or after SECONDS."""
        ...

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
        """The checks of execute() without the state change: (record, its command hash)."""
        ...

    async def active_grant(self, user: str, target: str) -> ApprovalRecord | None:
        """The user's approved, unexpired access grant to TARGET (the one lasting longest)."""
        ...

    async def pending_access(self, user: str, target: str) -> ApprovalRecord | None: ...

    async def standing_record(self, standing_id: str) -> StandingApproval | None: ...

    async def use_standing(
        self,
        *,
        user: str,
        groups: Sequence[str],
        target: str,
        session: str,
        text: str,
        subject: str,
        approver_groups: Sequence[str],
        approvals_needed: int,
        matches: Callable[[str], bool],
    ) -> StandingApproval | None:
        """The standing approval that covers TEXT for USER, counted and audited as used; None
        when none does. MATCHES tells whether a pattern names TEXT."""
        ...
