"""200 requesters wait at once, each on its own connection, and all are approved together:
every requester gets its own command's output, and each command ran exactly once.

This is the "lost approval" of issue 16: in a burst of approvals, one approved command's output
once never reached its requester. Requesters connect as `hoopctl exec --wait` does (one SSH
connection each); the approver decides over several hoop-api connections at the same time.
Bounded: 200 requests, at most 25 decisions in flight, every wait has a time limit; loopback only.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import approvals
from tests.fixtures.approvals import World, approvals_world
from tests.test_approvals_helpers import Person, printf_review_target

REQUESTERS = 200
DECIDING_AT_ONCE = 25

BURST_TARGET = printf_review_target("burst")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with approvals_world(tmp_path_factory.mktemp("burst"), targets=BURST_TARGET) as made:
        yield made


broker, alice, bob = approvals.broker, approvals.alice, approvals.bob


async def test_two_hundred_concurrent_approvals_each_reach_their_requester(
    alice: Person, bob: Person, target_dir: Path
) -> None:
    markers = [f"burst-{index:03d}" for index in range(REQUESTERS)]
    log = target_dir / "ran.log"

    async def request(marker: str) -> tuple[int | None, str, str]:
        # The command prints its marker to the requester and appends it to a log on the target,
        # so a run that happened but whose output was lost is told apart from one that never ran.
        command = f"printf '%s\\n' {marker} | tee -a {shlex.quote(str(log))}"
        async with await alice.connect() as conn:
            process = await conn.create_process(
                shlex.join(["exec", "--wait", "300", "burst", "--", "bash", "-c", command]),
                encoding=None,
            )
            process.stdin.write_eof()
            done = await asyncio.wait_for(process.wait(check=False), 240)
        return (
            done.exit_status,
            (done.stdout or b"").decode(errors="replace"),
            (done.stderr or b"").decode(errors="replace"),
        )

    waiting = [asyncio.ensure_future(request(marker)) for marker in markers]
    try:
        pending = await _pending_requests(bob, markers)
        limit = asyncio.Semaphore(DECIDING_AT_ONCE)
        async with await bob.api() as api:  # the approver's open channel, as `hoopctl approve`

            async def approve(request_id: str) -> None:
                async with limit:
                    await api.call("approvals.decide", {"id": request_id, "decision": "approve"})

            await asyncio.gather(*(approve(pending[marker]) for marker in markers))
        # Every requester's output within two minutes; one that never comes is named, not
        # waited for until the test's own time limit.
        await asyncio.wait(waiting, timeout=120)
        never = [marker for marker, task in zip(markers, waiting, strict=True) if not task.done()]
        assert not never, f"{len(never)} approved requesters never got their output: {never[:5]}"
        results = [task.result() for task in waiting]
    finally:
        for task in waiting:
            task.cancel()

    lost = [
        (marker, status, stderr.strip().splitlines()[-1:])
        for marker, (status, stdout, stderr) in zip(markers, results, strict=True)
        if status != 0 or stdout != f"{marker}\n"
    ]
    assert not lost, f"{len(lost)} requesters did not get their output: {lost[:5]}"
    # Each approved command ran exactly once on the target.
    assert sorted(log.read_text().split()) == markers


async def _pending_requests(bob: Person, markers: list[str]) -> dict[str, str]:
    """Each marker's request id, once every request is pending (polls approvals.list)."""
    wanted = set(markers)
    async with await bob.api() as api:
        for _ in range(1200):
            found = {}
            for record in await api.call("approvals.list", {"scope": "review", "state": "pending"}):
                for marker in wanted:
                    if marker in (record.get("command") or ""):
                        found[marker] = record["id"]
            if len(found) == len(wanted):
                return found
            await asyncio.sleep(0.1)
    raise AssertionError(f"only {len(found)} of {len(wanted)} requests became pending")
