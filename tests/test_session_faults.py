"""Faults around terminal sessions: a killed broker, output bursts, escape sequences, recordings."""

from __future__ import annotations

import contextlib
import io
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from broker.recording import read_events
from tests.helpers import BrokerProcess, User
from tests.terminal_helpers import PROMPT, local_target, open_shell, run_line, start_terminal_broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    targets = local_target() + local_target("best-effort", extra='recording = "best-effort"')
    process = start_terminal_broker(tmp_path, targets)
    yield process
    process.stop()


@pytest.fixture
def user(broker: BrokerProcess, alice: User) -> User:
    assert alice.login(broker).returncode == 0
    return alice


def cast_path(broker: BrokerProcess, session_id: str) -> Path:
    return broker.data_dir / "recordings" / f"{session_id}.cast"


def test_killed_broker_leaves_a_playable_recording_and_marks_the_session_interrupted(
    user: User, broker: BrokerProcess
) -> None:
    child = open_shell(user)
    run_line(child, "echo before-the-crash")
    time.sleep(1.5)  # at least one flush
    assert broker.process is not None
    broker.process.send_signal(signal.SIGKILL)
    broker.process.wait(10)
    child.expect(pexpect.EOF)
    child.close()
    _, events = read_events(cast_path(broker, child.session_id))
    assert "before-the-crash" in "".join(data for _, kind, data in events if kind == "o")
    broker.start()
    ends = [e for e in broker.audit_events("session.end") if e["session"] == child.session_id]
    assert ends and ends[-1]["details"]["state"] == "interrupted"


def test_ten_megabyte_burst_is_recorded_completely_and_ctrl_c_still_works(
    user: User, broker: BrokerProcess
) -> None:
    child = open_shell(user)
    child.send("seq 1 1300000\r")  # about 9.5 MB of output
    child.maxread = 65536
    child.expect(r"\r\n1300000\r\n", timeout=120, searchwindowsize=4096)
    # The prompt follows once the broker has recorded the burst; on a loaded 2-core machine
    # that can take longer than pexpect's default.
    child.expect(PROMPT, timeout=90, searchwindowsize=4096)
    child.send("yes interrupt-me\r")
    # Two lines of yes's own output (the echo of the command line is one line): yes runs and
    # has the terminal, so Ctrl-C is for it. (A Ctrl-C typed before the job has started can
    # reach the shell instead, as in any terminal.)
    child.expect("interrupt-me\r\ninterrupt-me\r\n")
    child.sendcontrol("c")
    # What was in flight when Ctrl-C arrived still drains; pexpect reads it in big chunks and
    # searches only the end (set above), or it becomes the bottleneck itself.
    child.expect(PROMPT, timeout=90, searchwindowsize=4096)
    child.send("exit\r")
    child.expect(pexpect.EOF, timeout=60)
    _, events = read_events(cast_path(broker, child.session_id))
    output = "".join(data for _, kind, data in events if kind == "o")
    numbers = output.split("seq 1 1300000", 1)[1]
    lines = re.findall(r"(\d+)\r\n", numbers)
    assert lines[:3] == ["1", "2", "3"]
    assert lines[-1] == "1300000"
    assert len(lines) == 1300000


def test_escape_sequences_in_commands_and_output_are_recorded_as_shown(
    user: User, broker: BrokerProcess
) -> None:
    child = open_shell(user)
    shown = run_line(child, "printf '\\033[31mred\\033[0m plain\\n'")
    assert "\x1b[31mred\x1b[0m plain" in shown
    child.send("exit\r")
    child.expect(pexpect.EOF)
    _, events = read_events(cast_path(broker, child.session_id))
    output = "".join(data for _, kind, data in events if kind == "o")
    assert "\x1b[31mred\x1b[0m plain" in output
    marks = [data for _, kind, data in events if kind == "m"]
    assert "command: printf '\\033[31mred\\033[0m plain\\n'" in marks


def test_asciinema_accepts_the_recording(user: User, broker: BrokerProcess) -> None:
    child = open_shell(user)
    run_line(child, "echo asciinema-can-play-this")
    child.send("exit\r")
    child.expect(pexpect.EOF)
    # asciinema cat needs a terminal.
    player = pexpect.spawn(
        "asciinema", ["cat", str(cast_path(broker, child.session_id))], encoding="utf-8", timeout=30
    )
    player.expect("asciinema-can-play-this")
    player.expect(pexpect.EOF)
    player.close()
    assert player.exitstatus == 0


def test_strict_recording_that_cannot_be_created_refuses_the_session(
    user: User, broker: BrokerProcess
) -> None:
    # A file where the recordings directory should be: nothing can be created under it.
    recordings = broker.data_dir / "recordings"
    if recordings.is_dir():
        for item in recordings.iterdir():
            item.unlink()
        recordings.rmdir()
    recordings.write_text("not a directory")
    result = user.run("connect", "shell", "--", "touch", str(broker.data_dir / "ran"))
    assert result.returncode == 1
    assert "session refused: the recording cannot be written" in result.stderr
    assert not (broker.data_dir / "ran").exists()
    rejected = broker.audit_events("session.rejected")
    assert rejected and rejected[-1]["target"] == "shell"


@pytest.fixture
def small_disk_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker that may write files of at most 1 MB (RLIMIT_FSIZE): real EFBIG write errors.
    The limit holds for the store too (its write-ahead log grows with every commit until a
    checkpoint), so it leaves the store room for a login and a few sessions under load."""
    targets = local_target() + local_target("best-effort", extra='recording = "best-effort"')
    process = start_terminal_broker(tmp_path, targets, name="small")
    process.stop()
    process.start(file_size_limit=1_000_000)
    yield process
    process.stop()


def test_strict_recording_failure_mid_session_ends_the_session(
    small_disk_broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(small_disk_broker).returncode == 0
    child = open_shell(alice)
    child.maxread = 65536  # read the burst in big chunks
    child.send("seq 1 400000\r")  # about 2.7 MB: more than the recording may hold
    # The whole stream is searched: the notice comes on stderr, so output already on its way
    # may still follow it (pexpect's search window only sees the tail of each big read).
    child.expect("the session recording cannot be written; this session is ended", timeout=60)
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus != 0
    end = [
        e for e in small_disk_broker.audit_events("session.end") if e["session"] == child.session_id
    ]
    assert end and end[-1]["details"]["state"] == "terminated"
    assert "recording failed" in end[-1]["reason"]
    # What was written is still a valid recording up to the failure.
    header, events = read_events(cast_path(small_disk_broker, child.session_id))
    assert header["hoop"]["session_id"] == child.session_id and events


def test_best_effort_recording_failure_warns_and_goes_on(
    small_disk_broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(small_disk_broker).returncode == 0
    child = open_shell(alice, "best-effort")
    child.maxread = 65536
    # Everything the terminal showed: the warning comes with the next flush of the recording,
    # which on a slow machine falls in the middle of the burst, before the prompt.
    shown = io.StringIO()
    child.logfile_read = shown
    child.send("seq 1 400000\r")
    child.expect("\r\n400000\r\n", timeout=60, searchwindowsize=4096)
    child.expect(PROMPT, timeout=60)
    deadline = time.monotonic() + 10
    while "recording stopped" not in shown.getvalue():
        assert time.monotonic() < deadline, "no warning that the recording stopped"
        with contextlib.suppress(pexpect.TIMEOUT):
            child.expect("recording stopped", timeout=0.5)
    child.logfile_read = None
    child.send("echo still-alive\r")
    child.expect("still-alive\r\n")
    child.send("exit\r")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 0
