"""The decision point for `review`: a session asks a gate whether a held command may run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from broker.policy.decision import Decision


@dataclass(frozen=True)
class ReviewRequest:
    session_id: str
    user: str
    groups: tuple[str, ...]
    target: str
    command: str
    decision: Decision
    screen: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReviewOutcome:
    approved: bool
    message: str
    approver: str | None = None


class ApprovalGate(Protocol):
    async def review(self, request: ReviewRequest) -> ReviewOutcome: ...


class NoApprovalWorkflow:
    """Until the approval workflow exists, `review` means the command does not run."""

    async def review(self, request: ReviewRequest) -> ReviewOutcome:
        approvers = ", ".join(request.decision.approvers) or "an approver"
        rule = request.decision.rule or "the target's policy"
        return ReviewOutcome(
            approved=False,
            message=f"approval required from {approvers} ({rule}); "
            "approvals are not enabled on this broker, so the command was not run",
        )
