"""Just-in-time approval: review requests, decisions, time-boxed access grants.

The state lives in the broker's store (tables of this package's own); an in-process notifier
pushes every change to waiting sessions and watching approvers; a sweeper expires requests
on time, also those left from before a restart.
"""

from __future__ import annotations

from broker.approvals.service import ApprovalHost, ApprovalService

__all__ = ["ApprovalHost", "ApprovalService", "start_approvals"]


async def start_approvals(broker: ApprovalHost, *, shared: bool = False) -> ApprovalService:
    """The broker's approval gate, started with the broker (its state lives in the store).
    SHARED: other processes (workers) change the same store; follow their changes."""
    service = ApprovalService(broker, shared=shared)
    await service.start()
    return service
