"""Result sets as text for `exec --output table|json|csv`, written as rows arrive."""

from __future__ import annotations

import base64
import datetime
import decimal
import io
import json
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from broker.protocols.sql import Cut

TABLE_ROW_LIMIT = 10_000
FORMATS = ("table", "json", "csv")


def to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dict | list):
        # JSON and arrays as JSON text, not Python's repr ({'a': 1}, [None]).
        return json.dumps(value, ensure_ascii=False, default=to_json_value)
    return str(value)


def to_json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.date | datetime.time | datetime.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict | list):
        return value
    return str(value)


# Characters that make a CSV field quoted. "\r" is among them: the csv module of Python 3.11
# leaves it bare when the line terminator is "\n", and a reader then splits the field.
_QUOTED = (",", '"', "\n", "\r")


def csv_rows(rows: Sequence[Sequence[Any]]) -> str:
    """ROWS as CSV (excel dialect, "\n" line ends, fields quoted only where needed), built a
    column at a time: the per-value work is C's (str, join, substring tests) unless a column
    holds values other than int and str, or a field that needs quoting. Rows that keep their
    columns (masking's RowBatch) are not taken apart again."""
    if not rows:
        return ""
    columns: Iterable[Sequence[Any]] | None = getattr(rows, "columns", None)
    if columns is None:
        columns = zip(*rows, strict=True)
    texts: list[Sequence[str]] = []
    for column in columns:
        cells: Sequence[str]
        try:
            # Every cell text (the common case): the join needed for the quoting test below
            # is the type check too.
            joined = "".join(column)
            cells = column
        except TypeError:
            kinds = set(map(type, column))
            if kinds == {int}:
                texts.append(list(map(str, column)))
                continue
            cells = list(map(to_text, column))
            joined = "".join(cells)
        if any(special in joined for special in _QUOTED):
            cells = [_quoted(cell) for cell in cells]
        texts.append(cells)
    if len(texts) == 1:
        # A row of one empty field would be an empty line, which readers skip.
        texts[0] = [cell or '""' for cell in texts[0]]
    # One join over field, separator, field, …, line end: every column goes into its places
    # with a slice assignment, with no tuple or string made per row.
    width, count = len(texts), len(rows)
    if any(len(cells) != count for cells in texts):
        raise ValueError("csv_rows: columns of different lengths")
    pieces = [","] * (2 * width * count)
    for index, cells in enumerate(texts):
        pieces[2 * index :: 2 * width] = cells
    pieces[2 * width - 1 :: 2 * width] = ["\n"] * count
    return "".join(pieces)


def _quoted(cell: str) -> str:
    if any(special in cell for special in _QUOTED):
        return '"' + cell.replace('"', '""') + '"'
    return cell


class ResultWriter:
    """Turns one result set into chunks of text; call begin, rows (any number of times), end."""

    def __init__(self, fmt: str, width: int = 120) -> None:
        self.fmt = fmt
        self.width = width
        self._columns: list[str] = []
        self._first = True
        self._buffered: list[Sequence[Any]] = []
        self.count = 0
        self.truncated = 0

    def begin(self, columns: list[str]) -> str:
        self._columns = columns
        self._first = True
        self._buffered = []
        self.count = 0
        self.truncated = 0
        if self.fmt == "csv":
            return csv_rows([columns])
        if self.fmt == "json":
            return "["
        return ""

    def rows(self, rows: Sequence[Sequence[Any]]) -> str:
        self.count += len(rows)
        if self.fmt == "csv":
            return csv_rows(rows)
        if self.fmt == "json":
            parts = []
            for row in rows:
                record = {
                    name: to_json_value(value)
                    for name, value in zip(self._columns, row, strict=False)
                }
                parts.append(
                    ("\n" if self._first else ",\n") + json.dumps(record, ensure_ascii=False)
                )
                self._first = False
            return "".join(parts)
        room = TABLE_ROW_LIMIT - len(self._buffered)
        self._buffered.extend(rows[:room])
        self.truncated += max(0, len(rows) - room)
        return ""

    def end(self, cut: Cut | None = None) -> str:
        """The text after the rows; CUT: the result was stopped at a budget, and says so (in
        json as the array's last element, {"hoop_truncated": {...}})."""
        marker = cut.marker(self.fmt) if cut is not None else ""
        if self.fmt == "csv":
            return marker
        if self.fmt == "json":
            if marker:
                return ("\n" if self._first else ",\n") + marker + "\n]\n"
            return "\n]\n" if not self._first else "]\n"
        return self._table() + marker

    def _table(self) -> str:
        table = Table(show_edge=False, header_style="bold", pad_edge=False)
        for name in self._columns:
            table.add_column(name)
        for row in self._buffered:
            table.add_row(*(to_text(v) for v in row), end_section=False)
        out = io.StringIO()
        Console(
            file=out, width=self.width, force_terminal=False, no_color=True, highlight=False
        ).print(table)
        footer = f"({self.count} row{'s' if self.count != 1 else ''})\n"
        if self.truncated:
            footer = f"({self.count} rows; {self.truncated} not shown: use --output csv or json)\n"
        return out.getvalue() + footer
