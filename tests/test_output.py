"""Listings show data as data: rich markup and terminal control characters in a cell are shown,
never interpreted (a session command or a target description cannot restyle or hide output)."""

from __future__ import annotations

import pytest

from hoopctl.output import OutputFormat, render, render_record


def test_table_cells_are_not_markup_and_controls_are_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [{"name": "[bold red]db[/bold red]", "command": "ls\x1b[2K\rrm -rf /"}]
    render(rows, [("name", "NAME"), ("command", "COMMAND")], OutputFormat.table)
    shown = capsys.readouterr().out
    assert "[bold red]db[/bold red]" in shown
    assert "\x1b" not in shown and "\r" not in shown
    assert "\\x1b[2K\\rrm -rf /" in shown


def test_record_fields_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    render_record({"user": "eve\x1b]0;owned\x07"}, [("user", "User")], OutputFormat.table)
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\x07" not in shown
    assert "eve\\x1b]0;owned\\x07" in shown


def test_json_keeps_the_raw_value(capsys: pytest.CaptureFixture[str]) -> None:
    render([{"command": "a\x1bb"}], [("command", "COMMAND")], OutputFormat.json)
    assert '"a\\u001bb"' in capsys.readouterr().out


def test_help_shows_what_each_option_takes() -> None:
    import subprocess

    from tests.helpers import HOOP_BROKER, HOOPCTL

    shown = subprocess.run(
        [HOOPCTL, "exec", "-h"], capture_output=True, text=True, timeout=30, env={"COLUMNS": "120"}
    ).stdout
    assert "<bool>" not in shown and "<str>" not in shown and "<path>" not in shown
    assert "TEXT" in next(line for line in shown.splitlines() if "Target name" in line)
    assert "PATH" in next(line for line in shown.splitlines() if "--file" in line)
    assert "{target}" in shown  # the usage line names the argument, without its type
    line = next(line for line in shown.splitlines() if "--no-wait" in line)
    assert "TEXT" not in line  # a flag takes no value
    assert "--reason" in shown and "TEXT" in next(
        line for line in shown.splitlines() if "--reason" in line
    )
    broker = subprocess.run(
        [HOOP_BROKER, "serve", "-h"], capture_output=True, text=True, timeout=30
    ).stdout
    assert "<bool>" not in broker and "--dev" in broker
