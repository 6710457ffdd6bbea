"""Listings as a rich table for people or JSON for scripts (`--output table|json`)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from hoopctl.escape import escape, shown

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


# Into a pipe or a file a table is as wide as its content: a script (`| grep ID`, `| awk`)
# never meets a row wrapped, or an id cut across two lines, at the 80 columns rich assumes.
_PIPE_WIDTH = 100_000


def _width(stream: Any) -> int | None:
    try:
        return None if stream.isatty() else _PIPE_WIDTH
    except (AttributeError, ValueError):
        return _PIPE_WIDTH


class _FirstUseConsole:
    """A rich Console made on first use: rich costs every command about 25 ms of start-up, and
    a command that only relays bytes (`exec`, `connect`, `proxy`) never prints through it."""

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def made(self) -> Console:
        if self._console is None:
            from rich.console import Console

            class _Console(Console):
                def on_broken_pipe(self) -> None:
                    # rich would exit 1; every command ends the same quiet way
                    # (hoopctl.cli_common).
                    raise BrokenPipeError

            if self._stderr:
                self._console = _Console(
                    stderr=True, soft_wrap=True, highlight=False, width=_width(sys.stderr)
                )
            else:
                self._console = _Console(soft_wrap=True, width=_width(sys.stdout))
        return self._console

    def forget(self) -> None:
        self._console = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # this proxy's own state (a copy lacks it): never the console's
            raise AttributeError(name)
        return getattr(self.made(), name)


stdout: Console = _FirstUseConsole(stderr=False)  # type: ignore[assignment]
stderr: Console = _FirstUseConsole(stderr=True)  # type: ignore[assignment]


def reopen_consoles() -> None:
    """Size up stdout and stderr again (a terminal or a pipe, colours, width) for a warm child
    (hoopctl.warm), whose streams and environment became the caller's after the consoles were
    made: every module holding them sees the new ones on their next use."""
    for console in (stdout, stderr):
        console.forget()  # type: ignore[attr-defined]


def certificate_expiry(valid_before: int) -> str:
    """When a certificate expires, in local time, and how long is left (or EXPIRED)."""
    from broker.durations import format_duration

    when = datetime.fromtimestamp(valid_before, tz=UTC).astimezone()
    left = valid_before - time.time()
    status = f"in {format_duration(left)}" if left > 0 else "EXPIRED"
    return f"{when:%Y-%m-%d %H:%M:%S %Z} ({status})"


def escapes_set_apart() -> bool:
    """True when stdout shows styles, so escapes in untrusted text can be shown reversed."""
    return stdout.is_terminal and stdout.color_system is not None


def cell(text: str | None) -> Text:
    """Untrusted TEXT for a table cell on stdout (hoopctl.escape.shown)."""
    return shown(text, set_apart=escapes_set_apart())


_TIME_KEYS = {"at", "grant_until"}


def rfc3339_times(value: Any) -> Any:
    """VALUE with every time given as epoch seconds (keys ending in `_at`, and `at`,
    `grant_until`) written as an RFC 3339 UTC string, as every JSON output of hoopctl has them."""
    if isinstance(value, dict):
        return {
            key: _as_time(item) if key.endswith("_at") or key in _TIME_KEYS else rfc3339_times(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [rfc3339_times(item) for item in value]
    return value


def _as_time(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).isoformat()
    return rfc3339_times(value)


def listing_table(headings: Iterable[str], *, fold: bool = False) -> Table:
    """A table of hoopctl's listings (rich imported here, on first use); FOLD: a long cell
    folds onto more lines rather than being cut with an ellipsis."""
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for heading in headings:
        table.add_column(heading, overflow="fold" if fold else "ellipsis")
    return table


def render(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    fmt: OutputFormat,
    *,
    empty: str = "nothing to show",
) -> None:
    """COLUMNS are (key, heading) pairs; JSON output carries every key of every row."""
    if fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(rfc3339_times(list(rows)), indent=2, default=str) + "\n")
        return
    if not rows:
        stderr.print(empty)
        return
    table = listing_table(heading for _, heading in columns)
    for row in rows:
        # Cells are data, never markup, and never raw control characters.
        table.add_row(*(cell(_cell(row.get(key))) for key, _ in columns))
    stdout.print(table)


def render_record(
    record: dict[str, Any], fields: Sequence[tuple[str, str]], fmt: OutputFormat
) -> None:
    if fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(rfc3339_times(record), indent=2, default=str) + "\n")
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
