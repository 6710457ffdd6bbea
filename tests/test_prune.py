"""Retention: `hoop-broker prune --older-than AGE` removes old recordings and audit events, and
`hoop-broker verify` still passes across the cut (a signed checkpoint marks where it was)."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.helpers import HOOP_BROKER, BrokerProcess, User
from tests.terminal_helpers import local_target, open_shell, run_line, start_terminal_broker
from tests.test_audit_chain import (
    events_in_store,
    problem_lines,
    run_verify,
    sign_unsigned,
    wait_for_signed_head,
)

AGE = 8  # seconds: "old" below means older than this when prune runs


def run_prune(broker: BrokerProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HOOP_BROKER, "prune", "--config", str(broker.config_path), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def recordings(broker: BrokerProcess) -> set[str]:
    return {p.name for p in (broker.data_dir / "recordings").iterdir()}


def exec_session(broker: BrokerProcess, user: User, word: str) -> str:
    before = set((broker.data_dir / "recordings").glob("*.cast"))
    result = user.run("exec", "shell", "--", "echo", word)
    assert result.returncode == 0, result.stderr
    (cast,) = set((broker.data_dir / "recordings").glob("*.cast")) - before
    return cast.stem


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = start_terminal_broker(tmp_path, local_target())
    yield process
    process.stop()


@pytest.fixture
def user(broker: BrokerProcess, alice: User) -> User:
    assert alice.login(broker).returncode == 0
    return alice


def test_prune_removes_what_is_old_keeps_what_is_not_and_verify_still_passes(
    broker: BrokerProcess, user: User
) -> None:
    old = [exec_session(broker, user, f"old-{n}") for n in range(2)]
    sign_unsigned(broker.data_dir)
    for sid in old:  # an index beside the recording goes with it
        (broker.data_dir / "recordings" / f"{sid}.cast.idx").write_text("{}")
    shell = open_shell(user)  # started long ago and still open: never pruned
    run_line(shell, "echo still-here")
    time.sleep(AGE + 1)
    new = exec_session(broker, user, "new")
    sign_unsigned(broker.data_dir)
    before = events_in_store(broker)
    # The broker keeps running: prune and the broker write the same chain.
    result = run_prune(broker, "--older-than", f"{AGE}s")
    assert result.returncode == 0, result.stderr
    cut = next(e["seq"] for e in before if e.get("session") == new) - 1
    assert f"deleted {cut} audit events (seq 1-{cut}), 2 sessions and 6 recording files" in (
        result.stdout
    )
    assert f"checkpoint at seq {cut}; recorded as audit event seq {before[-1]['seq'] + 1}" in (
        result.stdout
    )
    left = recordings(broker)
    for sid in old:
        assert not {f"{sid}.cast", f"{sid}.cast.sig", f"{sid}.cast.idx"} & left
    assert {f"{new}.cast", f"{new}.cast.sig", f"{shell.session_id}.cast"} <= left
    events = events_in_store(broker)
    assert events[0]["seq"] == cut + 1 and events[0]["prev_hash"] == before[cut - 1]["hash"]
    prune_event = events[-1]
    assert prune_event["type"] == "audit.prune"
    assert prune_event["details"]["events"] == cut and prune_event["details"]["sessions"] == 2
    # The broker goes on after prune's event, in the same chain.
    run_line(shell, "echo after-the-prune")
    shell.send("exit\r")
    shell.expect(pexpect.EOF)
    shell.close()
    sign_unsigned(broker.data_dir)
    assert events_in_store(broker)[-1]["seq"] > prune_event["seq"]
    verified = run_verify(broker)
    assert verified.returncode == 0, verified.stdout
    assert f"after the prune checkpoint at seq {cut}" in verified.stdout
    with sqlite3.connect(broker.data_dir / "hoop.db") as conn:
        sessions = {row[0] for row in conn.execute("SELECT id FROM sessions")}
    assert sessions == {new, shell.session_id}


def test_prune_of_everything_twice_leaves_a_chain_that_verifies(
    broker: BrokerProcess, user: User
) -> None:
    exec_session(broker, user, "one")
    wait_for_signed_head(broker)
    broker.stop()
    sign_unsigned(broker.data_dir)
    time.sleep(1.2)
    first = run_prune(broker, "--older-than", "1s")
    assert first.returncode == 0, first.stderr
    assert recordings(broker) == set()
    (event,) = events_in_store(broker)  # only the prune's own event is left
    assert event["type"] == "audit.prune"
    assert run_verify(broker).returncode == 0
    broker.start()
    exec_session(broker, user, "two")
    wait_for_signed_head(broker)
    broker.stop()
    sign_unsigned(broker.data_dir)
    time.sleep(1.2)
    second = run_prune(broker, "--older-than", "1s")
    assert second.returncode == 0, second.stderr
    with sqlite3.connect(broker.data_dir / "hoop.db") as conn:
        checkpoints = [row[0] for row in conn.execute("SELECT seq FROM audit_checkpoints")]
    assert len(checkpoints) == 2 and checkpoints[1] > checkpoints[0]
    verified = run_verify(broker)
    assert verified.returncode == 0, verified.stdout
    assert f"after the prune checkpoint at seq {checkpoints[1]}" in verified.stdout


def test_a_forged_checkpoint_is_reported(broker: BrokerProcess, user: User) -> None:
    exec_session(broker, user, "one")
    time.sleep(1.2)
    exec_session(broker, user, "two")
    broker.stop()
    sign_unsigned(broker.data_dir)
    assert run_prune(broker, "--older-than", "1s").returncode == 0
    with sqlite3.connect(broker.data_dir / "hoop.db") as conn:
        (seq,) = conn.execute("SELECT seq FROM audit_checkpoints").fetchone()
        conn.execute("UPDATE audit_checkpoints SET hash = ?", ("f" * 64,))
    result = run_verify(broker)
    assert result.returncode == 1
    assert problem_lines(result) == [
        f"audit checkpoint seq {seq}: bad signature: the prune checkpoint is not signed by this "
        "broker",
        f"audit seq {seq + 1}: changed: the first event does not link to the prune checkpoint of "
        + problem_lines(result)[1].rsplit("checkpoint of ", 1)[1],
    ]


def test_deleting_the_start_of_the_chain_without_a_checkpoint_is_reported(
    broker: BrokerProcess, user: User
) -> None:
    exec_session(broker, user, "one")
    broker.stop()
    sign_unsigned(broker.data_dir)
    with sqlite3.connect(broker.data_dir / "hoop.db") as conn:
        conn.execute("DELETE FROM audit_events WHERE seq <= 2")
    result = run_verify(broker)
    assert problem_lines(result) == [
        "audit seq 1-2: missing: 2 events deleted after the start of the chain"
    ]


def test_prune_dry_run_deletes_nothing(broker: BrokerProcess, user: User) -> None:
    sid = exec_session(broker, user, "one")
    broker.stop()
    sign_unsigned(broker.data_dir)
    before = events_in_store(broker)
    time.sleep(1.2)
    result = run_prune(broker, "--older-than", "1s", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"would delete {len(before)} audit events (seq 1-{len(before)}), 1 sessions" in (
        result.stdout
    )
    assert events_in_store(broker) == before
    assert f"{sid}.cast" in recordings(broker)
    with sqlite3.connect(broker.data_dir / "hoop.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM audit_checkpoints").fetchone() == (0,)


def test_prune_refuses_bad_input(broker: BrokerProcess, tmp_path: Path) -> None:
    result = run_prune(broker, "--older-than", "ninety days")
    assert result.returncode == 2 and "not a duration" in result.stderr
    result = run_prune(broker, "--older-than", "0s")
    assert result.returncode == 1 and "positive duration" in result.stderr
    elsewhere = tmp_path / "other.toml"
    config = broker.config_path.read_text().replace(str(broker.data_dir), str(tmp_path / "nope"))
    elsewhere.write_text(config)
    result = subprocess.run(
        [HOOP_BROKER, "prune", "--config", str(elsewhere), "--older-than", "90d"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "no store at" in result.stderr
    assert "Traceback" not in result.stderr


def test_prune_takes_a_session_out_of_the_search_index(broker: BrokerProcess, user: User) -> None:
    exec_session(broker, user, "findable-word-77")
    found = user.run("sessions", "search", "findable-word-77", "--output", "json")
    assert found.returncode == 0 and "findable-word-77" in found.stdout, found.stderr
    broker.stop()
    time.sleep(1.2)
    result = run_prune(broker, "--older-than", "1s")
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(broker.data_dir / "hoop.db") as conn:
        left = conn.execute(
            "SELECT count(*) FROM session_lines WHERE text LIKE '%findable-word-77%'"
        ).fetchone()[0]
    assert left == 0
