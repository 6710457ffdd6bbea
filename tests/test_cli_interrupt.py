"""Ctrl-C ends a command with one line, whatever half-built objects it leaves behind."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO

PROGRAM = """
import typer
from hoopctl.cli_common import _run

class HalfBuilt:  # like authlib's OAuth2Client when Ctrl-C lands in its constructor
    def __init__(self):
        raise KeyboardInterrupt
        self.session = None  # never reached

    def __del__(self):
        del self.session

holder = []

def work():
    try:
        HalfBuilt()
    finally:
        holder.append(sys.exc_info()[1])  # keeps the frame (and the object) until exit

import sys
try:
    _run(work)
except typer.Exit as done:
    holder.clear()
    import gc
    gc.collect()
    sys.exit(done.exit_code)
"""


def test_an_interrupted_command_prints_one_line_and_no_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 130
    assert result.stderr == "hoopctl: interrupted\n"
