"""Prompt marks in other shells, the prompt-pattern fallback, typed-ahead input, full-screen
programs and UTF-8, through `hoopctl connect` in a real terminal."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.helpers import TARGET_USER, BrokerProcess, User, give_to
from tests.terminal_helpers import (
    PROMPT,
    close_shell,
    local_target,
    open_shell,
    run_line,
    start_terminal_broker,
)

PLAIN_PROMPT = r"plain> $"


def custom_target(name: str, command: str, extra: str = "") -> str:
    return f"""
[[targets]]
name = "{name}"
type = "local"
guard = "screen"
run_as = "{TARGET_USER}"
command = {command}
allowed_groups = ["engineers"]
policy = "shell"
{extra}
"""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    targets = (
        local_target()
        + custom_target("zsh", '["zsh", "-f"]')
        + custom_target("dash", '["dash"]')
        # A program the broker cannot give prompt marks: bash reading commands without its
        # rcfile, through `bash -c`, with a fixed prompt matched by a pattern.
        + custom_target(
            "plain",
            '["python3", "-c", "import os\\nwhile True:\\n  line = input(\'plain> \')\\n  os.system(line)"]',
            'prompt_pattern = "^plain> "',
        )
    )
    process = start_terminal_broker(tmp_path, targets)
    yield process
    process.stop()


@pytest.fixture
def victim(target_dir: Path) -> Path:
    """A directory the target's user could delete (it owns it): only the guard keeps it."""
    path = target_dir / "victim"
    path.mkdir()
    return give_to(path)


def test_typed_ahead_command_is_discarded_not_run(user: User, target_dir: Path) -> None:
    proof = target_dir / "typed-ahead"  # where the target's user could create it
    child = open_shell(user)
    child.send("sleep 2\r")
    time.sleep(0.5)
    child.send(f"touch {proof}\r")  # typed while sleep runs: never judged at a prompt
    child.expect("input typed while a command ran was discarded")
    child.expect(PROMPT)
    time.sleep(0.5)
    assert not proof.exists()
    close_shell(child)


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_gets_prompt_marks_and_guardrails(user: User, victim: Path) -> None:
    child = open_shell(user, "zsh")
    assert "zsh-works" in run_line(child, "echo zsh-works")
    child.send(f"rm -rf {victim}\r")
    child.expect("denied by rule no-recursive-rm")
    child.expect(PROMPT)
    close_shell(child)
    assert victim.exists()


@pytest.mark.skipif(shutil.which("dash") is None, reason="dash is not installed")
def test_posix_sh_gets_prompt_marks_and_guardrails(user: User, victim: Path) -> None:
    child = open_shell(user, "dash")
    assert "dash-works" in run_line(child, "echo dash-works")
    child.send(f"ls; rm -rf {victim}\r")
    child.expect("denied by rule no-recursive-rm")
    child.expect(PROMPT)
    close_shell(child)
    assert victim.exists()


def test_prompt_pattern_fallback_judges_the_line_after_the_prompt(user: User, victim: Path) -> None:
    child = user.spawn("connect", "plain", timeout=20)
    child.expect(PLAIN_PROMPT)
    child.send("echo pattern-works\r")
    child.expect("pattern-works")
    child.expect(PLAIN_PROMPT)
    child.send(f"rm -rf {victim}\r")
    child.expect("denied by rule no-recursive-rm")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert victim.exists()


@pytest.mark.skipif(shutil.which("less") is None, reason="less is not installed")
def test_full_screen_program_gets_enter_and_keys(user: User, target_dir: Path) -> None:
    text = target_dir / "long.txt"
    text.write_text("".join(f"line {n}\n" for n in range(1, 500)))
    give_to(text)
    child = open_shell(user)
    child.send(f"less {text}\r")
    child.expect("line 1\r")
    child.send("\r")  # Enter inside less scrolls one line: not a shell command
    child.send("G")
    child.expect("line 499")
    child.send("q")
    child.expect(PROMPT)
    assert "after-less" in run_line(child, "echo after-less")
    close_shell(child)


def test_utf8_passes_through_both_ways(user: User) -> None:
    child = open_shell(user)
    shown = run_line(child, "echo 'grüße — 日本語 ✓'")
    assert "grüße — 日本語 ✓" in shown
    close_shell(child)
