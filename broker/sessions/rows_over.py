"""Bulk reads of masked data: a rule's `rows_over = N` (docs/policy.md, "Bulk reads").

A statement a `rows_over` rule matches, whose result holds a column the masker masks, is read
ahead up to N + 1 rows before any of it is sent. Within N rows it goes out as usual. Past N:
- `action = "deny"`: the first N rows go out, then the result is cut (like a budget);
- `action = "review"`: nothing goes out until an approver approves the read; then all of it
  does. Denied, expired or cancelled: none of it.

What decides is the result as the database returns it, never the statement's text: a LIMIT,
a join or a function that makes more rows is counted all the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from broker.config import Rule
from broker.policy.decision import Decision
from broker.protocols.sql import Cut
from broker.sessions.approvals import ReviewOutcome


def rows_decision(rule: Rule, columns: Sequence[str], sent_before: int = 0) -> Decision:
    """The review a bulk read goes to: the rule's name, approvers, approvals and timeout."""
    name = rule.name or "rows_over"
    shown = ", ".join(columns[:5]) + (", …" if len(columns) > 5 else "")
    before = f", {sent_before} of them sent earlier in this session" if sent_before else ""
    return Decision(
        "review",
        name,
        f"rule {name}: the result holds more than {rule.rows_over} rows of masked columns "
        f"({shown}{before})",
        approvers=tuple(rule.approvers),
        approvals=rule.approvals,
        timeout=rule.timeout,
        reason_required=rule.reason_required,
        matched=f"more than {rule.rows_over} rows",
    )


class RowsOver:
    """One result under a rows_over rule (or under none: then it passes as it is)."""

    def __init__(
        self, rule: Rule | None, masked_columns: Sequence[str], sent_before: int = 0
    ) -> None:
        """SENT_BEFORE: rows of masked columns this session was already sent under the rule
        (a cursor read page by page counts as one read)."""
        self.rule = rule if rule is not None and rule.rows_over and masked_columns else None
        self.masked_columns = tuple(masked_columns)
        self.sent_before = sent_before
        self.cut: Cut | None = None  # action deny: the result was stopped at the limit
        # Action review: how the hold ended (approved or not); None when nothing was held.
        self.outcome: ReviewOutcome | None = None

    @property
    def withheld(self) -> str | None:
        """Why none of the result was sent (a review not approved), or None."""
        if self.outcome is None or self.outcome.approved:
            return None
        return self.outcome.message

    @property
    def approver(self) -> str | None:
        return self.outcome.approver if self.outcome is not None and self.outcome.approved else None

    async def admit(
        self,
        rows: AsyncIterator[Any],
        hold: Callable[[Decision], Awaitable[ReviewOutcome]],
    ) -> AsyncIterator[Any]:
        """The rows that may go out, decided before any is sent: ROWS as they are, the first
        rows_over of them (deny), all of them once HOLD got an approval, or none."""
        if self.rule is None:
            return rows
        rule = self.rule
        limit = max(0, int(rule.rows_over or 0) - self.sent_before)
        ahead: list[Any] = []
        async for row in rows:
            ahead.append(row)
            if len(ahead) > limit:
                break
        if len(ahead) <= limit:
            return _chain(ahead, None)
        if rule.action == "deny":
            self.cut = Cut("rows_over", int(rule.rows_over or 0), limit, rule.name or "rows_over")
            return _chain(ahead[:limit], None)
        self.outcome = await hold(rows_decision(rule, self.masked_columns, self.sent_before))
        if not self.outcome.approved:
            return _chain([], None)
        return _chain(ahead, rows)


async def _chain(first: list[Any], rest: AsyncIterator[Any] | None) -> AsyncIterator[Any]:
    for row in first:
        yield row
    if rest is not None:
        async for row in rest:
            yield row


class BulkCounter:
    """Rows of masked columns a session was sent under each rows_over rule: the rule's limit
    holds for the session, not only for one result (paging with a cursor, a fetch size or
    LIMIT/OFFSET reads as much as one big result). An approved hold starts the count again."""

    def __init__(self) -> None:
        self._sent: dict[str, int] = {}

    def before(self, rule: Rule | None) -> int:
        return self._sent.get(_key(rule), 0) if rule is not None else 0

    def sent(self, rule: Rule | None, rows: int, *, approved: bool = False) -> None:
        if rule is None or not rule.rows_over:
            return
        key = _key(rule)
        self._sent[key] = 0 if approved else self._sent.get(key, 0) + rows


def _key(rule: Rule) -> str:
    return f"{rule.name}|{rule.rows_over}|{rule.action}"
