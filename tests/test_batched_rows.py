"""Results travel in batches (broker.protocols.sql.Batched): a reader that takes rows one at a
time and one that takes batches see the same rows, and closing stops the driver's stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from broker.protocols.sql import Batched, batches_of

BATCHES = [[(1,), (2,), (3,)], [], [(4,), (5,)], [(6,)]]


class Source:
    def __init__(self) -> None:
        self.closed = False

    async def batches(self) -> AsyncIterator[list[tuple[int]]]:
        try:
            for batch in BATCHES:
                yield list(batch)
        finally:
            self.closed = True


def test_rows_one_at_a_time_then_the_rest_in_batches() -> None:
    async def scenario() -> tuple[list[tuple[int]], list[list[tuple[int]]]]:
        rows = Batched(Source().batches())
        first = [await anext(rows), await anext(rows)]
        rest = [batch async for batch in batches_of(rows)]
        return first, rest

    first, rest = asyncio.run(scenario())
    assert first == [(1,), (2,)]
    assert rest == [[(3,)], [(4,), (5,)], [(6,)]]  # no empty batch, nothing twice


def test_rows_of_a_plain_iterator_are_gathered_into_batches() -> None:
    async def plain() -> AsyncIterator[tuple[int]]:
        for n in range(7):
            yield (n,)

    async def scenario() -> list[list[tuple[int]]]:
        return [batch async for batch in batches_of(plain(), 3)]

    assert asyncio.run(scenario()) == [[(0,), (1,), (2,)], [(3,), (4,), (5,)], [(6,)]]


def test_closing_closes_the_source() -> None:
    async def scenario() -> tuple[list[tuple[int]], bool]:
        source = Source()
        rows = Batched(source.batches())
        seen = [row async for row in _take(rows, 4)]
        await rows.aclose()
        return seen, source.closed

    seen, closed = asyncio.run(scenario())
    assert seen == [(1,), (2,), (3,), (4,)]
    assert closed


async def _take(rows: Batched, count: int) -> AsyncIterator[tuple[int]]:
    for _ in range(count):
        yield await anext(rows)
