"""Approval requests as listings show them (table rows, JSON), and the approval flags of
`exec` and `request`. Shared by the approval commands."""

from __future__ import annotations

import time
from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from broker.durations import format_duration, parse_duration
from hoopctl.approval_requests import (
    ApprovalRequest,
    clock,
)
from hoopctl.errors import (
    HoopError,
    UsageError,
)
from hoopctl.output import OutputFormat, cell, listing_table, render, stderr, stdout

if TYPE_CHECKING:
    from rich.text import Text


def exec_words(wait: str | None, no_wait: bool, request: str | None) -> list[str]:
    """The approval flags of an `exec` session command (docs/approvals-contract.md)."""
    if wait is not None and no_wait:
        raise UsageError("give either --wait DURATION or --no-wait, not both")
    words: list[str] = []
    if wait is not None:
        words += ["--wait", str(duration_seconds(wait, "--wait"))]
    if no_wait:
        words.append("--no-wait")
    if request is not None:
        if not request.strip():
            raise UsageError("--request needs a request id")
        words += ["--request", request]
    return words


def duration_seconds(text: str, flag: str) -> int:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    return seconds


class StateFilter(StrEnum):
    pending = "pending"
    approved = "approved"
    denied = "denied"
    expired = "expired"
    cancelled = "cancelled"
    executed = "executed"


class Scope(StrEnum):
    review = "review"
    mine = "mine"
    all = "all"


def records_of(result: Any) -> list[dict[str, Any]]:
    if not isinstance(result, list):
        raise HoopError("the broker sent an unexpected reply (not a list of requests)")
    return [item for item in result if isinstance(item, dict)]


def _expiry(request: ApprovalRequest, now: float) -> str:
    if request.pending:
        left = request.left(now)
        return "" if left is None else f"{clock(left)} left"
    if request.kind == "access" and request.state == "approved" and request.grant_until:
        left = request.grant_until - now
        return f"granted, {format_duration(left)} left" if left > 0 else "grant ended"
    return ""


def _table_row(request: ApprovalRequest, now: float) -> dict[str, Text | str]:
    age = request.age(now)
    approvers = ", ".join(request.approver_groups) or "-"
    return {
        "id": cell(request.id),
        "state": request.state,
        "kind": request.kind,
        "requester": cell(request.requester_label),
        "target": cell(request.target),
        "what": cell(request.what()),
        "rule": cell(request.rule),
        "why": cell(request.rule or request.cause),
        "reason": cell(request.reason),
        "approvers": cell(f"{approvers} ({request.approvals}/{request.approvals_needed})"),
        "age": "" if age is None else format_duration(age),
        "expires": _expiry(request, now),
        "decided": cell(request.outcome(str)),
    }


def render_requests(
    requests: Iterable[ApprovalRequest],
    columns: list[tuple[str, str]],
    output: OutputFormat,
    *,
    empty: str,
) -> None:
    """JSON: the raw records. Table: like hoopctl.output.render, but every cell folds rather
    than being cut with an ellipsis (no part of a command may go unseen) and requester text
    is escaped, never read as rich markup."""
    listed = list(requests)
    if output is OutputFormat.json:
        render([request.raw for request in listed], columns, output)
        return
    if not listed:
        stderr.print(empty)
        return
    now = time.time()
    table = listing_table((heading for _, heading in columns), fold=True)
    for request in listed:
        row = _table_row(request, now)
        table.add_row(*(row[key] for key, _ in columns))
    stdout.print(table)
