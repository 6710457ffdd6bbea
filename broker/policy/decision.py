"""The outcome of judging one command line (shell or SQL) against a policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

ActionName = Literal["allow", "deny", "review"]

# deny beats review beats allow.
STRENGTH: dict[str, int] = {"allow": 0, "review": 1, "deny": 2}


@dataclass(frozen=True)
class Decision:
    action: ActionName
    # Name of the matched rule ("rule #N", counted from 1, when the rule has no name);
    # None when the decision came from the policy's default or on_unknown.
    rule: str | None
    # One line for people: "rule no-rm matched `rm -rf x`", "cannot tell …: unterminated quote".
    reason: str
    # True when the decision came from the policy's on_unknown.
    unknown: bool = False
    approvers: tuple[str, ...] = ()
    approvals: int = 1
    timeout: int = 900
    reason_required: bool = False
    # The part of the command line that matched the rule, e.g. "rm -rf x".
    matched: str | None = None
    # Shell: the names of the programs the line runs, as the judge read them (for the
    # signals' baselines, so that the line is not parsed twice); None when not known.
    programs: tuple[str, ...] | None = field(default=None, compare=False)


def stronger(a: str, b: str) -> bool:
    """True when action ``a`` is strictly stronger than action ``b``."""
    return STRENGTH[a] > STRENGTH[b]


def combine(decisions: Sequence[Decision]) -> Decision:
    """One decision for a line made of several parts: deny beats review beats allow.

    Among decisions of the strongest action the first one wins, so the reason names the
    earliest part of the line that caused it. An empty sequence is a programming error.
    """
    if not decisions:
        raise ValueError("combine() needs at least one decision")
    best = decisions[0]
    for decision in decisions[1:]:
        if stronger(decision.action, best.action):
            best = decision
    return best
