"""hoopctl's commands: each name on the command line reaches its command when loaded alone
(hoopctl.commands.load), and help lists them all, in their order."""

from __future__ import annotations

import re
import subprocess

import pytest

from hoopctl.commands import COMMANDS
from tests.helpers import HOOPCTL


def _hoopctl(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HOOPCTL), *argv], capture_output=True, text=True, timeout=60, check=False
    )


def test_help_lists_every_command_in_order() -> None:
    result = _hoopctl("--help")
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^[│|]?\s{1,2}([a-z][a-z-]+)\s{2,}\S", result.stdout, re.MULTILINE)
    # Typer lists a group of commands (`sessions`) after the single commands.
    assert listed == [name for name in COMMANDS if name != "sessions"] + ["sessions"]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_named_first_runs_with_its_module_alone(name: str) -> None:
    result = _hoopctl(name, "--help")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"Usage: hoopctl {re.escape(name)}\b", result.stdout), result.stdout


def test_a_mistyped_command_is_refused_with_the_full_list_in_reach() -> None:
    result = _hoopctl("exce", "pg")
    assert result.returncode == 2
    assert "No such command 'exce'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_global_option_before_the_command_still_reaches_it() -> None:
    result = _hoopctl("--broker", "127.0.0.1:9", "whoami", "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: hoopctl whoami" in result.stdout
