"""Listings as a rich table for people or JSON for scripts (`--output table|json`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hoopctl.escape import escape


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True, highlight=False)


def render(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    fmt: OutputFormat,
    *,
    empty: str = "nothing to show",
) -> None:
    """COLUMNS are (key, heading) pairs; JSON output carries every key of every row."""
    if fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(list(rows), indent=2, default=str) + "\n")
        return
    if not rows:
        stderr.print(empty)
        return
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for _, heading in columns:
        table.add_column(heading)
    for row in rows:
        # Cells are data, never markup, and never raw control characters.
        table.add_row(*(Text(escape(_cell(row.get(key)))) for key, _ in columns))
    stdout.print(table)


def render_record(
    record: dict[str, Any], fields: Sequence[tuple[str, str]], fmt: OutputFormat
) -> None:
    if fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(record, indent=2, default=str) + "\n")
        return
    width = max(len(label) for _, label in fields)
    for key, label in fields:
        stdout.print(
            f"{label + ':':<{width + 1}} {escape(_cell(record.get(key)))}",
            markup=False,
            highlight=False,
        )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)
