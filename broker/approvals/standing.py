"""Standing approvals: an approver pre-approves one command pattern for a group and a period.

Rules kept here, for every way in:
- only someone who may approve reviews on the target grants one (a member of a review rule's
  approvers, the policy's unknown_approvers or the target's access_approvers), and never a
  person or agent who belongs to the group it is for (separation of duties); agents grant
  none;
- it covers a review only when the requester is in its group, is not its grantor, the
  grantor is not in the group by now either (their latest login), the rule needs a single
  approval, and one of the groups the grantor was in when granting is among the rule's
  approvers;
- what matches is decided on exactly what will run (broker.policy.standing);
- each grant, revocation, refusal and use is an audit event; the use names the standing
  approval, and the store counts it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from broker.audit.events import AuditEvent
from broker.policy.standing import pattern_problem
from broker.protocols import sql_dialects
from broker.sessions.approvals import ApprovalError, StandingApproval

if TYPE_CHECKING:
    from broker.approvals.service import ApprovalService
    from broker.config import Target

MIN_PERIOD = 60
MAX_PERIOD = 90 * 86400
MAX_COMMENT = 2000


def dialect_of(target: Target) -> str | None:
    """The SQL dialect a target's statements are judged in; None for shell targets."""
    return target.type if target.type in sql_dialects() else None


class StandingApprovals:
    def __init__(self, service: ApprovalService) -> None:
        self._service = service

    @property
    def _store(self) -> Any:
        return self._service.store

    def _approver_groups(self, target: Target) -> set[str]:
        """Every group that may approve a review on TARGET."""
        config = self._service.broker.config
        policy = config.policy_for(target)
        groups = {g for rule in policy.rules if rule.action == "review" for g in rule.approvers}
        groups |= set(policy.unknown_approvers) | set(target.access_approvers)
        return groups

    async def grant(
        self,
        *,
        actor: str,
        groups: Sequence[str],
        pattern: Any,
        target_name: Any,
        group: Any,
        duration: Any,
        comment: Any,
    ) -> StandingApproval:
        config = self._service.broker.config
        target = config.target(target_name) if isinstance(target_name, str) else None
        if target is None or not (
            set(groups) & (set(target.allowed_groups) | self._approver_groups(target))
        ):
            raise ApprovalError("not_found", f"no target {target_name!r} is open to you")
        if not isinstance(pattern, str):
            raise ApprovalError("bad_request", "pattern must be text")
        if not isinstance(group, str) or not group.strip():
            raise ApprovalError("bad_request", "a group is required: --group GROUP")
        if isinstance(duration, bool) or not isinstance(duration, int | float):
            raise ApprovalError("bad_request", "duration must be a number of seconds")
        if not MIN_PERIOD <= duration <= MAX_PERIOD:
            raise ApprovalError(
                "bad_request", "a standing approval lasts from 1 minute to 90 days (--for)"
            )
        if not isinstance(comment, str) or not comment.strip():
            raise ApprovalError("bad_request", "a comment is required: --comment TEXT")
        problem = pattern_problem(pattern, dialect_of(target))
        if problem is not None:
            raise ApprovalError("bad_request", f"bad pattern: {problem}")
        refusal = self._refusal(actor, groups, target, group)
        if refusal is not None:
            await self._audit_refusal(actor, groups, target.name, group, pattern, refusal)
            if group in groups:
                await self._service.signal(
                    "self-approval",
                    user=actor,
                    groups=groups,
                    target=target.name,
                    session=None,
                    details={"what": "standing approval", "group": group, "pattern": pattern},
                )
            raise ApprovalError("forbidden", refusal, exit_status=3)
        now = time.time()
        standing_id = await self._store.insert_standing(
            {
                "target": target.name,
                "grp": group,
                "subject": "query" if dialect_of(target) else "command",
                "pattern": pattern.strip(),
                "granted_by": actor,
                "granted_groups": json.dumps(list(groups)),
                "comment": comment.strip()[:MAX_COMMENT],
                "created_at": now,
                "expires_at": now + int(duration),
            }
        )
        standing = await self._store.standing(standing_id)
        assert standing is not None
        await self._audit("approval.standing.granted", standing, actor=actor, groups=groups)
        return standing

    def _refusal(self, actor: str, groups: Sequence[str], target: Target, group: str) -> str | None:
        if self._service.kind_of(actor) == "agent":
            return "agents may not grant standing approvals"
        if group in groups:
            return (
                f"you may not grant a standing approval to {group}: you are a member of it "
                "(separation of duties)"
            )
        approvers = self._approver_groups(target)
        if not set(groups) & approvers:
            names = ", ".join(sorted(approvers)) or "nobody"
            return f"only members of {names} may grant standing approvals on {target.name}"
        return None

    async def _audit_refusal(
        self,
        actor: str,
        groups: Sequence[str],
        target: str,
        group: str,
        pattern: str,
        refusal: str,
    ) -> None:
        await self._service.broker.audit.emit(
            AuditEvent(
                type="approval.standing.refused",
                actor=actor,
                groups=tuple(groups),
                target=target,
                outcome="failure",
                reason=refusal,
                details={"target": target, "group": group, "pattern": pattern},
            )
        )

    async def revoke(
        self, standing_id: Any, *, actor: str, groups: Sequence[str]
    ) -> StandingApproval:
        standing = await self._visible(standing_id, actor, groups)
        config = self._service.broker.config
        target = config.target(standing.target)
        may = standing.granted_by == actor or (
            target is not None and bool(set(groups) & self._approver_groups(target))
        )
        if not may:
            raise ApprovalError(
                "forbidden",
                f"only its grantor or an approver on {standing.target} may revoke {standing.id}",
                exit_status=3,
            )
        now = time.time()
        if not await self._store.revoke_standing(standing.id, actor, now):
            current = await self._store.standing(standing.id)
            state = current.state(now) if current else "gone"
            raise ApprovalError("conflict", f"standing approval {standing.id} is {state}")
        revoked = await self._store.standing(standing.id)
        assert revoked is not None
        await self._audit("approval.standing.revoked", revoked, actor=actor, groups=groups)
        return revoked

    def _may_see(self, standing: StandingApproval, actor: str, groups: Sequence[str]) -> bool:
        target = self._service.broker.config.target(standing.target)
        return (
            standing.granted_by == actor
            or standing.group in groups
            or (target is not None and bool(set(groups) & self._approver_groups(target)))
        )

    async def _visible(
        self, standing_id: Any, actor: str, groups: Sequence[str]
    ) -> StandingApproval:
        if not isinstance(standing_id, str) or not standing_id:
            raise ApprovalError("bad_request", "id must be a standing approval id")
        standing = await self._store.standing(standing_id)
        if standing is None or not self._may_see(standing, actor, groups):
            raise ApprovalError(
                "not_found", f"no standing approval {standing_id} that you may see", exit_status=2
            )
        return standing

    async def listing(
        self, *, actor: str, groups: Sequence[str], include_ended: bool
    ) -> list[StandingApproval]:
        now = time.time()
        found = await self._store.standing_list(active_at=None if include_ended else now)
        return [s for s in found if self._may_see(s, actor, groups)]

    async def use(
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
        if approvals_needed > 1:
            return None  # a rule that wants two people is not pre-approved by one
        now = time.time()
        wanted = set(approver_groups)
        for standing in await self._store.standing_list(target=target, active_at=now):
            if (
                standing.subject != subject
                or standing.group not in groups
                or standing.granted_by == user
                or not wanted & set(standing.granted_groups)
                or not matches(standing.pattern)
            ):
                continue
            if standing.group in await self._store.groups_of(standing.granted_by):
                continue  # the grantor joined the group since: it would be a self-approval
            if not await self._store.use_standing(standing.id, now):
                continue  # revoked or expired just now
            await self._audit(
                "approval.standing.used",
                standing,
                actor=user,
                groups=groups,
                session=session,
                **{subject: text},
            )
            return standing
        return None

    async def _audit(
        self,
        event_type: str,
        standing: StandingApproval,
        *,
        actor: str,
        groups: Sequence[str],
        session: str | None = None,
        **details: Any,
    ) -> None:
        await self._service.broker.audit.emit(
            AuditEvent(
                type=event_type,
                actor=actor,
                groups=tuple(groups),
                target=standing.target,
                session=session,
                outcome="success",
                reason=standing.comment,
                details={
                    "standing_approval": standing.id,
                    "target": standing.target,
                    "group": standing.group,
                    "pattern": standing.pattern,
                    "granted_by": standing.granted_by,
                    "expires_at": standing.expires_at,
                    **({"revoked_by": standing.revoked_by} if standing.revoked_by else {}),
                    **details,
                },
            )
        )
