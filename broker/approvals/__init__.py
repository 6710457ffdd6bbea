"""Just-in-time approval: review requests, decisions, time-boxed access grants."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.sessions.approvals import ApprovalGate, NoApprovalWorkflow

if TYPE_CHECKING:
    from broker.app import Broker


async def start_approvals(broker: Broker) -> ApprovalGate:
    """The broker's approval gate, started with the broker (its state lives in the store)."""
    return NoApprovalWorkflow()
