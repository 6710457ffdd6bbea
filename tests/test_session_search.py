"""`hoopctl sessions search`: the full-text index of commands and output, over real sessions
(a local shell, a real sshd and a real PostgreSQL target) through a real broker."""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.audit.index import LineBuilder, fts_query, highlight_spans
from tests.helpers import BrokerProcess, User, assert_one_line_error
from tests.helpers import start_broker as start_broker_process
from tests.scratch_databases import scratch_postgres
from tests.sshd_harness import sshd_available, start_sshd
from tests.terminal_helpers import open_shell, run_line
from tests.test_sessions_cli import audit_broker_config, finish, hoop_json
from tests.test_terminal_ssh import ssh_target

PG_PASSWORD = "pg-" + secrets.token_hex(8)
UNKNOWN_ID = "20200101-0123456789ab"


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[str]:
    schema = (
        "CREATE TABLE customers (id int PRIMARY KEY, email text, city text)",
        "INSERT INTO customers VALUES (1, 'secret-ann@example.com', 'Lisbon'), "
        "(2, 'secret-bo@example.com', 'Porto')",
    )
    with scratch_postgres(schema, password=PG_PASSWORD, prefix="hoop_search_") as name:
        yield name


def pg_target(database: str, secret: Path) -> str:
    return f"""
[[targets]]
name = "pg"
type = "postgres"
address = "127.0.0.1:5432"
database = "{database}"
user = "{database}_app"
credential = "file:{secret}"
tls = "disable"
allowed_groups = ["dba"]
access_approvers = ["leads"]

[[targets.masking.columns]]
match = ["email"]
strategy = "redact"
"""


@dataclass
class World:
    broker: BrokerProcess
    alice: User
    bob: User
    dave: User
    shell: str
    query: str
    ssh: str | None  # alice on a real sshd, when one is installed


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, postgres_db: str) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("search")
    secret = tmp / "pg-secret"
    secret.write_text(PG_PASSWORD)
    sshd = start_sshd(tmp / "sshd") if sshd_available() else None
    extra = pg_target(postgres_db, secret) + (ssh_target("web", sshd) if sshd else "")
    broker = start_broker_process(tmp, audit_broker_config(tmp / "data", extra=extra))
    users = {name: User(tmp / name) for name in ("alice", "bob", "dave")}
    for name, user in users.items():
        user.login_as(broker, name)
    alice = users["alice"]
    child = open_shell(alice, "shell")
    run_line(child, "printf 'needle-%s-output\\n' alpha42")
    run_line(child, "printf '\\033[1;32mgreen-%s\\033[0m-tail\\n' needle")
    child.send("rm -rf /tmp/hoop-search-victim\r")
    child.expect("denied by rule no-recursive-rm")
    finish(child)
    result = alice.run("exec", "pg", "-c", "SELECT email, city FROM customers ORDER BY id")
    assert result.returncode == 0, result.stderr
    assert "[REDACTED]" in result.stdout and "secret-ann" not in result.stdout
    (query_row,) = [row for row in hoop_json(alice, "sessions") if row["target"] == "pg"]
    ssh_session = None
    if sshd is not None:
        remote = open_shell(alice, "web")
        run_line(remote, "printf 'from-%s-sshd\\n' real")
        remote.send("rm -rf /tmp/hoop-ssh-victim\r")
        remote.expect("denied by rule no-recursive-rm")
        finish(remote)
        ssh_session = remote.session_id
    yield World(
        broker, alice, users["bob"], users["dave"], child.session_id, query_row["id"], ssh_session
    )
    broker.stop()
    if sshd is not None:
        sshd.stop()


def search(user: User, text: str, *args: str) -> list[dict[str, Any]]:
    return hoop_json(user, "sessions", "search", text, *args)


def test_search_finds_a_blocked_command_by_its_text(world: World) -> None:
    matches = search(world.alice, "rm -rf /tmp/hoop-search-victim")
    commands = [m for m in matches if m["kind"] == "command"]
    assert [m["session"] for m in commands] == [world.shell]
    assert commands[0]["line"] == "rm -rf /tmp/hoop-search-victim"
    assert commands[0]["user"] == "alice" and commands[0]["target"] == "shell"
    assert commands[0]["offset"] > 0


def test_search_finds_output_with_its_offset(world: World) -> None:
    matches = search(world.alice, "needle-alpha42")
    assert [(m["session"], m["kind"]) for m in matches] == [(world.shell, "output")]
    match = matches[0]
    assert match["line"] == "needle-alpha42-output"
    assert match["spans"] == [[0, len("needle-alpha42")]]
    summary = hoop_json(world.alice, "sessions", "show", world.shell)
    first_command = summary["timeline"][0]["offset"]
    assert first_command <= match["offset"] < summary["duration"]


def test_output_is_indexed_without_escape_sequences(world: World) -> None:
    (match,) = [m for m in search(world.alice, "green-needle") if m["kind"] == "output"]
    assert match["line"] == "green-needle-tail"


def test_last_word_matches_as_a_prefix_and_case_does_not_matter(world: World) -> None:
    sessions = {m["session"] for m in search(world.alice, "NEEDLE-ALPH")}
    assert sessions == {world.shell}


def test_search_finds_sql_statements(world: World) -> None:
    matches = search(world.alice, "FROM customers")
    assert {(m["session"], m["kind"]) for m in matches} == {(world.query, "command")}
    assert matches[0]["line"] == "SELECT email, city FROM customers ORDER BY id"
    # Its output is there too, as the client saw it.
    outputs = [m for m in search(world.alice, "REDACTED") if m["session"] == world.query]
    assert outputs and all(m["kind"] == "output" for m in outputs)


def test_search_finds_a_session_on_a_real_sshd_target(world: World) -> None:
    if world.ssh is None:
        pytest.skip("OpenSSH sshd is not installed")
    output = search(world.dave, "from-real-sshd")
    assert [(m["session"], m["kind"], m["target"]) for m in output] == [
        (world.ssh, "output", "web")
    ]
    blocked = [m for m in search(world.dave, "hoop-ssh-victim") if m["kind"] == "command"]
    assert [m["session"] for m in blocked] == [world.ssh]


def test_masked_values_never_reach_the_index(world: World) -> None:
    assert search(world.dave, "secret-ann") == []
    assert search(world.dave, "example.com") == []


def test_table_output_highlights_the_match(world: World) -> None:
    result = world.alice.run(
        "sessions", "search", "needle-alpha42", env={"FORCE_COLOR": "1", "COLUMNS": "200"}
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if world.shell in line)
    assert "\x1b[1;7mneedle-alpha42\x1b[0m-output" in line
    assert "hoopctl replay SESSION --at OFFSET" in result.stderr


def test_users_find_only_their_own_sessions(world: World) -> None:
    assert search(world.bob, "needle-alpha42") == []
    assert search(world.bob, "rm -rf") == []
    assert {m["session"] for m in search(world.dave, "needle-alpha42")} == {world.shell}


def test_every_search_is_an_audit_event(world: World) -> None:
    search(world.dave, "needle-alpha42")
    search(world.bob, "needle-alpha42")
    events = world.broker.audit_events("session.searched")
    dave = [e for e in events if e["actor"] == "dave"][-1]
    assert dave["details"]["text"] == "needle-alpha42"
    assert dave["details"]["matches"] == 1 and dave["details"]["sessions"] == [world.shell]
    assert dave["details"]["scope"] == "all"
    bob = [e for e in events if e["actor"] == "bob"][-1]
    assert bob["details"]["matches"] == 0 and bob["details"]["scope"] == "own"


def test_search_without_words_is_a_usage_error(world: World) -> None:
    result = world.alice.run("sessions", "search", "--", "-- ;")
    assert result.returncode == 2
    assert_one_line_error(result, "letter or digit")


def test_nothing_found_says_so(world: World) -> None:
    result = world.alice.run("sessions", "search", "zebra-quantum-nowhere")
    assert result.returncode == 0
    assert "no session matches" in result.stderr


def test_interrupted_session_is_indexed_after_a_broker_restart(world: World) -> None:
    child = open_shell(world.alice, "shell")
    run_line(child, "printf 'before-the-%s\\n' crash")
    time.sleep(1.5)  # the recording is flushed at least once a second
    assert world.broker.process is not None
    world.broker.process.send_signal(signal.SIGKILL)
    world.broker.process.wait(10)
    child.close(force=True)
    world.broker.start()
    (row,) = hoop_json(world.dave, "sessions", "--state", "interrupted")
    assert row["id"] == child.session_id
    matches = search(world.dave, "before-the-crash")
    assert [(m["session"], m["kind"]) for m in matches] == [(child.session_id, "output")]


# -- the pieces, without a broker ------------------------------------------------------


def test_pruned_session_leaves_the_index(world: World) -> None:
    import sqlite3

    from broker.audit.index import drop_from_index

    result = world.alice.run("exec", "shell", "--", "printf", "prune-%s\\n", "me42")
    assert result.returncode == 0, result.stderr
    (match,) = [m for m in search(world.alice, "prune-me42") if m["kind"] == "output"]
    # What a prune does: the session leaves the store, and its text the index, together.
    with sqlite3.connect(world.broker.data_dir / "hoop.db", timeout=10) as conn:
        conn.execute("DELETE FROM sessions WHERE id = ?", (match["session"],))
        assert drop_from_index(conn, [match["session"], UNKNOWN_ID]) == 1
        lines = conn.execute(
            "SELECT count(*) FROM session_lines WHERE text LIKE '%prune-me42%'"
        ).fetchone()
    assert lines == (0,)
    assert [m for m in search(world.dave, "prune-me42") if m["kind"] == "output"] == []


def test_line_builder_joins_escape_sequences_split_across_events() -> None:
    builder = LineBuilder()
    builder.feed(1.0, "\x1b]133;A\x07$ \x1b]133;B\x07ec")
    builder.feed(1.5, "ho hi\x1b[")
    builder.feed(2.0, "1mthere\x1b[0m\r\n")
    builder.feed(3.0, "10%\r100%\x1b[K\r\nab\bX\r\n")
    # A line is found at the time it took its final form, not when its prompt was drawn.
    assert builder.close() == [(2.0, "$ echo hithere"), (3.0, "100%"), (3.0, "aX")]


def test_line_builder_indexes_a_repeated_line_once_and_caps_long_lines() -> None:
    builder = LineBuilder()
    builder.feed(1.0, "same\r\nsame\r\n" + "x" * 5000 + "\r\n")
    lines = builder.close()
    assert lines[0][1] == "same"
    assert len(lines) == 2 and len(lines[1][1]) == 1000


def test_line_builder_expands_tabs() -> None:
    builder = LineBuilder()
    builder.feed(0.0, "bin\tboot\r\n")
    assert builder.close() == [(0.0, "bin     boot")]


def test_line_builder_reads_plain_lines_as_it_reads_terminal_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bulk output without cursor moves (an export's CSV) is split into lines at once; the
    lines, their times, the repeats and the caps are those of the piece-by-piece reading."""
    import random

    import broker.audit.index as index

    rng = random.Random(7)
    alphabet = ["a", "b", "é", " ", ",", "\n", "\n", "\r\n", "\t", "\b", "\r", "\x07"]
    alphabet += ["\x00", "\x0b", "\x1f", "\x7f", "\x85", "\u2028", "\U0001f600"]
    alphabet += ["\x1b[1m", "\x1b[K", "\x1b[1K", "\x1b[2D", "\x1b[3C", "\x1b[H"]
    # Output recorded without a terminal: "\r\n" line ends, no other cursor move.
    recorded = ["a", "b", "é", " ", ",", "\r\n", "\r\n", "\x1b[1m"]
    runs = []
    for run in range(600):
        chars = recorded if run % 3 == 0 else alphabet
        events = [
            (float(i), "".join(rng.choice(chars) for _ in range(rng.randint(0, 40))))
            for i in range(rng.randint(1, 6))
        ]
        long_line = " " * rng.randint(0, 3) + "x" * rng.choice([0, 999, 1001])
        events.append((9.0, "\n" + long_line + "\nsame\nsame\n"))
        runs.append(events)

    def lines(max_lines: int) -> list[list[tuple[float, str]]]:
        found = []
        for events in runs:
            builder = index.LineBuilder(max_lines=max_lines)
            for at, data in events:
                builder.feed(at, data)
            found.append(builder.close())
        return found

    fast = [lines(3), lines(1000)]
    monkeypatch.setattr(index, "_moves_cursor", lambda _text: True)  # every text piece by piece
    assert fast == [lines(3), lines(1000)]
    assert any(len(run) == 3 for run in fast[0]) and any(len(run) > 3 for run in fast[1])


@given(st.text(alphabet=st.characters(codec="utf-8", max_codepoint=0x2FFF)))
def test_line_builder_drops_exactly_the_control_characters_of_its_pattern(text: str) -> None:
    # The lines are rebuilt from UTF-8 bytes with the controls deleted there: the same text as
    # the pattern's substitution, whatever characters surround them.
    import broker.audit.index as index

    cleaned = text.encode().translate(None, index._CONTROL_BYTES).decode()
    assert cleaned == index._CONTROL.sub("", text)
    builder = LineBuilder()
    builder.feed(1.0, text + "\n")
    expected = [line.strip() for line in index._CONTROL.sub("", text).split("\n")]
    if not any(ch in text for ch in "\r\b\t\x1b"):
        assert [line for _at, line in builder.close()] == list(
            dict.fromkeys(filter(None, expected))
        )


def test_query_text_cannot_inject_fts_syntax() -> None:
    assert fts_query('a" OR b') == '"a"" OR b"*'
    assert fts_query("DROP", prefix=False) == '"DROP"'


def test_highlight_marks_whole_phrases_and_a_final_prefix() -> None:
    line = "rm -rf /tmp/x; RM  -RFv /tmp"
    assert highlight_spans(line, "rm -rf", prefix=False) == [(0, 6)]
    assert highlight_spans(line, "rm -rf", prefix=True) == [(0, 6), (15, 23)]
    assert highlight_spans("Café crème", "cafe", prefix=False) == [(0, 4)]


def test_a_refused_exec_is_a_blocked_session_listed_shown_and_searchable(world: World) -> None:
    alice = world.alice
    result = alice.run("exec", "shell", "--", "rm", "-rf", "/tmp/hoop-blocked-attempt")
    assert result.returncode == 3, result.stderr
    (row,) = hoop_json(alice, "sessions", "--state", "blocked")
    assert (row["user"], row["target"], row["kind"], row["state"]) == (
        "alice",
        "shell",
        "exec",
        "blocked",
    )
    assert row["blocked"] == 1 and row["commands"] == 0
    summary = hoop_json(alice, "sessions", "show", row["id"])
    (entry,) = summary["timeline"]
    assert entry["outcome"] == "blocked" and entry["rule"] == "no-recursive-rm"
    assert entry["text"] == "rm -rf /tmp/hoop-blocked-attempt"
    found = search(alice, "hoop-blocked-attempt")
    assert [match["session"] for match in found] == [row["id"]]
    # The auditor sees it among everyone's refused attempts.
    assert row["id"] in {r["id"] for r in hoop_json(world.dave, "sessions", "--state", "blocked")}


def test_bulk_output_is_indexed_up_to_the_cap_and_its_command_still_found(world: World) -> None:
    """Millions of output characters: the first MAX_INDEXED_OUTPUT are searchable, what comes
    after is not (the broker does not spend seconds re-reading it), the command is."""
    from broker.audit.index import MAX_INDEXED_OUTPUT, MAX_OUTPUT_LINES

    alice = world.alice
    # 100 characters a line with its CR LF, fewer lines than MAX_OUTPUT_LINES: only the
    # character cap can leave the tail out.
    lines = MAX_INDEXED_OUTPUT // 100 + 10_000
    assert lines < MAX_OUTPUT_LINES
    script = (
        "printf 'bulk-head-%s\\n' first; "
        f"seq -f 'bulk-row-%090g' 1 {lines}; "
        "printf 'bulk-tail-%s\\n' last"
    )
    result = alice.run("exec", "shell", "--", "bash", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("bulk-tail-last")
    head = [m for m in search(alice, "bulk-head-first") if m["kind"] == "output"]
    assert [m["line"] for m in head] == ["bulk-head-first"]
    assert not [m for m in search(alice, "bulk-tail-last") if m["kind"] == "output"]
    commands = [m for m in search(alice, "bulk-tail") if m["kind"] == "command"]
    assert len(commands) == 1 and "seq -f" in commands[0]["line"]


def test_the_text_gathered_while_recording_is_what_reading_the_recording_gives(
    tmp_path: Path,
) -> None:
    """The index gathers a session's lines as they are recorded (RecordingTap); reading the
    recording afterwards, as after a crash, gives the same lines, times and marks."""
    from broker.audit.index import RecordingTap, read_recording_text
    from broker.recording import Recorder, RecordingHeader

    ticks = iter(float(n) / 10 for n in range(1000))
    recorder = Recorder(
        tmp_path / "s.cast",
        RecordingHeader("20261206-0123456789ab", "alice", "box", 80, 24, time.time()),
        clock=lambda: next(ticks),
    )
    tap = recorder.tap = RecordingTap()
    recorder.output(b"\x1b]133;A\x07$ ec")
    recorder.output(b"ho caf\xc3")  # a character split across two chunks
    recorder.output(b"\xa9\x1b[")  # and an escape sequence
    recorder.output(b"1mdone\x1b[0m\r\n10%\r100%\x1b[K\r\n")
    recorder.mark("command: echo café")
    recorder.output(b"second line\r\n")
    recorder.close()
    gathered = tap.text()
    assert [line for _, line in gathered.lines] == ["$ echo cafédone", "100%", "second line"]
    assert gathered == read_recording_text(tmp_path / "s.cast")


async def test_the_index_takes_the_gathered_text_and_reads_no_recording(tmp_path: Path) -> None:
    from broker.audit.index import RecordingText, index_for
    from broker.store import Store

    store = await Store.open(tmp_path)
    try:
        session = "20261206-00000000beef"
        await store.create_session(
            session_id=session,
            user="alice",
            target="box",
            kind="exec",
            started_at=time.time(),
            recording=str(tmp_path / "gone.cast"),  # never written: it must not be read
            reason=None,
            command="echo gathered-word",
        )
        await store.end_session(session, state="closed", ended_at=time.time(), exit_status=0)
        index = index_for(store)
        index.gathered(session, RecordingText(lines=[(0.5, "gathered-word here")], marks=[]))
        found = await index.search("gathered-word")
        assert [(m.session, m.line) for m in found] == [(session, "gathered-word here")]
    finally:
        await store.close()
