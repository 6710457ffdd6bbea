"""In-process push: every change to a request wakes its waiters and watchers at once.

The store stays the source of truth: a change is published only after it was committed, and
a subscriber that falls behind is told so (overflowed) and re-reads the store instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from broker.sessions.approvals import ApprovalRecord

QUEUE_LIMIT = 1000


@dataclass(frozen=True)
class Change:
    type: Literal["requested", "updated"]
    record: ApprovalRecord


class Subscription:
    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self._queue: asyncio.Queue[Change] = asyncio.Queue(limit)
        # Set when changes were dropped because the subscriber fell behind: re-read the store.
        self.overflowed = False

    def offer(self, change: Change) -> None:
        try:
            self._queue.put_nowait(change)
        except asyncio.QueueFull:
            self.overflowed = True

    async def get(self, within: float | None = None) -> Change | None:
        """The next change, or None if none comes WITHIN seconds."""
        if within is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), max(0.0, within))
        except TimeoutError:
            return None

    def drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        self.overflowed = False


class Notifier:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    @contextlib.contextmanager
    def subscription(self) -> Iterator[Subscription]:
        subscription = Subscription()
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    def publish(self, change: Change) -> None:
        for subscription in list(self._subscribers):
            subscription.offer(change)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
