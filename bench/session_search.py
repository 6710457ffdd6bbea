"""Session search benchmark: the full-text index (broker/audit/index.py) over many sessions.

    cd /work/main && .venv/bin/python -m bench.session_search [--sessions 10000]
        [--lines 100] [--runs 50] [--users 20]

Builds a real store (broker.store.Store in a temporary data dir) holding --sessions closed
sessions of --users users: each with a `sessions` row, its audit events (session.start, six
commands of which one blocked, session.end) and an asciicast v2 recording of --lines output
lines (words from a 20,000-word vocabulary, colour escapes, a prompt per command). A few
sessions carry rare words. Then measures, in-process against that store:

1. indexing: one catch-up over every session (what a broker does once for an old store);
2. a catch-up with nothing to do (what every search pays first);
3. search latency (p50/p99 over --runs) through AuditApi.search (the `sessions.search`
   method: catch-up, FTS5 query, audit event) for a rare word, a common word, a prefix,
   a two-word phrase, a common word as a non-auditor (own sessions only) and a miss;
4. `sessions.list` (newest 100, with counts) and `sessions.show` latency.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from broker.audit.api import AuditApi
from broker.audit.config import AuditSection
from broker.audit.events import AuditLog
from broker.audit.index import index_for
from broker.session_context import ConnectionContext
from broker.store import Store

VOCABULARY = 20_000
COMMANDS_PER_SESSION = 6


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def make_words(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = set()
    while len(words) < VOCABULARY:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 10))))
    return sorted(words)


def zipf_pick(rng: random.Random, words: list[str]) -> str:
    # Few words are very common, most are rare, as in real output.
    return words[min(len(words) - 1, int(rng.paretovariate(1.1)) - 1)]


def build(store_dir: Path, sessions: int, lines: int, users: int, seed: int = 7) -> list[str]:
    """Write the sessions, audit events and recordings straight into a fresh store."""
    rng = random.Random(seed)
    words = make_words(rng)
    shuffled = words[:]
    rng.shuffle(shuffled)
    recordings = store_dir / "recordings"
    recordings.mkdir(parents=True)
    db = sqlite3.connect(store_dir / "hoop.db")
    session_rows = []
    audit_rows = []
    ids = []
    start = time.time() - sessions * 60
    for number in range(sessions):
        session_id = f"20260101-{number:012x}"
        ids.append(session_id)
        user = f"user{number % users}"
        target = f"host{number % 50}"
        began = start + number * 60
        commands = [
            " ".join(
                [rng.choice(["ls", "cat", "grep", "psql", "tail", "kubectl"])]
                + [zipf_pick(rng, shuffled) for _ in range(rng.randint(1, 4))]
            )
            for _ in range(COMMANDS_PER_SESSION)
        ]
        if number % 1000 == 500:
            commands[2] = f"DROP TABLE rarewordtable{number}"
        path = recordings / f"{session_id}.cast"
        events = []
        at = 0.0
        per_command = max(1, lines // COMMANDS_PER_SESSION)
        for index, command in enumerate(commands):
            at += rng.uniform(0.5, 5)
            events.append([round(at, 6), "o", f"\x1b]133;A\x07$ \x1b]133;B\x07{command}\r\n"])
            events.append([round(at, 6), "m", f"command: {command}"])
            for _ in range(per_command):
                at += rng.uniform(0.001, 0.05)
                text = " ".join(zipf_pick(rng, shuffled) for _ in range(rng.randint(3, 12)))
                if rng.random() < 0.1:
                    text = f"\x1b[1;31m{text}\x1b[0m"
                events.append([round(at, 6), "o", text + "\r\n"])
            kind = "command.blocked" if index == 2 else "command"
            audit_rows.append(
                (
                    began + at,
                    kind,
                    user,
                    session_id,
                    target,
                    json.dumps(
                        {
                            "type": kind,
                            "actor": user,
                            "session": session_id,
                            "target": target,
                            "time": began + at,
                            "details": {"command": command, "decision": "allow", "rule": None},
                        }
                    ),
                )
            )
        if number % 1000 == 500:
            events.append([round(at + 1, 6), "o", f"found the uniqueneedle{number} here\r\n"])
        header = {"version": 2, "width": 120, "height": 40, "timestamp": int(began)}
        path.write_text(
            json.dumps(header) + "\n" + "".join(json.dumps(event) + "\n" for event in events)
        )
        session_rows.append(
            (session_id, user, target, "terminal", "closed", began, began + at + 1, str(path))
        )
        for kind, when in (("session.start", began), ("session.end", began + at + 1)):
            audit_rows.append(
                (
                    when,
                    kind,
                    user,
                    session_id,
                    target,
                    json.dumps({"type": kind, "actor": user, "session": session_id, "time": when}),
                )
            )
    db.executemany(
        "INSERT INTO sessions(id, user, target, kind, state, started_at, ended_at, recording) "
        "VALUES (?,?,?,?,?,?,?,?)",
        session_rows,
    )
    db.executemany(
        "INSERT INTO audit_events(time, type, actor, session, target, event) VALUES (?,?,?,?,?,?)",
        audit_rows,
    )
    db.commit()
    db.close()
    return ids


async def timed(runs: int, work: Any) -> list[float]:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        await work()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def row(name: str, samples: list[float], extra: str = "") -> None:
    print(
        f"| {name} | {statistics.median(samples):.2f} ms | {percentile(samples, 0.99):.2f} ms "
        f"| {len(samples)} | {extra} |",
        flush=True,
    )


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="hoop-bench-search-") as tmp:
        data_dir = Path(tmp)
        store = await Store.open(data_dir)
        await store.close()
        began = time.perf_counter()
        ids = build(data_dir, args.sessions, args.lines, args.users)
        recordings_mb = sum(p.stat().st_size for p in (data_dir / "recordings").iterdir()) / 2**20
        print(
            f"built {len(ids)} sessions, {recordings_mb:.1f} MiB of recordings, "
            f"in {time.perf_counter() - began:.1f} s",
            flush=True,
        )
        store = await Store.open(data_dir)
        broker = SimpleNamespace(
            config=SimpleNamespace(audit=AuditSection(auditors=["auditors"])),
            store=store,
            audit=AuditLog(store, stdout=False),
            data_dir=data_dir,
        )
        index = index_for(store)
        before = (data_dir / "hoop.db").stat().st_size
        began = time.perf_counter()
        indexed = await index.catch_up()
        seconds = time.perf_counter() - began
        async with store.db.execute("SELECT count(*) FROM session_lines") as cursor:
            (line_count,) = await cursor.fetchone()  # type: ignore[misc]
        await store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        grown = ((data_dir / "hoop.db").stat().st_size - before) / 2**20
        print(
            f"indexed {indexed} sessions, {line_count} lines in {seconds:.1f} s "
            f"({indexed / seconds:.0f} sessions/s, {line_count / seconds:.0f} lines/s); "
            f"store grew by {grown:.1f} MiB",
            flush=True,
        )
        api = AuditApi(broker)  # type: ignore[arg-type]
        auditor = ConnectionContext(user="dave", groups=("auditors",), remote="bench")
        owner = ConnectionContext(user="user3", groups=("engineers",), remote="bench")
        common = await common_word(store)
        print()
        print("| operation | p50 | p99 | runs | results |")
        print("| --- | ---: | ---: | ---: | --- |")
        row("catch-up, nothing to index", await timed(args.runs, index.catch_up))
        queries = [
            ("search: rare word (1 session)", auditor, "uniqueneedle500"),
            ("search: DROP TABLE (10 sessions)", auditor, "DROP TABLE"),
            (f"search: common word `{common}`, limit 50", auditor, common),
            ("search: prefix of a common word", auditor, common[:-1]),
            ("search: common word, own sessions only", owner, common),
            ("search: no match", auditor, "zzzzqqqq"),
        ]
        found: list[Any] = []
        for name, ctx, text in queries:

            async def one(ctx: ConnectionContext = ctx, text: str = text) -> None:
                found[:] = await api.search(ctx, {"text": text, "limit": 50})

            samples = await timed(args.runs, one)
            sessions_found = len({match["session"] for match in found})
            row(name, samples, f"{len(found)} matches, {sessions_found} sessions")
        listed: list[Any] = []

        async def list_sessions() -> None:
            listed[:] = await api.list_sessions(auditor, {"limit": 100})

        row(
            "sessions.list (newest 100, counts)",
            await timed(args.runs, list_sessions),
            f"{len(listed)} rows",
        )

        async def list_filtered() -> None:
            listed[:] = await api.list_sessions(
                auditor, {"limit": 100, "user": "user7", "target": "host7"}
            )

        row(
            "sessions.list --user --target",
            await timed(args.runs, list_filtered),
            f"{len(listed)} rows",
        )

        async def show() -> None:
            await api.show_session(auditor, {"id": ids[len(ids) // 2]})

        row("sessions.show", await timed(args.runs, show))
        await store.close()
    print()
    print(
        f"{platform.python_implementation()} {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, {platform.system()} {platform.machine()}"
    )


async def common_word(store: Store) -> str:
    await store.db.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab(main, session_text, row)"
    )
    async with store.db.execute(
        "SELECT term FROM temp.vocab WHERE length(term) > 4 ORDER BY doc DESC LIMIT 1"
    ) as cursor:
        found = await cursor.fetchone()
    return str(found[0]) if found else "the"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.session_search", description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--lines", type=int, default=100, help="output lines per session")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
