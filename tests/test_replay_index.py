"""The recording index, the command timeline and export, on real recordings made through a
real broker, on a recording made by asciinema itself, and on synthetic ones."""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
from pathlib import Path

import pexpect
import pytest

from bench.replay import write_synthetic_recording
from broker.recording import read_events
from hoopctl.replay import (
    NotARecording,
    RecordingDamaged,
    ReplayUsageError,
    commands,
    export,
    index_paths,
    open_index,
)
from hoopctl.replay import index as index_module
from hoopctl.replay._cast import CastFile
from hoopctl.replay._terminal import Terminal
from hoopctl.replay.index import apply_event, load_index
from tests.replay_helpers import (
    event_time,
    events_of,
    expected_screen,
    record_real_session,
    record_with_asciinema,
    write_cast,
)


@pytest.fixture(scope="module")
def real_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_real_session(tmp_path_factory.mktemp("real-session"))


@pytest.fixture
def recording(real_recording: Path, tmp_path: Path) -> Path:
    """A fresh copy of the real recording (no index beside it yet)."""
    copy = tmp_path / "session.cast"
    shutil.copyfile(real_recording, copy)
    return copy


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture
def small_keyframes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyframes every 512 bytes, so that small recordings get many of them."""
    monkeypatch.setattr(index_module, "KEYFRAME_BYTES", 512)
    monkeypatch.setattr(index_module, "KEYFRAME_SECONDS", 0.01)
    monkeypatch.setattr(index_module, "KEYFRAME_MIN_BYTES", 64)


def screen_from_start(path: Path, time: float) -> list[str]:
    """The emulator fed every event up to ``time`` from the start (no keyframe)."""
    with CastFile(path) as cast:
        terminal = Terminal(cast.header.width, cast.header.height)
        while (event := cast.read()) is not None and event.time <= time:
            apply_event(terminal, event)
    return terminal.lines()


def sample_times(path: Path) -> list[float]:
    times = sorted({at for at, _, _ in events_of(path)})
    step = max(1, len(times) // 40)
    return [0.0, *times[::step], times[-1], times[-1] + 10]


# -- the index --------------------------------------------------------------------------


def test_index_is_written_beside_the_recording_private_and_reused_while_unchanged(
    recording: Path,
) -> None:
    index = open_index(recording)
    beside = recording.with_name(recording.name + ".idx")
    assert index.path == beside
    assert beside.stat().st_mode & 0o777 == 0o600
    written = beside.stat().st_mtime_ns
    again = open_index(recording)
    assert again.path == beside
    assert again._blobs is None  # loaded from the file, not built again
    assert beside.stat().st_mtime_ns == written
    assert again.keyframes == index.keyframes
    assert again.marks == index.marks
    assert again.duration == pytest.approx(events_of(recording)[-1][0])


def test_screen_at_any_time_equals_the_screen_built_from_the_start_on_a_real_recording(
    recording: Path, small_keyframes: None
) -> None:
    index = open_index(recording)
    assert len(index.keyframes) > 5
    for time in sample_times(recording):
        assert index.screen_at(time) == screen_from_start(recording, time), time


def test_screen_at_matches_plain_pyte_outside_full_screen_programs(recording: Path) -> None:
    index = open_index(recording)
    quiet = event_time(recording, "60\r\n")  # seq's last line, then `sleep 2`
    assert index.screen_at(quiet) == expected_screen(recording, quiet)
    assert "60" in index.screen_at(quiet)


def test_full_screen_program_gets_its_own_screen_and_the_shell_screen_comes_back(
    recording: Path,
) -> None:
    index = open_index(recording)
    inside = event_time(recording, "\x1b[2JFULLSCREEN-VIEW")
    terminal, _ = index.terminal_at(inside)
    assert terminal.alternate_screen
    assert terminal.lines()[0] == "FULLSCREEN-VIEW"
    assert not any("hello-replay" in line for line in terminal.lines())
    after = event_time(recording, "after-fullscreen\r\n")
    terminal, _ = index.terminal_at(after)
    assert not terminal.alternate_screen
    assert any(line.endswith("echo after-fullscreen") for line in terminal.lines())
    assert "FULLSCREEN-VIEW" not in terminal.lines()


def test_keyframes_of_a_large_recording_bound_the_work_of_a_seek(tmp_path: Path) -> None:
    path = tmp_path / "big.cast"
    info = write_synthetic_recording(path, megabytes=3, minutes=5)
    index = open_index(path)
    offsets = [keyframe.offset for keyframe in index.keyframes]
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    # A keyframe at the first token boundary after KEYFRAME_BYTES (events are <= 16 KiB).
    assert max(gaps) < index_module.KEYFRAME_BYTES + 64 * 1024
    assert index.duration == pytest.approx(info["duration"])
    end = info["duration"]
    assert index.screen_at(end) == screen_from_start(path, end)
    assert any("needle-at-the-end" in line for line in index.screen_at(end))
    middle = index.keyframes[len(index.keyframes) // 2].time + 0.5
    assert index.screen_at(middle) == screen_from_start(path, middle)


def test_index_is_extended_when_the_recording_grows(tmp_path: Path, small_keyframes: None) -> None:
    source = tmp_path / "source.cast"
    write_synthetic_recording(source, megabytes=0.2, minutes=2)
    data = source.read_bytes()
    live = tmp_path / "live.cast"
    cut = data.index(b"\n", len(data) // 2) + 1
    live.write_bytes(data[:cut] + data[cut : cut + 40])  # half, and a line still being written
    first = open_index(live)
    assert first.end.offset == cut
    live.write_bytes(data)
    grown = open_index(live)
    assert grown.keyframes[: len(first.keyframes)] == first.keyframes  # resumed, not rebuilt
    assert grown.end.offset == len(data)
    assert [mark.label for mark in grown.marks] == [
        data for _, code, data in events_of(source) if code == "m"
    ]
    end = events_of(source)[-1][0]
    assert grown.screen_at(end) == screen_from_start(source, end)


def test_index_is_rebuilt_when_the_recording_is_replaced(tmp_path: Path) -> None:
    path = write_cast(
        tmp_path / "s.cast", [(1.0, "o", "first-version\r\n"), (2.0, "m", "command: a")]
    )
    assert [mark.label for mark in open_index(path).marks] == ["command: a"]
    write_cast(path, [(1.0, "o", "other-version\r\n"), (2.0, "m", "command: b")])
    index = open_index(path)
    assert [mark.label for mark in index.marks] == ["command: b"]
    assert index.screen_at(5)[0] == "other-version"


def test_index_goes_to_the_cache_when_it_cannot_be_written_beside_the_recording(
    tmp_path: Path, private_cache: Path
) -> None:
    path = write_cast(tmp_path / "s.cast", [(1.0, "o", "hello\r\n")])
    # Something that is not a file holds the index's name beside the recording.
    (tmp_path / "s.cast.idx").mkdir()
    index = open_index(path)
    assert (
        index.path is not None and index.path.parent == private_cache / "hoopctl" / "replay-index"
    )
    assert index.path == index_paths(path)[1]
    assert load_index(path) is not None
    assert index.screen_at(2)[0] == "hello"


def test_index_of_a_damaged_recording_stops_at_the_damage(tmp_path: Path) -> None:
    path = write_cast(
        tmp_path / "d.cast",
        [(1.0, "o", "before-damage\r\n"), (2.0, "m", "command: ls")],
        tail='[3.0, "o", "fine"]\nTHIS IS NOT JSON\n[4.0, "o", "after-damage"]\n',
    )
    index = open_index(path)
    assert index.damage is not None
    assert (index.damage.line, index.damage.time) == (5, 3.0)
    assert index.damage.offset == path.read_bytes().index(b"THIS IS NOT JSON")
    assert index.screen_at(100)[0] == "before-damage"
    assert open_index(path).damage is not None  # the saved index keeps the damage


def test_a_file_that_is_not_a_recording_is_refused_in_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\nworld\n")
    with pytest.raises(NotARecording, match="not an asciicast recording"):
        open_index(text)
    jsonl = tmp_path / "audit.jsonl"
    jsonl.write_text('{"type": "session.start"}\n')
    with pytest.raises(NotARecording, match="no asciicast version"):
        open_index(jsonl)
    empty = tmp_path / "empty.cast"
    empty.write_bytes(b"")
    with pytest.raises(NotARecording, match="is empty"):
        open_index(empty)


# -- commands ---------------------------------------------------------------------------


def test_commands_lists_the_marks_of_a_real_session_in_order(recording: Path) -> None:
    found = commands(recording)
    kinds = [(kind, text) for _, kind, text in found]
    assert ("command", "echo hello-replay") in kinds
    assert ("command", "seq 1 60; sleep 2") in kinds
    assert any(
        kind == "blocked" and "rm -rf /tmp/hoop-replay-nothing" in text for kind, text in kinds
    )
    assert ("command", "echo after-fullscreen") in kinds
    times = [time for time, _, _ in found]
    assert times == sorted(times) and times[0] > 0
    open_index(recording)
    assert commands(recording) == found  # the same from the index


def test_commands_of_a_damaged_recording_says_where_and_keeps_what_came_before(
    tmp_path: Path,
) -> None:
    path = write_cast(
        tmp_path / "d.cast",
        [(1.0, "m", "command: one"), (2.0, "m", "query: SELECT 1")],
        tail='[3.0, "m", "command: thr',
    )
    with pytest.raises(
        RecordingDamaged, match=r"truncated at line 4 \(byte \d+, after 0:02.0\)"
    ) as caught:
        commands(path)
    assert [(kind, text) for _, kind, text in caught.value.partial] == [
        ("command", "one"),
        ("query", "SELECT 1"),
    ]


# -- export -----------------------------------------------------------------------------


def test_export_cast_is_the_recording_itself_and_asciinema_plays_it(
    recording: Path, tmp_path: Path
) -> None:
    out = io.BytesIO()
    export(recording, "cast", out)
    assert out.getvalue() == recording.read_bytes()
    exported = tmp_path / "exported.cast"
    exported.write_bytes(out.getvalue())
    # asciinema cat reads /dev/tty: give it a terminal.
    child = pexpect.spawn("asciinema", ["cat", str(exported)], encoding="utf-8", timeout=30)
    child.expect("hello-replay")
    child.expect("after-fullscreen")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_export_json_is_one_document_with_the_header_and_every_event(recording: Path) -> None:
    out = io.StringIO()
    export(recording, "json", out)
    document = json.loads(out.getvalue())
    header, events = read_events(recording)
    assert document["header"] == header
    assert [tuple(event) for event in document["events"]] == [
        (pytest.approx(time), code, data) for time, code, data in events
    ]
    assert "damage" not in document


def test_export_text_is_the_screen_as_shown_with_the_scrollback(recording: Path) -> None:
    out = io.StringIO()
    export(recording, "text", out)
    text = out.getvalue()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert any(line.endswith("echo hello-replay") for line in lines)
    assert "hello-replay" in lines
    assert "red-text" in lines
    numbers = [int(line) for line in lines if line.isdigit()]
    assert numbers == list(range(1, 61))  # every line, once, in order, scrolled off or not
    assert any("denied by rule no-recursive-rm" in line for line in lines)
    assert "after-fullscreen" in lines


def test_export_of_a_damaged_recording_writes_up_to_the_damage_then_says_where(
    tmp_path: Path,
) -> None:
    good = [(1.0, "o", "kept-output\r\n"), (2.0, "m", "command: ls")]
    path = write_cast(tmp_path / "d.cast", good, tail='[3.0, "o"]\n[4.0, "o", "lost"]\n')
    damage_at = path.read_bytes().index(b'[3.0, "o"]')

    cast_out = io.BytesIO()
    with pytest.raises(
        RecordingDamaged,
        match=r"damaged at line 4 \(byte \d+, after 0:02.0\): not a \[time, code, data\] event",
    ):
        export(path, "cast", cast_out)
    assert cast_out.getvalue() == path.read_bytes()[:damage_at]

    json_out = io.StringIO()
    with pytest.raises(RecordingDamaged):
        export(path, "json", json_out)
    document = json.loads(json_out.getvalue())
    assert len(document["events"]) == 2
    assert document["damage"] == {
        "line": 4,
        "offset": damage_at,
        "time": 2.0,
        "truncated": False,
        "reason": "not a [time, code, data] event",
    }

    text_out = io.StringIO()
    with pytest.raises(RecordingDamaged):
        export(path, "text", text_out)
    assert text_out.getvalue() == "kept-output\n"


def test_export_rejects_an_unknown_format(recording: Path) -> None:
    with pytest.raises(ReplayUsageError, match="unknown format 'html'"):
        export(recording, "html", io.StringIO())


# -- other recorders --------------------------------------------------------------------


def test_a_recording_made_by_asciinema_indexes_and_exports(tmp_path: Path) -> None:
    path = record_with_asciinema(
        tmp_path / "asciinema.cast",
        "printf 'from-asciinema\\n'; sleep 0.2; printf '\\033[32mgreen\\033[0m\\n'; seq 1 40",
    )
    index = open_index(path)
    end = events_of(path)[-1][0]
    assert index.screen_at(end) == expected_screen(path, end)
    out = io.StringIO()
    export(path, "text", out)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["from-asciinema", "green"]
    assert [int(line) for line in lines[2:]] == list(range(1, 41))


def test_an_asciicast_v3_recording_indexes_with_absolute_times(tmp_path: Path) -> None:
    path = tmp_path / "v3.cast"
    path.write_text(
        json.dumps({"version": 3, "term": {"cols": 40, "rows": 5}}) + "\n"
        "# a comment line\n"
        + json.dumps([0.5, "o", "one\r\n"])
        + "\n"
        + json.dumps([1.5, "m", "command: two"])
        + "\n"
        + json.dumps([1.0, "o", "two\r\n"])
        + "\n"
        + json.dumps([0.0, "x", "0"])
        + "\n"
    )
    index = open_index(path)
    assert index.duration == pytest.approx(3.0)
    assert index.screen_at(1.0)[:2] == ["one", ""]
    assert index.screen_at(3.0)[:2] == ["one", "two"]
    assert [(time, kind, text) for time, kind, text in commands(path)] == [(2.0, "command", "two")]


def test_a_very_large_terminal_size_in_a_header_is_clamped(tmp_path: Path) -> None:
    path = write_cast(
        tmp_path / "huge.cast",
        [(1.0, "o", "x"), (2.0, "r", "99999999x99999999")],
        width=10**9,
        height=10**9,
    )
    index = open_index(path)
    assert index.header.width == 1000
    terminal, _ = index.terminal_at(5)
    assert (terminal.width, terminal.height) == (1000, 1000)
    assert os.path.getsize(index.path) < 100_000  # type: ignore[arg-type]


# -- the emulator ---------------------------------------------------------------------------

SOUP = [
    "hello", "world ", "\r\n", "\n", "\r", "\t", "\b", "x" * 100, "abc " * 30, "é", "日本", "e\u0301",
    "\x1b[31m", "\x1b[1;44m", "\x1b[0m", "\x1b[m", "\x1b[38;5;200m", "\x1b[48;2;1;2;3m",
    "\x1b[H", "\x1b[5;10H", "\x1b[K", "\x1b[1K", "\x1b[3A", "\x1b[2B", "\x1b[10C", "\x1b[4D",
    "\x1b[2L", "\x1b[3M", "\x1b[2P", "\x1b[4@", "\x1b[3X", "\x1b[5;20r", "\x1b[r", "\x1b7", "\x1b8",
    "\x1bM", "\x1bD", "\x1bE", "\x1b]0;title\x07", "\x1b]133;A\x07", "\x1b(0lqqk\x1b(B",
    "\x1b[?25l", "\x1b[?25h", "\x1b[?7l", "\x1b[?7h", "\x1b[4h", "\x1b[4l", "\x1b[?6h", "\x1b[?6l",
    "\x1b[20h", "\x1b[20l", "\x00", "\x7f", "\x1b[>c", "\x1b[=5h", "\x1b)0", "\x0f",
    "\x1b", "[", "3", "m", "]", ";",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
def test_fast_emulator_does_what_pyte_does_cell_for_cell(seed: int) -> None:
    import random

    import pyte

    rng = random.Random(seed)
    data = "".join(rng.choice(SOUP) for _ in range(6000))
    chunks = []
    while data:
        size = rng.randint(1, 80)
        chunks.append(data[:size])
        data = data[size:]
    screen = pyte.Screen(80, 24)
    stream = pyte.Stream(screen)
    stream.use_utf8 = False
    screen.g1_charset = pyte.charsets.LAT1_MAP  # as xterm (and our emulator) start
    terminal = Terminal(80, 24)
    for number, chunk in enumerate(chunks):
        stream.feed(chunk)
        terminal.feed(chunk)
        if number % 25 == 0:
            ours = terminal.screen
            for y in range(24):
                for x in range(81):
                    assert ours.buffer[y][x] == screen.buffer[y][x], (number, y, x)
            assert (ours.cursor.x, ours.cursor.y, ours.cursor.attrs) == (
                screen.cursor.x,
                screen.cursor.y,
                screen.cursor.attrs,
            )
            assert ours.mode == screen.mode and ours.margins == screen.margins


@pytest.mark.parametrize("seed", range(4))
def test_a_restored_snapshot_goes_on_exactly_like_the_original(seed: int) -> None:
    import random

    rng = random.Random(seed)
    soup = [*SOUP, "\x1b[?1049h", "\x1b[?1049l", "\x1b[?47h", "\x1b[?47l", "\x0e", "\x1bc"]
    chunks = ["".join(rng.choice(soup) for _ in range(rng.randint(1, 20))) for _ in range(1200)]
    original = Terminal(80, 24)
    for index, chunk in enumerate(chunks):
        original.feed(chunk)
        if index % 200 == 100 and original.at_ground:
            copy = Terminal.from_snapshot(original.snapshot())
            for later in chunks[index + 1 : index + 200]:
                copy.feed(later)
            check = Terminal.from_snapshot(original.snapshot())
            for later in chunks[index + 1 : index + 200]:
                check.feed(later)
            assert copy.snapshot() == check.snapshot()
            reference = Terminal(80, 24)
            for earlier in chunks[: index + 200]:
                reference.feed(earlier)
            assert copy.lines() == reference.lines()
            assert copy.snapshot() == reference.snapshot()


def test_a_line_without_end_is_damage_not_a_memory_hog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hoopctl.replay import _cast

    monkeypatch.setattr(_cast, "LINE_LIMIT", 4096)
    path = write_cast(tmp_path / "long.cast", [(1.0, "o", "fine\r\n")], tail="x" * 100_000 + "\n")
    index = open_index(path)
    assert index.damage is not None
    assert index.damage.reason == "a line longer than 4,096 bytes"
    assert index.damage.line == 3


def test_the_public_api_names_functions_even_after_every_module_is_loaded() -> None:
    # hoopctl.replay loads its modules on first use; no module may shadow a function's name.
    import importlib
    import pkgutil

    import hoopctl.replay as replay

    for module in pkgutil.iter_modules(replay.__path__):
        if module.name != "__main__":
            importlib.import_module(f"hoopctl.replay.{module.name}")
    for name in replay.__all__:
        value = getattr(replay, name)
        assert not isinstance(value, type(replay)), name
    assert callable(replay.commands) and callable(replay.export) and callable(replay.play)
