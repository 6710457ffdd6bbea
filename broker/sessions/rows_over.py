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
from broker.sessions.approvals import ReviewOutcome
from broker.sessions.budgets import Cut


def rows_decision(rule: Rule, columns: Sequence[str]) -> Decision:
    """The review a bulk read goes to: the rule's name, approvers, approvals and timeout."""
    name = rule.name or "rows_over"
    shown = ", ".join(columns[:5]) + (", …" if len(columns) > 5 else "")
    return Decision(
        "review",
        name,
        f"rule {name}: the result holds more than {rule.rows_over} rows of masked columns "
        f"({shown})",
        approvers=tuple(rule.approvers),
        approvals=rule.approvals,
        timeout=rule.timeout,
        reason_required=rule.reason_required,
        matched=f"more than {rule.rows_over} rows",
    )


class RowsOver:
    """One result under a rows_over rule (or under none: then it passes as it is)."""

    def __init__(self, rule: Rule | None, masked_columns: Sequence[str]) -> None:
        self.rule = rule if rule is not None and rule.rows_over and masked_columns else None
        self.masked_columns = tuple(masked_columns)
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
        limit = int(rule.rows_over or 0)
        ahead: list[Any] = []
        async for row in rows:
            ahead.append(row)
            if len(ahead) > limit:
                break
        if len(ahead) <= limit:
            return _chain(ahead, None)
        if rule.action == "deny":
            self.cut = Cut("rows_over", limit, limit, rule.name or "rows_over")
            return _chain(ahead[:limit], None)
        self.outcome = await hold(rows_decision(rule, self.masked_columns))
        if not self.outcome.approved:
            return _chain([], None)
        return _chain(ahead, rows)


async def _chain(first: list[Any], rest: AsyncIterator[Any] | None) -> AsyncIterator[Any]:
    for row in first:
        yield row
    if rest is not None:
        async for row in rest:
            yield row
