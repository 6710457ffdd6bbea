"""hoopctl leaves without tearing the interpreter down (hoopctl.entry._leave): whatever a
command wrote must still reach its reader whole, and its exit status must stay the same, on a
pipe read slowly, on a file, and on a reader that goes away early."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from broker.recording import Recorder, RecordingHeader
from tests.helpers import HOOPCTL

LINES = 20_000


def _recording(path: Path) -> Path:
    with Recorder(path, RecordingHeader("s1", "alice", "web", 80, 24, 0.0)) as recorder:
        for i in range(LINES):
            recorder.output(f"line {i:06d} of the output\r\n".encode())
    return path


def test_a_slow_reader_on_a_pipe_gets_every_line_and_the_status(tmp_path: Path) -> None:
    cast = _recording(tmp_path / "big.cast")
    child = subprocess.Popen(
        [HOOPCTL, "replay", str(cast), "--format", "text"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    received = bytearray()
    while chunk := child.stdout.read(4096):
        received += chunk
        time.sleep(0.001)  # the writer fills the pipe and has to wait for us
    assert child.wait(timeout=60) == 0, child.stderr.read()
    lines = received.decode().splitlines()
    assert lines == [f"line {i:06d} of the output" for i in range(LINES)]


def test_output_to_a_file_is_whole(tmp_path: Path) -> None:
    cast = _recording(tmp_path / "big.cast")
    out = tmp_path / "out.txt"
    with out.open("wb") as file:
        result = subprocess.run(
            [HOOPCTL, "replay", str(cast), "--format", "text"], stdout=file, timeout=60
        )
    assert result.returncode == 0
    assert out.read_text().splitlines()[-1] == f"line {LINES - 1:06d} of the output"
    assert len(out.read_text().splitlines()) == LINES


def test_usage_errors_and_failures_keep_their_exit_status(tmp_path: Path) -> None:
    unknown = subprocess.run([HOOPCTL, "no-such-command"], capture_output=True, timeout=60)
    assert unknown.returncode == 2
    assert b"No such command" in unknown.stderr
    missing = subprocess.run(
        [HOOPCTL, "replay", str(tmp_path / "missing.cast")], capture_output=True, timeout=60
    )
    assert missing.returncode not in (0, None)
    assert missing.stderr.decode().strip().startswith("hoopctl: ")
    assert b"Traceback" not in missing.stderr


def test_a_reader_that_goes_away_early_gets_no_traceback(tmp_path: Path) -> None:
    cast = _recording(tmp_path / "big.cast")
    child = subprocess.Popen(
        [HOOPCTL, "replay", str(cast), "--format", "text"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.read(100)
    child.stdout.close()
    status = child.wait(timeout=60)
    errors = child.stderr.read()
    assert b"Traceback" not in errors and b"Exception ignored" not in errors, errors
    assert status != 0


def _probe(code: str) -> subprocess.CompletedProcess[bytes]:
    # Block-buffered stdout, as a user's shell gives a pipe (this machine sets
    # PYTHONUNBUFFERED, which would hide a missing flush).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, env=env)


def test_output_still_buffered_at_exit_is_written_and_the_status_kept() -> None:
    result = _probe(
        "import sys\nfrom hoopctl.entry import _leave\n"
        "sys.stdout.write('still in the buffer')\n_leave(SystemExit(3))\n"
    )
    assert result.stdout == b"still in the buffer"
    assert result.returncode == 3


def test_a_thread_still_running_at_exit_is_waited_for(tmp_path: Path) -> None:
    done = tmp_path / "done"
    result = _probe(
        "import threading, time\nfrom pathlib import Path\nfrom hoopctl.entry import _leave\n"
        f"def work():\n    time.sleep(0.3)\n    Path({str(done)!r}).write_text('written')\n"
        "threading.Thread(target=work).start()\n_leave(SystemExit(0))\n"
    )
    assert result.returncode == 0, result.stderr
    assert done.read_text() == "written"
