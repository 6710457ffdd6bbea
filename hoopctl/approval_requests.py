"""Approval requests as the client sees them: the typed record of approvals.* answers
(docs/approvals-contract.md), the errors a decision can meet and their exit codes, and the
one-line summary of a decision. Shared by the approval commands and the live queue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broker.durations import format_duration
from hoopctl.errors import (
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_USAGE,
    ApiCallError,
    HoopError,
    UsageError,
)
from hoopctl.escape import escape

# ---------------------------------------------------------------------------
# The request record (docs/approvals-contract.md), as a typed model
# ---------------------------------------------------------------------------

STATES = ("pending", "approved", "denied", "expired", "cancelled", "executed")
FINAL_STATES = frozenset(STATES) - {"pending"}


def timestamp(value: Any) -> float | None:
    """A time from the broker (epoch seconds, or ISO 8601 text) as epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def clock(seconds: float) -> str:
    """Time left as a countdown: 4:59, 1:02:03."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def local_time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return f"{datetime.fromtimestamp(epoch, tz=UTC).astimezone():%Y-%m-%d %H:%M:%S %Z}"


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list | tuple):
        return tuple(str(item) for item in value)
    if value is None:
        return ()
    return (str(value),)


@dataclass(frozen=True)
class Decision:
    approver: str
    decision: str  # "approve" | "deny"
    comment: str
    at: float | None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Decision:
        return cls(
            approver=str(record.get("approver") or ""),
            decision=str(record.get("decision") or ""),
            comment=str(record.get("comment") or ""),
            at=timestamp(record.get("at")),
        )


@dataclass(frozen=True)
class ApprovalRequest:
    """One command or access request, as every approvals.* method returns it."""

    id: str
    kind: str
    state: str
    requester: str
    requester_groups: tuple[str, ...]
    target: str
    session: str | None
    command: str | None
    command_sha256: str | None
    rule: str | None
    reason: str | None
    # Why the broker asks: its one-line reason ("cannot tell what this SQL does: cannot parse:
    # …"); what approvers see in place of a rule when no rule decided.
    cause: str | None
    unknown: bool
    approver_groups: tuple[str, ...]
    approvals_needed: int
    decisions: tuple[Decision, ...]
    screen: tuple[str, ...]
    created_at: float | None
    expires_at: float | None
    decided_at: float | None
    executed_at: float | None
    duration: int | None
    grant_until: float | None
    raw: dict[str, Any]
    requester_kind: str = "person"  # "person" or "agent"

    @property
    def requester_label(self) -> str:
        """The requester as approvers see them: an agent is marked as one."""
        return f"{self.requester} [agent]" if self.requester_kind == "agent" else self.requester

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ApprovalRequest:
        def text(key: str) -> str | None:
            value = record.get(key)
            return None if value is None else str(value)

        duration = record.get("duration")
        return cls(
            id=str(record.get("id") or ""),
            kind=str(record.get("kind") or "command"),
            state=str(record.get("state") or "pending"),
            requester=str(record.get("requester") or ""),
            requester_kind="agent" if record.get("requester_kind") == "agent" else "person",
            requester_groups=_strings(record.get("requester_groups")),
            target=str(record.get("target") or ""),
            session=text("session"),
            command=text("command"),
            command_sha256=text("command_sha256"),
            rule=text("rule"),
            reason=text("reason"),
            cause=text("cause"),
            unknown=record.get("unknown") is True,
            approver_groups=_strings(record.get("approver_groups")),
            approvals_needed=int(record.get("approvals_needed") or 1),
            decisions=tuple(
                Decision.from_record(item)
                for item in record.get("decisions") or ()
                if isinstance(item, dict)
            ),
            screen=_strings(record.get("screen")),
            created_at=timestamp(record.get("created_at")),
            expires_at=timestamp(record.get("expires_at")),
            decided_at=timestamp(record.get("decided_at")),
            executed_at=timestamp(record.get("executed_at")),
            duration=int(duration) if isinstance(duration, int | float) else None,
            grant_until=timestamp(record.get("grant_until")),
            raw=record,
        )

    @property
    def approvals(self) -> int:
        return sum(1 for item in self.decisions if item.decision == "approve")

    @property
    def pending(self) -> bool:
        return self.state == "pending"

    def decision_by(self, user: str) -> Decision | None:
        return next((item for item in self.decisions if item.approver == user), None)

    def why(self) -> tuple[str, str]:
        """(label, text) of why it was asked: the rule, else the broker's cause, else "-"."""
        if self.rule:
            return "rule", self.rule
        if self.cause:
            return "cause", self.cause
        return "rule", "-"

    def what(self) -> str:
        """What is asked, unescaped: the command, or the access asked for."""
        if self.kind == "access":
            asked = format_duration(self.duration) if self.duration else "a while"
            return f"access to {self.target} for {asked}"
        return self.command or ""

    def left(self, now: float) -> float | None:
        return None if self.expires_at is None else self.expires_at - now

    def age(self, now: float) -> float | None:
        return None if self.created_at is None else now - self.created_at

    def outcome(self, show: Callable[[str], str] = escape) -> str:
        """Who decided and what they said: "bob: ok, go ahead" (escaped unless SHOW says not)."""
        final = [item for item in self.decisions if item.decision == "deny"] or list(self.decisions)
        return "; ".join(
            show(item.approver) + (f": {show(item.comment)}" if item.comment else "")
            for item in final
        )


# ---------------------------------------------------------------------------
# Errors and their exit codes (docs/approving.md)
# ---------------------------------------------------------------------------


class UnknownRequest(HoopError):
    """No such request (or target), or not one the caller may see; a malformed request."""

    exit_code = EXIT_USAGE


class DecisionRefused(HoopError):
    """The caller may not decide this request: their own, or not in the approver groups."""

    exit_code = EXIT_DENIED


class RequestClosed(HoopError):
    """The request can no longer be decided: already decided by the caller, no longer pending,
    expired."""

    exit_code = EXIT_ERROR


def decision_error(request_id: str, verb: str, exc: ApiCallError) -> HoopError:
    return refusal_error(f"cannot {verb} {escape(request_id)}", exc)


def refusal_error(what: str, exc: ApiCallError, *, usage: bool = False) -> HoopError:
    """The broker's refusal of an approval call as the error (and exit code) the CLI shows;
    USAGE: a bad_request is the caller's usage error (exit 2)."""
    message = f"{what}: {escape(str(exc))}"
    if usage and exc.code == "bad_request":
        return UsageError(message)
    if exc.code == "not_found":
        return UnknownRequest(message)
    if exc.code == "forbidden":
        return DecisionRefused(message)
    if exc.code in ("conflict", "expired"):
        return RequestClosed(message)
    return HoopError(message)


def describe_decision(
    verb: str, request: ApprovalRequest, show: Callable[[str], str] = escape
) -> str:
    """One line after a decision: what was decided and where the request stands (requester
    text escaped unless SHOW says not: the queue escapes its whole status line itself)."""
    done = "approved" if verb == "approve" else "denied"
    subject = f"{show(request.requester)} on {show(request.target)}: {show(request.what())}"
    line = f"{done} {show(request.id)} ({subject})"
    if request.state == done:
        return line
    if request.state == "pending" and verb == "approve":
        more = max(request.approvals_needed - request.approvals, 1)
        return line + f"; waiting for {more} more approval{'s' if more != 1 else ''}"
    return line + f"; request is {request.state}"
