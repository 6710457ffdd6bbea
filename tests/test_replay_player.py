"""The player in real terminals: `python -m hoopctl.replay FILE ...` run in tmux (whose screen
is read back and compared with a tmux window that was sent the recorded bytes as they are)
and in pexpect terminals; keys typed as a person would."""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from hoopctl.replay import NoMatch, ReplayUsageError, parse_offset, play
from tests.helpers import REPO
from tests.replay_helpers import (
    PYTHON,
    Tmux,
    event_time,
    events_of,
    output_until,
    record_real_session,
    reference_terminal,
    replay_command,
    spawn_replay,
    write_cast,
)


@pytest.fixture(scope="module")
def real_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_real_session(tmp_path_factory.mktemp("real-session"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """The file the player writes its actions to (HOOP_REPLAY_TRACE)."""
    return tmp_path / "trace.log"


@pytest.fixture
def terminals(tmp_path: Path) -> Iterator[list[Tmux]]:
    opened: list[Tmux] = []
    yield opened
    for terminal in opened:
        terminal.close()


def trace_lines(trace: Path) -> list[str]:
    return trace.read_text().splitlines() if trace.exists() else []


def wait_for_trace(trace: Path, prefix: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in trace_lines(trace):
            if line.startswith(prefix):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no {prefix!r} in the trace: {trace_lines(trace)}")


def replay_env(trace: Path | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HOOP_")}
    env["TERM"] = "xterm-256color"
    if trace is not None:
        env["HOOP_REPLAY_TRACE"] = str(trace)
    return env


def player(
    terminals: list[Tmux],
    tmp_path: Path,
    *args: str,
    width: int = 80,
    height: int = 24,
    trace: Path | None = None,
) -> Tmux:
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg-cache")}
    if trace is not None:
        env["HOOP_REPLAY_TRACE"] = str(trace)
    terminal = Tmux(tmp_path, replay_command(*args), width=width, height=height, env=env)
    terminals.append(terminal)
    return terminal


def reference(
    terminals: list[Tmux],
    tmp_path: Path,
    recording: Path,
    at: float,
    *,
    width: int,
    height: int,
    finished: bool = False,
) -> Tmux:
    raw = output_until(recording, at, tmp_path / f"raw-{len(terminals)}.out")
    terminal = reference_terminal(tmp_path, raw, width=width, height=height, finished=finished)
    terminals.append(terminal)
    return terminal


def assert_same_terminal(shown: Tmux, expected: Tmux, timeout: float = 20.0) -> None:
    """Both show the same text, colours, cursor and screen (main or alternate); polled until
    they do, since each is still drawing when this starts."""
    deadline = time.monotonic() + timeout
    while True:
        now = (shown.screen(attributes=True), shown.state())
        want = (expected.screen(attributes=True), expected.state())
        if now == want:
            return
        if time.monotonic() > deadline:
            assert now[0] == want[0]
            assert now[1] == want[1]
        time.sleep(0.1)


# -- the screen at a moment --------------------------------------------------------------


def test_real_recording_plays_to_the_end_and_leaves_the_screen_a_real_terminal_shows(
    real_recording: Path, tmp_path: Path, terminals: list[Tmux]
) -> None:
    shown = player(terminals, tmp_path, str(real_recording), "--speed", "64", width=200, height=40)
    assert shown.exit_status() == 0
    end = events_of(real_recording)[-1][0]
    expected = reference(
        terminals, tmp_path, real_recording, end, width=200, height=40, finished=True
    )
    assert_same_terminal(shown, expected)
    assert "after-fullscreen" in shown.screen()


def test_at_shows_the_screen_of_that_moment_as_a_real_terminal_does(
    real_recording: Path, tmp_path: Path, terminals: list[Tmux], trace: Path
) -> None:
    quiet = event_time(real_recording, "60\r\n") + 0.001  # during `sleep 2`, after seq 1 60
    shown = player(
        terminals,
        tmp_path,
        str(real_recording),
        "--at",
        f"{quiet:.6f}",
        "--speed",
        "0.1",
        width=200,
        height=40,
        trace=trace,
    )
    expected = reference(terminals, tmp_path, real_recording, quiet, width=200, height=40)
    assert_same_terminal(shown, expected)
    assert "60" in shown.screen()
    assert wait_for_trace(trace, "start ") == f"start {quiet:.3f}"
    shown.keys("q")
    assert shown.exit_status() == 0


def test_at_inside_a_full_screen_program_shows_it_and_the_shell_comes_back_after(
    real_recording: Path, tmp_path: Path, terminals: list[Tmux]
) -> None:
    inside = event_time(real_recording, "\x1b[2JFULLSCREEN-VIEW") + 0.001
    shown = player(
        terminals,
        tmp_path,
        str(real_recording),
        "--at",
        f"{inside:.6f}",
        "--speed",
        "0.1",
        width=200,
        height=40,
    )
    expected = reference(terminals, tmp_path, real_recording, inside, width=200, height=40)
    assert_same_terminal(shown, expected)
    assert shown.state()[2]  # the alternate screen is on
    shown.keys("Right")  # 5 s ahead: past the end of the program and of the recording
    assert shown.exit_status() == 0
    end = events_of(real_recording)[-1][0]
    after = reference(terminals, tmp_path, real_recording, end, width=200, height=40, finished=True)
    assert_same_terminal(shown, after)
    assert not shown.state()[2]


def test_at_restores_colours_scroll_region_charsets_and_cursor(
    tmp_path: Path, terminals: list[Tmux]
) -> None:
    events = [
        (
            0.1,
            "o",
            "\x1b[1;31mbold red\x1b[0m \x1b[38;5;33mindexed\x1b[0m \x1b[48;2;10;20;30mtrue\x1b[0m\r\n",
        ),
        (0.2, "o", "\x1b(0lqqk\x1b(B wide: \u65e5\u672c e\u0301\r\n"),
        (0.3, "o", "".join(f"line {n}\r\n" for n in range(30))),
        (0.4, "o", "\x1b[5;15r\x1b[15;1H\x1b[7mreverse in region\x1b[0m\x1b[?25l\x1b[4;33m"),
        (100.0, "o", "\r\nafter-1\r\nafter-2\r\nafter-3\r\n\x1b[Kpen colour"),
        (200.0, "o", "\r\nthe end\r\n"),
    ]
    recording = write_cast(tmp_path / "modes.cast", events)
    shown = player(terminals, tmp_path, str(recording), "--at", "50")
    assert_same_terminal(shown, reference(terminals, tmp_path, recording, 50, width=80, height=24))
    # The next output lands as it did: in the scroll region, with the pen colour.
    shown.keys("Right")
    assert_same_terminal(shown, reference(terminals, tmp_path, recording, 100, width=80, height=24))


def test_grep_starts_at_the_first_output_match(
    tmp_path: Path, terminals: list[Tmux], trace: Path
) -> None:
    recording = write_cast(
        tmp_path / "g.cast",
        [
            (1.0, "o", "early-line\r\n"),
            (30.0, "o", "the need"),
            (30.5, "o", "le-42 line\r\n"),
            (200.0, "o", "late-line needle-43\r\n"),
        ],
    )
    shown = player(terminals, tmp_path, str(recording), "--grep", r"needle-\d+", trace=trace)
    screen = shown.wait_for("the needle-42 line")
    assert "early-line" in screen
    assert wait_for_trace(trace, "grep ") == r"grep needle-\d+ -> 30.500 line 4"
    assert not any("late-line" in line for line in shown.screen())
    shown.keys("q")
    assert shown.exit_status() == 0


def test_grep_finds_a_blocked_command_in_the_marks(
    tmp_path: Path, terminals: list[Tmux], trace: Path
) -> None:
    recording = write_cast(
        tmp_path / "g.cast",
        [
            (1.0, "o", "$ "),
            (20.0, "m", "blocked: DROP TABLE users"),
            (20.1, "o", "[hoop] denied\r\n$ "),
            (300.0, "o", "much-later\r\n"),
        ],
    )
    shown = player(terminals, tmp_path, str(recording), "--grep", "DROP TABLE", trace=trace)
    assert wait_for_trace(trace, "grep ") == "grep DROP TABLE -> 20.000 line 3"
    shown.wait_for("[hoop] denied")  # the output right after the mark plays on at once
    shown.keys("q")
    assert shown.exit_status() == 0


# -- keys --------------------------------------------------------------------------------


def test_space_pauses_and_resumes(tmp_path: Path, terminals: list[Tmux], trace: Path) -> None:
    recording = write_cast(tmp_path / "p.cast", [(0.2, "o", "one\r\n"), (3.0, "o", "two\r\n")])
    shown = player(terminals, tmp_path, str(recording), trace=trace)
    shown.wait_for("one")
    shown.keys("Space")
    wait_for_trace(trace, "pause ")
    time.sleep(4)  # well past the time "two" is due
    assert "two" not in shown.screen()
    shown.keys("Space")
    wait_for_trace(trace, "resume ")
    shown.wait_for("two")
    assert shown.exit_status() == 0


def test_plus_speeds_up_to_64_and_minus_slows_down(
    tmp_path: Path, terminals: list[Tmux], trace: Path
) -> None:
    recording = write_cast(
        tmp_path / "s.cast", [(0.1, "o", "start\r\n"), (200.0, "o", "after-the-gap\r\n")]
    )
    shown = player(terminals, tmp_path, str(recording), trace=trace)
    shown.wait_for("start")
    shown.keys(*["+"] * 7)  # one more than needed: the speed stops at 64
    shown.wait_for("after-the-gap", timeout=30)  # 200 s at 64x
    assert [line for line in trace_lines(trace) if line.startswith("speed")] == [
        "speed 2",
        "speed 4",
        "speed 8",
        "speed 16",
        "speed 32",
        "speed 64",
        "speed 64",
    ]
    assert shown.exit_status() == 0

    slow_trace = tmp_path / "slow.log"
    slow = player(terminals, tmp_path, str(recording), "--speed", "64", trace=slow_trace)
    slow.wait_for("start")
    slow.keys(*["-"] * 10)
    wait_for_trace(slow_trace, "speed 0.1")
    time.sleep(4)  # at 64x the gap would be over in 3.1 s
    assert "after-the-gap" not in slow.screen()
    assert [line for line in trace_lines(slow_trace) if line.startswith("speed")][-2:] == [
        "speed 0.125",
        "speed 0.1",
    ]
    slow.keys("q")
    assert slow.exit_status() == 0


def test_right_arrow_skips_ahead_across_a_long_pause(
    tmp_path: Path, terminals: list[Tmux], trace: Path
) -> None:
    recording = write_cast(
        tmp_path / "r.cast",
        [
            (0.1, "o", "before\r\n"),
            (0.2, "m", "command: sleep 600"),
            (600.0, "o", "after-the-pause\r\n"),
            (900.0, "o", "much-later\r\n"),
        ],
    )
    shown = player(terminals, tmp_path, str(recording), trace=trace)
    shown.wait_for("before")
    shown.keys("Right")
    shown.wait_for("after-the-pause")
    assert "much-later" not in "\n".join(shown.screen())
    assert wait_for_trace(trace, "at ") == "at 600.000"
    shown.keys("q")
    assert shown.exit_status() == 0


def test_n_jumps_to_the_next_command_and_left_arrow_goes_back(
    tmp_path: Path, terminals: list[Tmux], trace: Path
) -> None:
    recording = write_cast(
        tmp_path / "n.cast",
        [
            (0.1, "o", "$ "),
            (30.0, "o", "ls"),
            (30.1, "m", "command: ls"),
            (30.2, "o", "\r\nfile-a  file-b\r\n$ "),
            (90.0, "o", "\x1b[H\x1b[2J$ psql"),
            (90.1, "m", "query: SELECT 1"),
            (90.2, "o", "\r\nquery-output\r\n"),
            (500.0, "o", "end\r\n"),
        ],
    )
    shown = player(terminals, tmp_path, str(recording), trace=trace)
    shown.wait_for("$")
    shown.keys("n")
    shown.wait_for("file-a  file-b")
    assert wait_for_trace(trace, "next ") == "next 30.100 command: ls"
    shown.keys("n")
    shown.wait_for("query-output")
    assert "file-a  file-b" not in shown.screen()  # the screen was cleared at 90
    assert [line for line in trace_lines(trace) if line.startswith("next")][
        -1
    ] == "next 90.100 query: SELECT 1"
    shown.keys("Left")  # 5 s back: the screen of 85.2 s, rebuilt from the index
    shown.wait_for("file-a  file-b")
    assert "query-output" not in "\n".join(shown.screen())
    shown.keys("q")
    assert shown.exit_status() == 0


def test_n_stops_at_a_blocked_command_too(
    tmp_path: Path, terminals: list[Tmux], trace: Path
) -> None:
    recording = write_cast(
        tmp_path / "b.cast",
        [
            (0.1, "o", "$ "),
            (40.0, "o", "rm -rf /srv"),
            (40.1, "m", "blocked: denied by rule no-recursive-rm: rm -rf /srv"),
            (40.2, "o", "\r\n[hoop] denied-shown\r\n$ "),
            (300.0, "o", "end\r\n"),
        ],
    )
    shown = player(terminals, tmp_path, str(recording), trace=trace)
    shown.wait_for("$")
    shown.keys("n")
    shown.wait_for("denied-shown")
    assert wait_for_trace(trace, "next ").startswith("next 40.100 blocked: denied by rule")
    shown.keys("q")
    assert shown.exit_status() == 0


def test_q_quits_and_leaves_the_terminal_as_it_was(tmp_path: Path, terminals: list[Tmux]) -> None:
    recording = write_cast(
        tmp_path / "q.cast",
        [
            (0.1, "o", "\x1b[?1049h\x1b[?25l\x1b[?1000h\x1b[1;31mfull-screen-app"),
            (300.0, "o", "later"),
        ],
    )
    shown = player(terminals, tmp_path, str(recording))
    shown.wait_for("full-screen-app")
    assert shown.state()[2]
    shown.keys("q")
    assert shown.exit_status() == 0
    assert not shown.state()[2]  # back on the main screen
    cursor = shown._tmux(
        "display-message", "-p", "-t", "replay", "#{cursor_flag} #{mouse_any_flag}"
    )
    assert cursor.split() == ["1", "0"]  # cursor shown, mouse reporting off


def test_ctrl_c_quits_with_status_130(tmp_path: Path) -> None:
    recording = write_cast(tmp_path / "c.cast", [(0.1, "o", "running\r\n"), (300.0, "o", "later")])
    child = spawn_replay(str(recording), env=replay_env())
    child.expect("running")
    child.sendcontrol("c")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130


# -- damaged and foreign files ----------------------------------------------------------


def test_truncated_recording_plays_up_to_the_damage_and_says_where(tmp_path: Path) -> None:
    recording = write_cast(
        tmp_path / "t.cast",
        [(0.1, "o", "visible-before-the-cut\r\n"), (0.3, "m", "command: ls")],
        tail='[0.5, "o", "never-sh',
    )
    offset = recording.read_bytes().index(b'[0.5, "o"')
    child = spawn_replay(str(recording), env=replay_env())
    child.expect("visible-before-the-cut")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    output = str(child.before)
    assert "never-sh" not in output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "hoopctl:" in line]
    assert len(errors) == 1
    assert (
        f"{recording} is truncated at line 4 (byte {offset}, after 0:00.3): the last line is incomplete"
        in errors[0]
    )


def test_corrupted_recording_plays_up_to_the_damage_and_says_where(tmp_path: Path) -> None:
    recording = write_cast(
        tmp_path / "c.cast",
        [(0.1, "o", "good-line\r\n"), (0.2, "o", "second-good-line\r\n")],
        tail='[0.3, "o", "x"\x00\x00\x00garbage\n[0.4, "o", "after-damage\\r\\n"]\n',
    )
    offset = recording.read_bytes().index(b'[0.3, "o", "x"')
    child = spawn_replay(str(recording), env=replay_env())
    child.expect("second-good-line")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    output = str(child.before)
    assert "after-damage" not in output and "Traceback" not in output
    errors = [line for line in output.splitlines() if "hoopctl:" in line]
    assert len(errors) == 1
    assert f"is damaged at line 4 (byte {offset}, after 0:00.2): not valid JSON" in errors[0]


def test_seek_in_a_damaged_recording_stops_at_the_damage(tmp_path: Path) -> None:
    recording = write_cast(
        tmp_path / "d.cast",
        [(0.1, "o", "shown-at-start\r\n"), (60.0, "o", "shown-before-the-damage\r\n")],
        tail='{"not": "an event"}\n',
    )
    result = subprocess.run(
        [*replay_command(str(recording), "--at", "100", "--no-keys")],
        capture_output=True,
        text=True,
        env=replay_env(),
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 1
    assert "shown-before-the-damage" in result.stdout
    assert result.stderr.strip().endswith("not a [time, code, data] event")
    assert "is damaged at line 4" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"just some notes\n",
            "is not an asciicast recording (its first line is not a JSON header)",
        ),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not an asciicast recording"),
        (b'{"type": "session.start", "user": "alice"}\n', "no asciicast version"),
        (b'{"version": 1, "width": 80, "height": 24, "stdout": []}\n', "asciicast version 1 file"),
        (b"", "is empty"),
    ],
)
def test_a_file_that_is_not_a_recording_says_so_in_one_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "not-a.cast"
    path.write_bytes(content)
    result = subprocess.run(
        replay_command(str(path)),
        capture_output=True,
        text=True,
        env=replay_env(),
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("hoopctl: ") and message in result.stderr


def test_a_recording_made_by_asciinema_plays(tmp_path: Path, terminals: list[Tmux]) -> None:
    from tests.replay_helpers import record_with_asciinema

    recording = record_with_asciinema(tmp_path / "a.cast", "printf 'made-by-asciinema\\n'; seq 1 5")
    shown = player(terminals, tmp_path, str(recording))
    assert shown.exit_status() == 0
    screen = shown.screen()
    assert screen[:6] == ["made-by-asciinema", "1", "2", "3", "4", "5"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--speed", "100"], "speed must be between 0.1 and 64"),
        (["--speed", "0.05"], "speed must be between 0.1 and 64"),
        (["--at", "soon"], "'soon' is not a time offset"),
        (["--at", "10:00"], "offset 10:00.0 is past the end"),
        (["--grep", "(unclosed"], "is not a valid regular expression"),
        (["--idle-limit", "0"], "idle limit must be a positive number"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    recording = write_cast(tmp_path / "o.cast", [(0.1, "o", "x"), (2.0, "o", "y")])
    result = subprocess.run(
        replay_command(str(recording), "--no-keys", *args),
        capture_output=True,
        text=True,
        env=replay_env(),
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_grep_without_a_match_says_so(tmp_path: Path) -> None:
    recording = write_cast(tmp_path / "o.cast", [(0.1, "o", "nothing here\r\n")])
    with pytest.raises(NoMatch, match="no match for 'DROP'"):
        play(recording, grep="DROP", out=io.StringIO(), keys=False)


def test_offsets_are_read_in_every_usual_form() -> None:
    assert parse_offset("90") == 90
    assert parse_offset("90.5") == 90.5
    assert parse_offset("1m30s") == 90
    assert parse_offset("1h2m3s") == 3723
    assert parse_offset("1:30") == 90
    assert parse_offset("01:02:03.5") == 3723.5
    assert parse_offset(12) == 12
    for bad in ("-5", "1:xx", "soon", "", "1:2:3:4", "nan", "inf"):
        with pytest.raises(ReplayUsageError):
            parse_offset(bad)


# -- follow ------------------------------------------------------------------------------


def append(path: Path, *events: tuple[float, str, str], raw: str = "") -> None:
    with path.open("a", encoding="utf-8") as file:
        for event in events:
            file.write(json.dumps(list(event)) + "\n")
        file.write(raw)


def test_follow_starts_at_the_live_screen_and_plays_what_is_added_until_the_end_mark(
    tmp_path: Path,
) -> None:
    recording = write_cast(tmp_path / "live.cast", [(0.1, "o", "already-there\r\n")])
    child = spawn_replay(str(recording), "--follow", env=replay_env())
    child.expect("already-there")
    append(recording, (5.0, "o", "arrived-later\r\n"))
    child.expect("arrived-later")
    append(recording, raw='[6.0, "o", "half-')  # a line being written
    time.sleep(0.5)
    append(recording, raw='written\\r\\n"]\n')
    child.expect("half-written")
    append(recording, (7.0, "m", "end: closed"))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_follow_with_a_callable_stops_when_the_session_has_ended(tmp_path: Path) -> None:
    recording = write_cast(tmp_path / "live.cast", [(0.1, "o", "start\r\n")])
    ended = threading.Event()
    out = io.StringIO()

    def writer() -> None:
        time.sleep(0.5)
        append(recording, (1.0, "o", "live-output\r\n"))
        time.sleep(0.5)
        ended.set()

    thread = threading.Thread(target=writer)
    thread.start()
    status = play(recording, follow=ended.is_set, at=0, out=out, keys=False, speed=64)
    thread.join()
    assert status == 0
    assert "start" in out.getvalue() and "live-output" in out.getvalue()


def test_play_writes_to_any_stream_without_a_terminal(tmp_path: Path) -> None:
    recording = write_cast(
        tmp_path / "s.cast", [(0.1, "o", "\x1b[32mgreen\x1b[0m\r\n"), (0.2, "o", "bye\r\n")]
    )
    out = io.BytesIO()
    assert play(recording, out=out, keys=False, speed=64) == 0
    assert out.getvalue().endswith(b"\x1b[32mgreen\x1b[0m\r\nbye\r\n")
    assert PYTHON  # the entry point used above is this interpreter's


def test_follow_waits_for_a_header_still_being_written(tmp_path: Path) -> None:
    recording = tmp_path / "starting.cast"
    recording.write_text('{"version": 2, "wid')  # the download has only just begun
    ended = threading.Event()
    out = io.StringIO()

    def writer() -> None:
        time.sleep(0.5)
        append(recording, raw='th": 40, "height": 5}\n')
        append(recording, (0.5, "o", "first-bytes\r\n"))
        time.sleep(0.5)
        ended.set()

    thread = threading.Thread(target=writer)
    thread.start()
    status = play(recording, follow=ended.is_set, out=out, keys=False)
    thread.join()
    assert status == 0
    assert "first-bytes" in out.getvalue()
