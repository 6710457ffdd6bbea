"""Session recordings: asciicast v2 files checked by reading them back and with the real
``asciinema`` binary; crashes and disk failures are real (SIGKILL, RLIMIT_FSIZE, /dev/full)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pexpect
import pytest

from broker.errors import BrokerError
from broker.recording import Recorder, RecordingError, RecordingHeader, read_events

REPO = Path(__file__).resolve().parent.parent
ASCIINEMA = shutil.which("asciinema")
needs_asciinema = pytest.mark.skipif(
    ASCIINEMA is None,
    reason="the asciinema binary is not installed (apt-get install -y asciinema)",
)


def header(**changes: object) -> RecordingHeader:
    fields: dict[str, object] = {
        "session_id": "s-42",
        "user": "alice",
        "target": "db-1",
        "width": 120,
        "height": 40,
        "started_at": 1_700_000_000.75,
    }
    fields.update(changes)
    return RecordingHeader(**fields)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def asciinema_cat(path: Path) -> tuple[int, str]:
    """Run ``asciinema cat`` on a terminal (it opens /dev/tty); its status and output."""
    child = pexpect.spawn(
        ASCIINEMA or "asciinema",
        ["cat", str(path)],
        encoding="utf-8",
        codec_errors="replace",
        timeout=120,
        dimensions=(40, 120),
    )
    output = child.read()
    child.close()
    assert child.signalstatus is None, output
    return child.exitstatus, output


def run_child(script: str, *args: str, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,  # type: ignore[arg-type]
    )


CHILD_HEADER = (
    "RecordingHeader(session_id='s-1', user='alice', target='db-1', "
    "width=80, height=24, started_at=time.time())"
)


# -- format ----------------------------------------------------------------------------


def test_header_fields(tmp_path: Path) -> None:
    path = tmp_path / "rec" / "s-42.cast"
    rec = Recorder(path, header(command="/bin/bash -l", title="alice@db-1"))
    # The header is on disk before any event and before close.
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {
        "version": 2,
        "width": 120,
        "height": 40,
        "timestamp": 1_700_000_000,
        "env": {"TERM": "xterm-256color"},
        "title": "alice@db-1",
        "command": "/bin/bash -l",
        "hoop": {"session_id": "s-42", "user": "alice", "target": "db-1"},
    }
    assert rec.bytes_written == path.stat().st_size
    rec.close()
    parsed, events = read_events(path)
    assert parsed == first
    assert events == []


def test_header_without_title_or_command(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    Recorder(path, header(term="screen")).close()
    parsed, _ = read_events(path)
    assert "title" not in parsed and "command" not in parsed
    assert parsed["env"] == {"TERM": "screen"}


def test_recording_error_is_a_broker_error() -> None:
    assert issubclass(RecordingError, BrokerError)


def test_event_kinds_and_monotonic_times(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    clock = FakeClock(100.0)
    rec = Recorder(path, header(), clock=clock)
    clock.now = 100.25
    rec.output(b"$ ")
    clock.now = 100.5
    rec.input(b"l")
    clock.now = 100.4  # a clock that steps back must not make times go back
    rec.input(b"s\r")
    clock.now = 101.0000004
    rec.resize(100, 30)
    clock.now = 102.123456789
    rec.mark("after resize")
    rec.close()

    _, events = read_events(path)
    assert events == [
        (0.25, "o", "$ "),
        (0.5, "i", "l"),
        (0.5, "i", "s\r"),
        (1.0, "r", "100x30"),
        (2.123457, "m", "after resize"),
    ]
    # Times are written with six decimals.
    lines = path.read_text().splitlines()[1:]
    assert all(re.match(r"^\[\d+\.\d{6}, ", line) for line in lines), lines


def test_real_clock_times_do_not_decrease(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    with Recorder(path, header()) as rec:
        for i in range(200):
            rec.output(f"{i}\r\n".encode())
    _, events = read_events(path)
    times = [t for t, _, _ in events]
    assert len(times) == 200
    assert times == sorted(times)
    assert times[0] >= 0


def test_utf8_split_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    text = "héllo € 😀 wörld"
    typed = "naïve ✓"
    data, keys = text.encode(), typed.encode()
    with Recorder(path, header()) as rec:
        # Interleave single bytes of both streams: each stream keeps its own decoder.
        for i in range(max(len(data), len(keys))):
            rec.output(data[i : i + 1])
            rec.input(keys[i : i + 1])
    _, events = read_events(path)
    assert "".join(d for _, c, d in events if c == "o") == text
    assert "".join(d for _, c, d in events if c == "i") == typed
    assert all("\ufffd" not in d for _, _, d in events)
    # No empty events for chunks that held only part of a character.
    assert all(d for _, _, d in events)


def test_invalid_bytes_and_escape_sequences(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    with Recorder(path, header()) as rec:
        rec.output(b"\x1b[31mred\x1b[0m\r\n")
        rec.output(b"bin\xff\xfe\x00\x07\xc3")  # ends in half a character
        rec.output(b"(\r\n")  # ... which is never completed
        rec.output(b"tail\xe2\x82")  # left half-decoded at close
    raw = path.read_text(encoding="utf-8")
    assert "\\u001b[31mred" in raw  # escapes are kept, JSON-escaped
    _, events = read_events(path)
    out = "".join(d for _, c, d in events if c == "o")
    assert out == "\x1b[31mred\x1b[0m\r\nbin\ufffd\ufffd\x00\x07\ufffd(\r\ntail\ufffd"
    for line in raw.splitlines():
        json.loads(line)


def test_redacted_input_never_contains_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    with Recorder(path, header(), flush_interval=0) as rec:
        rec.input(b"sudo -i\r")
        rec.output(b"[sudo] password for alice: ")
        rec.input(b"hunter2", redact=True)
        rec.input(b"\r", redact=True)
        # A secret whose last character is split across a redacted chunk and the next one.
        rec.input(b"p\xc3\xa9t\xc3", redact=True)
        rec.input(b"\xa9\rwhoami\r")
    raw = path.read_bytes()
    for secret in (b"hunter2", b"hunter", "pété".encode(), b"\\u00e9", "é".encode()):
        assert secret not in raw
    _, events = read_events(path)
    assert [d for _, c, d in events if c == "i"] == [
        "sudo -i\r",
        "*******",
        "*",
        "***",
        "*\rwhoami\r",
    ]


def test_resize_and_marks(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    with Recorder(path, header()) as rec:
        rec.resize(80, 24)
        rec.mark("policy: command blocked")
        rec.mark('naïve "quoted" \\ label\n')
        rec.resize(200, 60)
        with pytest.raises(ValueError):
            rec.resize(0, 24)
    _, events = read_events(path)
    assert [(c, d) for _, c, d in events] == [
        ("r", "80x24"),
        ("m", "policy: command blocked"),
        ("m", 'naïve "quoted" \\ label\n'),
        ("r", "200x60"),
    ]


def test_flush_interval_and_explicit_flush(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    clock = FakeClock(0.0)
    rec = Recorder(path, header(), flush_interval=0.5, clock=clock)
    size = path.stat().st_size
    rec.output(b"one")
    clock.now = 0.3
    rec.output(b"two")
    assert path.stat().st_size == size  # still buffered
    assert rec.bytes_written == size
    clock.now = 0.6
    rec.output(b"three")  # 0.6s since the last flush: written now
    assert [d for _, _, d in read_events(path)[1]] == ["one", "two", "three"]
    rec.output(b"four")
    assert len(read_events(path)[1]) == 3
    rec.flush()  # the session's one-second timer
    assert [d for _, _, d in read_events(path)[1]] == ["one", "two", "three", "four"]
    assert rec.bytes_written == path.stat().st_size
    rec.close()


def test_close_is_idempotent_and_later_events_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = Recorder(path, header())
    rec.output(b"x")
    rec.close()
    rec.close()
    rec.output(b"late")
    rec.input(b"late")
    rec.mark("late")
    rec.flush()
    assert rec.closed
    assert [d for _, _, d in read_events(path)[1]] == ["x"]


def test_burst_of_10_mb_is_recorded_completely(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    # 37 bytes with multibyte characters and escapes: chunk edges split characters.
    pattern = "héllo wörld € \x1b[1m😀\x1b[0m\t|".encode()
    data = (pattern * (10 * 1024 * 1024 // len(pattern) + 1))[: 10 * 1024 * 1024]
    data = data[: len(data) - len(data) % 4] + b"end\n"  # cut on a character boundary
    with Recorder(path, header()) as rec:
        for i in range(0, len(data), 4096):
            rec.output(data[i : i + 4096])
    _, events = read_events(path)
    assert len(events) >= 2500
    assert "".join(d for _, _, d in events).encode() == data.decode("utf-8", "replace").encode()
    assert rec.bytes_written == path.stat().st_size


# -- files and permissions -------------------------------------------------------------


def test_refuses_to_overwrite_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    path.write_text("precious\n")
    with pytest.raises(RecordingError, match="already exists"):
        Recorder(path, header())
    with pytest.raises(RecordingError, match="already exists"):
        Recorder(path, header(), strict=False)
    assert path.read_text() == "precious\n"


def test_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    path = tmp_path / "s.cast"
    path.symlink_to(target)
    with pytest.raises(RecordingError):
        Recorder(path, header())
    assert not target.exists()


def test_permissions(tmp_path: Path) -> None:
    path = tmp_path / "recordings" / "2024" / "s.cast"
    old = os.umask(0o022)
    try:
        Recorder(path, header()).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_unwritable_directory_is_a_recording_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RecordingError, match="cannot be created"):
        Recorder(blocker / "s.cast", header())


# -- asciinema -------------------------------------------------------------------------


@needs_asciinema
def test_asciinema_cat_accepts_the_recording(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    with Recorder(path, header(title="t", command="bash")) as rec:
        rec.output(b"welcome to db-1\r\n$ ")
        rec.input(b"echo h\xc3")
        rec.input(b"\xa9llo\r")
        rec.output(b"\x1b[32mh\xc3")
        rec.output(b"\xa9llo\x1b[0m \xff\r\n")
        rec.resize(100, 30)
        rec.mark("checkpoint")
        rec.input(b"secret", redact=True)
        rec.output(b"bye\r\n")
    status, out = asciinema_cat(path)
    assert status == 0, out
    assert "welcome to db-1" in out
    assert "\x1b[32mhéllo\x1b[0m \ufffd" in out
    assert "bye" in out
    assert "secret" not in out


# -- crashes and failures --------------------------------------------------------------


KILLED_CHILD = f"""
import sys, time
from pathlib import Path
from broker.recording import Recorder, RecordingHeader
rec = Recorder(Path(sys.argv[1]), {CHILD_HEADER}, flush_interval=3600)
rec.output(b"before the crash\\r\\n")
rec.input(b"ls\\r")
rec.mark("checkpoint")
rec.flush()
rec.output(b"never flushed\\r\\n")
print("flushed", flush=True)
time.sleep(60)
"""


@needs_asciinema
def test_killed_broker_leaves_a_file_valid_up_to_the_last_flush(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    child = run_child(KILLED_CHILD, str(path))
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "flushed\n", child.stderr
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]

    parsed, events = read_events(path)
    assert parsed["hoop"]["session_id"] == "s-1"
    assert [(c, d) for _, c, d in events] == [
        ("o", "before the crash\r\n"),
        ("i", "ls\r"),
        ("m", "checkpoint"),
    ]
    status, out = asciinema_cat(path)
    assert status == 0, out
    assert "before the crash" in out
    assert "never flushed" not in out


STREAMING_CHILD = f"""
import sys, time
from pathlib import Path
from broker.recording import Recorder, RecordingHeader
rec = Recorder(Path(sys.argv[1]), {CHILD_HEADER}, flush_interval=0.01)
i = 0
while True:
    rec.output(("line %d " % i).encode() + b"x" * 300 + b"\\r\\n")
    i += 1
    if i % 50 == 0:
        time.sleep(0.001)
"""


@needs_asciinema
def test_killed_while_streaming(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    child = run_child(STREAMING_CHILD, str(path))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if path.exists() and path.stat().st_size > 2_000_000:
                break
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]

    _, events = read_events(path)
    assert len(events) > 1000
    for i, (_, code, data) in enumerate(events):
        assert (code, data) == ("o", f"line {i} " + "x" * 300 + "\r\n")
    status, out = asciinema_cat(path)
    assert status == 0, out[-2000:]
    assert f"line {len(events) - 1} " in out


FSIZE_CHILD = f"""
import json, resource, signal, sys, time
from pathlib import Path
from broker.recording import Recorder, RecordingError, RecordingHeader
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
rec = Recorder(Path(sys.argv[1]), {CHILD_HEADER}, strict=sys.argv[2] == "strict", flush_interval=0)
try:
    for i in range(10000):
        rec.output(b"y" * 100 + b"%d\\r\\n" % i)
except RecordingError as exc:
    rec.close()
    print(json.dumps({{"raised": str(exc), "failed": str(rec.failed), "written": rec.bytes_written}}))
    sys.exit(3)
rec.close()
print(json.dumps({{"raised": None, "failed": str(rec.failed), "written": rec.bytes_written}}))
"""


def run_fsize_child(path: Path, mode: str) -> tuple[int, dict[str, object]]:
    child = run_child(FSIZE_CHILD, str(path), mode)
    out, err = child.communicate(timeout=60)
    assert out, err
    return child.returncode, json.loads(out)


@needs_asciinema
def test_strict_mode_raises_when_the_file_size_limit_is_hit(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    status, result = run_fsize_child(path, "strict")
    assert status == 3
    assert result["raised"] == f"recording {path} cannot be written: File too large"
    assert result["failed"] == result["raised"]
    # The write that crossed the limit was cut back to the last whole line.
    assert result["written"] == path.stat().st_size <= 20000
    assert path.read_bytes().endswith(b"\n")
    _, events = read_events(path)
    assert 100 < len(events) < 200
    status, out = asciinema_cat(path)
    assert status == 0, out
    assert f"{len(events) - 1}\r\n" in out


def test_best_effort_mode_survives_the_file_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    status, result = run_fsize_child(path, "best-effort")
    assert status == 0
    assert result["raised"] is None
    assert result["failed"] == f"recording {path} cannot be written: File too large"
    assert path.read_bytes().endswith(b"\n")
    assert len(read_events(path)[1]) > 100


def swap_in_dev_full(rec: Recorder) -> None:
    """Point the recorder's descriptor at /dev/full: every write now fails with ENOSPC."""
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, rec._fd)
    finally:
        os.close(full)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_strict_mode_raises_when_the_disk_is_full(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = Recorder(path, header(), flush_interval=3600)
    rec.output(b"buffered")
    swap_in_dev_full(rec)
    with pytest.raises(RecordingError) as caught:
        rec.flush()
    message = f"recording {path} cannot be written: No space left on device"
    assert str(caught.value) == message
    assert isinstance(caught.value.__cause__, OSError)
    # Once failed, a strict recorder keeps refusing, so the session cannot miss it.
    with pytest.raises(RecordingError, match="No space left"):
        rec.output(b"more")
    with pytest.raises(RecordingError, match="No space left"):
        rec.flush()
    rec.close()  # the error was already raised: closing does not raise it again
    rec.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_strict_mode_raises_from_close_when_the_last_flush_fails(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = Recorder(path, header(), flush_interval=3600)
    rec.output(b"buffered")
    swap_in_dev_full(rec)
    with pytest.raises(RecordingError, match="No space left"):
        rec.close()
    assert rec.closed
    rec.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_best_effort_mode_records_the_failure_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = Recorder(path, header(), strict=False, flush_interval=0)
    rec.output(b"kept\r\n")
    assert rec.failed is None
    written = rec.bytes_written
    swap_in_dev_full(rec)
    rec.output(b"lost")
    assert isinstance(rec.failed, RecordingError)
    assert str(rec.failed) == f"recording {path} cannot be written: No space left on device"
    rec.input(b"ignored")
    rec.resize(10, 10)
    rec.mark("ignored")
    rec.flush()
    rec.close()
    assert rec.bytes_written == written
    assert [d for _, _, d in read_events(path)[1]] == ["kept\r\n"]


# -- read_events -----------------------------------------------------------------------


def test_read_events_tolerates_a_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    with Recorder(path, header()) as rec:
        rec.output(b"one")
        rec.output("dé€".encode())
    whole = path.read_bytes()
    for cut in range(2, len(whole.splitlines(keepends=True)[-1])):
        path.write_bytes(whole[:-cut])  # also cuts inside the multibyte characters
        assert [d for _, _, d in read_events(path)[1]] == ["one"]
    path.write_bytes(whole.rstrip(b"\n"))  # a whole last line without its newline
    assert [d for _, _, d in read_events(path)[1]] == ["one", "dé€"]


def test_read_events_reports_a_corrupted_line(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    with Recorder(path, header()) as rec:
        rec.output(b"one")
        rec.output(b"two")
        rec.output(b"three")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[:2], b'[1.0, "o", "bro\n', *lines[3:]]))
    with pytest.raises(RecordingError, match="line 3"):
        read_events(path)
    path.write_bytes(b"".join([*lines[:2], b'{"not": "an event"}\n', *lines[3:]]))
    with pytest.raises(RecordingError, match="line 3"):
        read_events(path)
    path.write_bytes(b'{"version": 1}\n' + b"".join(lines[1:]))
    with pytest.raises(RecordingError, match="line 1"):
        read_events(path)
    path.write_bytes(b"")
    with pytest.raises(RecordingError, match="empty"):
        read_events(path)
    with pytest.raises(RecordingError, match="cannot be read"):
        read_events(tmp_path / "missing.cast")


def test_every_kind_of_character_is_recorded_as_the_standard_json_encoder_writes_it(
    tmp_path: Path,
) -> None:
    # Controls, DEL, quotes, backslashes, Latin-1, CJK, the line and paragraph separators,
    # astral characters (emoji), U+FFFD: each event line is the standard library's encoding
    # of its text (recordings made before and after the fast encoder are the same format),
    # and reads back as the text that was recorded.
    texts = [
        "".join(chr(c) for c in range(0x20)) + "\x7f",
        'say "hi" \\ back\\slash /',
        "caf\u00e9 \u4e2d\u6587 \u2028\u2029 \U0001f600 \ufffd \u00a0",
        "\x1b[1;31m\u2500\u2502 box \x1b[0m\r\n",
    ]
    path = tmp_path / "s.cast"
    clock = FakeClock(100.0)
    with Recorder(path, header(), clock=clock) as rec:
        for text in texts:
            rec.output(text.encode())
            clock.now += 0.25
        rec.mark("lone \ud800 surrogate")
    lines = path.read_bytes().splitlines()[1:]
    for line, text, at in zip(lines, texts, (0.0, 0.25, 0.5, 0.75), strict=False):
        assert line == f'[{at:.6f}, "o", {json.dumps(text, ensure_ascii=False)}]'.encode()
    _, events = read_events(path)
    assert [d for _, c, d in events if c == "o"] == texts
    assert [d for _, c, d in events if c == "m"] == ["lone ? surrogate"]


def test_finish_makes_the_content_final_and_close_only_makes_it_durable(tmp_path: Path) -> None:
    # The session's end signs the recording while another thread syncs and closes it: after
    # finish() nothing may change the file, not even a late event or a half character.
    path = tmp_path / "s.cast"
    rec = Recorder(path, header())
    rec.output(b"rows\r\n")
    rec.output(b"caf\xc3")  # half of a character: finish writes it as U+FFFD
    rec.finish()
    final = path.read_bytes()
    rec.output(b"late output\r\n")
    rec.input(b"late keys")
    rec.mark("late mark")
    rec.flush()
    rec.finish()
    assert path.read_bytes() == final
    rec.close()
    assert rec.closed and path.read_bytes() == final
    _, events = read_events(path)
    assert "".join(d for _, c, d in events if c == "o") == "rows\r\ncaf\ufffd"
