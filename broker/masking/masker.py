"""Masker: a target's masking configuration compiled; plan() once per result set."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fnmatch import translate

from broker.masking.config import MaskingConfig
from broker.masking.detectors import _canonical
from broker.masking.error_messages import mask_error
from broker.masking.lineage import ColumnSource
from broker.masking.plans import MaskPlan
from broker.masking.strategies import _STRENGTH, _value_masker


def _part_matcher(pattern: str) -> Callable[[str], bool]:
    if not any(ch in pattern for ch in "*?["):
        return pattern.__eq__
    return re.compile(translate(pattern)).match  # type: ignore[return-value]


class _Rule:
    __slots__ = ("parts", "strategy")

    def __init__(self, pattern: str, strategy: str) -> None:
        self.parts = [_part_matcher(p) for p in pattern.lower().split(".")]
        self.strategy = strategy

    def matches(self, source: str) -> bool:
        """Compare from the right; a qualifier the source lacks could be anything."""
        have = source.lower().split(".")
        if have[-1] != "*" and not self.parts[-1](have[-1]):
            return False
        for depth in (2, 3):
            if len(self.parts) >= depth and len(have) >= depth:
                if not self.parts[-depth](have[-depth]):
                    return False
        return True


class Masker:
    """A target's masking configuration, compiled; plan() once per result set."""

    def __init__(self, config: MaskingConfig, *, hash_key: bytes) -> None:
        if config.uses_hash and not hash_key:
            raise ValueError("masking uses the hash strategy but hash_key is empty")
        self.config = config
        self._key = bytes(hash_key)
        self._rules = [
            _Rule(pattern, rule.strategy) for rule in config.columns for pattern in rule.match
        ]
        self._detectors = _canonical(config.detectors)

    def strategy_for(self, column: ColumnSource) -> str | None:
        """The strategy a column rule imposes on this column, or None."""
        if not self._rules:
            return None
        if column.opaque and not column.sources:
            candidates = self._rules  # may derive from anything: every rule applies
        else:
            sources = column.sources or (column.name,)
            candidates = [r for r in self._rules if any(r.matches(s) for s in sources)]
        if not candidates:
            return None
        return min((r.strategy for r in candidates), key=_STRENGTH.__getitem__)

    def plan(self, columns: Sequence[ColumnSource]) -> MaskPlan:
        """Decide once per result set which output columns are masked, and how."""
        maskers: dict[str, Callable[[object], object]] = {}  # hash: one cache per plan
        ops: list[tuple[int, Callable[[object], object]]] = []
        for i, column in enumerate(columns):
            strategy = self.strategy_for(column)
            if strategy is not None:
                if strategy not in maskers:
                    maskers[strategy] = _value_masker(strategy, self._key)
                ops.append((i, maskers[strategy]))
        return MaskPlan(
            [c.name for c in columns],
            ops,
            self._detectors,
            self.config.detector_strategy,
            self._key,
        )

    def mask_error(self, message: str) -> str:
        """A database error message with the values it echoes masked: see :func:`mask_error`."""
        return mask_error(message, self)
