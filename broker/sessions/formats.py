"""Result sets as text for `exec --output table|json|csv`, written as rows arrive."""

from __future__ import annotations

import base64
import csv
import datetime
import decimal
import io
import json
import uuid
from collections.abc import Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from broker.protocols.sql import Cut

TABLE_ROW_LIMIT = 10_000
FORMATS = ("table", "json", "csv")


_BINARY = (bytes, bytearray, memoryview)


def to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
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
            return self._csv_line(columns)
        if self.fmt == "json":
            return "["
        return ""

    def rows(self, rows: Sequence[Sequence[Any]]) -> str:
        self.count += len(rows)
        if self.fmt == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            # The value types are gathered in C (map, chain, set): no Python call per cell;
            # issubclass on the few types found, as isinstance would on each value.
            kinds = set(map(type, chain.from_iterable(rows)))
            if any(issubclass(kind, _BINARY) for kind in kinds):
                writer.writerows([to_text(v) for v in row] for row in rows)
            else:
                # The csv module writes None as "" and anything else as str() would, which
                # is to_text for all but binary values: no per-cell Python call.
                writer.writerows(rows)
            return buffer.getvalue()
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

    def _csv_line(self, values: Sequence[str]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        return buffer.getvalue()

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
