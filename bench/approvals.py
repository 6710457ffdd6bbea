"""Approval latency benchmark: how fast a request reaches a watching approver, and how fast an
approved command runs.

    cd /work/main && .venv/bin/python -m bench.approvals [--requests 200] [--max-seconds 120]
        [--burst 50] [--workers 1]

Starts `hoop-broker serve --dev` on free loopback ports with a `local` target `bench` whose
policy sends `printf` to review by the group `approvers`, logs alice (the requester) and bob
(the approver) in with the real `hoopctl login`, then, in this process with hoopctl's own
transport (asyncssh) and each user's stored key and certificate:

- bob watches `approvals.watch` on one connection (as `hoopctl approve` does);
- per round, alice opens an `exec bench --wait 60 -- printf MARK` session (as `hoopctl exec`
  does) and the round measures
  1. exec sent -> in the approver's stream: from alice opening the session until the
     `requested` event for it arrives on bob's watch (session set-up, policy, store, push);
  2. created_at -> in the approver's stream: from the broker's own `created_at` stamp on the
     request to the event's arrival (the broker's push path alone; same host, same clock);
  3. approvals.decide round trip: bob's decision call on an open channel;
  4. decision -> command running: from bob sending approve until MARK appears on alice's
     stdout (the broker wakes the waiting session, re-checks the hash, runs `bash -c` and relays);
- and, as a baseline, an `exec bench -- echo MARK` that needs no approval: session opened ->
  MARK on stdout (every 4th round);
- then a burst: --burst requests opened at once (all pending together), each timed until it
  is on bob's watch; bob then approves them one after another, each timed from its decision
  until its MARK is on alice's stdout.

Rounds run one after another until --requests are done or --max-seconds have passed; every wait
has its own time limit. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from tests.helpers import User, dev_config, ensure_os_users, free_port, start_broker
from tests.test_approvals_helpers import printf_review_target

ROUND_TIMEOUT = 15.0

TARGETS = printf_review_target("bench")

SENT_TO_STREAM = "exec sent -> in approver's stream"
CREATED_TO_STREAM = "created_at -> in approver's stream"
DECIDE_CALL = "approvals.decide round trip"
DECISION_TO_RUN = "decision -> command output at requester"
BASELINE = "baseline: exec without review -> output"
BURST_TO_STREAM = "burst: exec sent -> in approver's stream"
BURST_TO_RUN = "burst: decision -> command output"
METRICS = (
    SENT_TO_STREAM,
    CREATED_TO_STREAM,
    DECIDE_CALL,
    DECISION_TO_RUN,
    BASELINE,
    BURST_TO_STREAM,
    BURST_TO_RUN,
)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


@dataclass
class Identity:
    user: str
    key: asyncssh.SSHKey
    cert: asyncssh.SSHCertificate


def load_identity(user: User, address: Any) -> Identity:
    """USER's stored key and certificate, read with hoopctl's own credential store."""
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    from hoopctl.credentials import CredentialStore

    for key, value in user.env.items():
        if key in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "PYTHON_KEYRING_BACKEND"):
            os.environ[key] = value
    keyring.set_keyring(PlaintextKeyring())  # its file path follows XDG_DATA_HOME
    store = CredentialStore(address)
    profile = store.profile()
    return Identity(profile.user, store.private_key(), profile.cert())


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in METRICS})

    def add(self, name: str, seconds: float) -> None:
        self.values[name].append(seconds)

    def table(self) -> str:
        lines = [
            "| metric | p50 | p99 | min | max | runs |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in METRICS:
            got = self.values[name]
            if not got:
                lines.append(f"| {name} | - | - | - | - | 0 |")
                continue
            ms = [value * 1000 for value in got]
            lines.append(
                f"| {name} | {statistics.median(ms):.1f} ms | {percentile(ms, 0.99):.1f} ms "
                f"| {min(ms):.1f} ms | {max(ms):.1f} ms | {len(ms)} |"
            )
        return "\n".join(lines)


class Watcher:
    """Bob's approvals.watch: hands each new request to whoever waits for its marker."""

    def __init__(self, stream: AsyncIterator[dict[str, Any]]) -> None:
        self._stream = stream
        self._waiting: dict[str, asyncio.Future[tuple[dict[str, Any], float]]] = {}
        self.ready = asyncio.Event()

    def expect(self, marker: str) -> asyncio.Future[tuple[dict[str, Any], float]]:
        future: asyncio.Future[tuple[dict[str, Any], float]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[marker] = future
        return future

    async def run(self) -> None:
        async for event in self._stream:
            arrived = time.time()
            if event.get("type") == "snapshot":
                self.ready.set()
                continue
            record = event.get("request") or {}
            if event.get("type") != "requested":
                continue
            for marker, future in list(self._waiting.items()):
                if marker in (record.get("command") or "") and not future.done():
                    future.set_result((record, arrived))
                    del self._waiting[marker]


async def read_until(stream: asyncssh.SSHReader[bytes], marker: bytes) -> None:
    seen = b""
    while marker not in seen:
        data = await stream.read(65536)
        if not data:
            raise RuntimeError(f"the session ended before {marker!r} appeared")
        seen = seen[-len(marker) :] + data


async def one_round(
    index: int,
    alice: asyncssh.SSHClientConnection,
    bob_api: Any,
    watcher: Watcher,
    samples: Samples,
) -> None:
    marker = f"bench-{index}-{os.getpid()}"
    seen = watcher.expect(marker)
    sent = time.time()
    process = await alice.create_process(
        shlex.join(["exec", "--wait", "60", "bench", "--", "printf", f"{marker}\\n"]),
        encoding=None,
    )
    process.stdin.write_eof()
    try:
        record, arrived = await asyncio.wait_for(seen, ROUND_TIMEOUT)
        samples.add(SENT_TO_STREAM, arrived - sent)
        samples.add(CREATED_TO_STREAM, arrived - float(record["created_at"]))
        decide_start = time.perf_counter()
        await bob_api.call("approvals.decide", {"id": record["id"], "decision": "approve"})
        samples.add(DECIDE_CALL, time.perf_counter() - decide_start)
        await asyncio.wait_for(read_until(process.stdout, marker.encode()), ROUND_TIMEOUT)
        samples.add(DECISION_TO_RUN, time.perf_counter() - decide_start)
        await asyncio.wait_for(process.wait(check=False), ROUND_TIMEOUT)
    finally:
        process.close()


async def baseline_round(index: int, alice: asyncssh.SSHClientConnection, samples: Samples) -> None:
    marker = f"plain-{index}-{os.getpid()}"
    started = time.perf_counter()
    process = await alice.create_process(
        shlex.join(["exec", "bench", "--", "echo", marker]), encoding=None
    )
    process.stdin.write_eof()
    try:
        await asyncio.wait_for(read_until(process.stdout, marker.encode()), ROUND_TIMEOUT)
        samples.add(BASELINE, time.perf_counter() - started)
        await asyncio.wait_for(process.wait(check=False), ROUND_TIMEOUT)
    finally:
        process.close()


async def burst(
    size: int,
    alice: asyncssh.SSHClientConnection,
    bob_api: Any,
    watcher: Watcher,
    samples: Samples,
) -> None:
    """SIZE requests opened at once (all pending together), then approved one after another."""

    async def ask(index: int) -> tuple[asyncssh.SSHClientProcess[bytes], dict[str, Any], str]:
        marker = f"burst-{index}-{os.getpid()}"
        seen = watcher.expect(marker)
        sent = time.time()
        process = await alice.create_process(
            shlex.join(["exec", "--wait", "120", "bench", "--", "printf", f"{marker}\\n"]),
            encoding=None,
        )
        process.stdin.write_eof()
        record, arrived = await asyncio.wait_for(seen, ROUND_TIMEOUT * 2)
        samples.add(BURST_TO_STREAM, arrived - sent)
        return process, record, marker

    asked = await asyncio.gather(*(ask(index) for index in range(size)))

    async def ran(process: asyncssh.SSHClientProcess[bytes], marker: str, since: float) -> None:
        try:
            await asyncio.wait_for(read_until(process.stdout, marker.encode()), ROUND_TIMEOUT * 2)
            samples.add(BURST_TO_RUN, time.perf_counter() - since)
        finally:
            process.close()

    running = []
    for process, record, marker in asked:
        since = time.perf_counter()
        await bob_api.call("approvals.decide", {"id": record["id"], "decision": "approve"})
        running.append(asyncio.ensure_future(ran(process, marker, since)))
    await asyncio.gather(*running)


async def measure(
    address: Any,
    alice: Identity,
    bob: Identity,
    requests: int,
    max_seconds: float,
    size: int,
    workers: int = 1,
) -> tuple[Samples, int, float]:
    from hoopctl.transport import ApiClient, open_connection

    samples = Samples()
    bob_conn = await open_connection(address, username=bob.user, client_keys=[(bob.key, bob.cert)])
    bob_api = ApiClient(bob_conn)
    bob_worker = (await bob_api.call("whoami", {}))["served_by"]
    for _ in range(50):  # with workers: alice on another worker than bob, when it can be had
        alice_conn = await open_connection(
            address, username=alice.user, client_keys=[(alice.key, alice.cert)]
        )
        probe = ApiClient(alice_conn)
        alice_worker = (await probe.call("whoami", {}))["served_by"]
        probe.close_channel()
        if alice_worker != bob_worker or workers == 1:
            break
        alice_conn.close()
    print(f"requester served by {alice_worker}, approver by {bob_worker}")
    watcher = Watcher(bob_api.stream("approvals.watch"))
    watching = asyncio.ensure_future(watcher.run())
    done = 0
    began = time.monotonic()
    try:
        await asyncio.wait_for(watcher.ready.wait(), ROUND_TIMEOUT)
        # One untimed warm-up of each kind.
        warm = Samples()
        await one_round(-1, alice_conn, bob_api, watcher, warm)
        await baseline_round(-1, alice_conn, warm)
        began = time.monotonic()
        while done < requests and time.monotonic() - began < max_seconds:
            await one_round(done, alice_conn, bob_api, watcher, samples)
            if done % 4 == 0:
                await baseline_round(done, alice_conn, samples)
            done += 1
        if size and time.monotonic() - began < max_seconds:
            await burst(size, alice_conn, bob_api, watcher, samples)
    finally:
        watching.cancel()
        alice_conn.close()
        await bob_api.close()
    return samples, done, time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="approval rounds (default 200)")
    parser.add_argument(
        "--max-seconds", type=float, default=120, help="stop measuring after this long"
    )
    parser.add_argument(
        "--burst", type=int, default=50, help="requests pending at once in the burst (0: none)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="broker worker processes (serve --workers N); with 2 or more, a request and its "
        "decision are often on different workers",
    )
    args = parser.parse_args(argv)
    try:
        ensure_os_users()  # the OS users local targets run as (run_as); make system-deps too
    except RuntimeError as exc:
        parser.error(str(exc))

    with tempfile.TemporaryDirectory(prefix="hoop-bench-approvals-") as tmp:
        root = Path(tmp)
        broker = start_broker(
            root,
            dev_config(
                root / "data",
                port=free_port(),
                dev_port=free_port(),
                auto_approve=None,
                targets=TARGETS,
            ),
            workers=args.workers,
        )
        try:
            alice_user, bob_user = User(root / "alice"), User(root / "bob")
            alice_user.login_as(broker, "alice")
            bob_user.login_as(broker, "bob")
            from hoopctl.address import BrokerAddress

            address = BrokerAddress.parse(broker.address)
            alice = load_identity(alice_user, address)
            bob = load_identity(bob_user, address)  # known_hosts: bob's (the same pinned key)
            samples, rounds, seconds = asyncio.run(
                measure(
                    address, alice, bob, args.requests, args.max_seconds, args.burst, args.workers
                )
            )
        finally:
            broker.stop()

    print(
        f"hoopctl approvals benchmark: {rounds} approval rounds in {seconds:.1f} s "
        f"(CPython {platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} cores, {args.workers} broker workers)"
    )
    print()
    print(samples.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
