"""Budgets (a target's `[targets.budget]`, per actor kind): the rate of statements a user may
run on a target, counted across all of that user's sessions there, and the marker a result
cut at its row or byte budget carries in each output format."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from broker.protocols.sql import Cut
from broker.sessions.formats import to_text

WINDOW = 60.0  # seconds: max_statements_per_minute counts the statements of the last minute
MAX_TRACKED = 100_000  # (user, target) windows kept at most; the oldest idle ones go first


class RateBudget:
    """Statements per minute per (user, target), in a sliding window. The clock is injected
    so that tests can move time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, str], deque[float]] = {}

    async def take(self, user: str, target: str, per_minute: int | None) -> bool:
        """Count one statement of USER on TARGET; False (not counted) when the last minute
        already holds PER_MINUTE of them."""
        if per_minute is None:
            return True
        now = self._clock()
        key = (user, target)
        seen = self._seen.pop(key, None) or deque()
        while seen and seen[0] <= now - WINDOW:
            seen.popleft()
        self._seen[key] = seen  # re-inserted: the dict's order is least recently used first
        if len(seen) >= per_minute:
            return False
        seen.append(now)
        if len(self._seen) > MAX_TRACKED:
            del self._seen[next(iter(self._seen))]
        return True


class StatementRate(Protocol):
    """What sessions ask of a rate budget (RateBudget in one process, SharedRateBudget when
    workers share the store)."""

    async def take(self, user: str, target: str, per_minute: int | None) -> bool: ...


class RateStore(Protocol):
    async def take_rate(
        self, user: str, target: str, per_minute: int, now: float, window: float
    ) -> bool: ...


class SharedRateBudget:
    """The same budget counted in the store, for brokers whose workers share it (`serve
    --workers N`): a user's statements count together whichever worker runs them."""

    def __init__(self, store: RateStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def take(self, user: str, target: str, per_minute: int | None) -> bool:
        if per_minute is None:
            return True
        return await self._store.take_rate(user, target, per_minute, self._clock(), WINDOW)


class BudgetMeter:
    """Counts one result's rows and bytes (the text form of its values) against a budget."""

    def __init__(self, limits: Any) -> None:
        self._max_rows: int | None = limits.max_rows
        self._max_bytes: int | None = limits.max_bytes
        self.rows = 0
        self.bytes = 0
        self.cut: Cut | None = None

    def admit(self, row: Sequence[Any]) -> bool:
        """Whether ROW may be sent; False once a budget is spent (then ``cut`` says which)."""
        if self._max_rows is not None and self.rows >= self._max_rows:
            self.cut = Cut("max_rows", self._max_rows, self.rows)
            return False
        if self._max_bytes is not None:
            size = sum(len(to_text(value).encode("utf-8", "replace")) for value in row)
            if self.bytes + size > self._max_bytes:
                self.cut = Cut("max_bytes", self._max_bytes, self.rows)
                return False
            self.bytes += size
        self.rows += 1
        return True

    def admit_batch(self, rows: list[Any]) -> list[Any]:
        """The rows of ROWS that may be sent, in order: all of them, or those before the
        budget ran out (then ``cut`` says which budget)."""
        if self._max_bytes is None:
            room = len(rows) if self._max_rows is None else max(0, self._max_rows - self.rows)
            if room >= len(rows):
                self.rows += len(rows)
                return rows
            self.rows += room
            self.cut = Cut("max_rows", self._max_rows or 0, self.rows)
            return rows[:room]
        for index, row in enumerate(rows):
            if not self.admit(row):
                return rows[:index]
        return rows

    async def limit(self, rows: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """ROWS up to the budget (then ``cut`` is set and the rest is not read)."""
        async for row in rows:
            if not self.admit(row):
                return
            yield row
