"""COPY … TO STDOUT through the proxy, masked: what the COPY reads (as a SELECT, for masking's
lineage) and its rows in text or CSV format, read and written back.

The server sends one row per CopyData message. A COPY whose options the broker does not read
(binary format, other quoting) is refused where results are masked."""

from __future__ import annotations

import re
from dataclasses import dataclass

_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "\\": "\\"}
_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.S)


class CopyNotMasked(ValueError):
    """A COPY TO STDOUT the broker cannot mask; the message says why (for the client)."""


@dataclass(frozen=True)
class CopyOut:
    """A COPY … TO STDOUT: the query whose rows it writes, and how it writes them."""

    select: str
    csv: bool = False
    header: bool = False
    delimiter: str = "\t"
    null: str = "\\N"

    def read_row(self, data: bytes) -> list[str | None] | None:
        """One CopyData row; None for a CSV header line (passed on as it is)."""
        text = data.decode("utf-8", "replace")
        if text.endswith("\n"):
            text = text[:-1]
        if self.csv:
            return _csv_fields(text, self.delimiter)
        return [None if f == self.null else _unescape(f) for f in text.split(self.delimiter)]

    def write_row(self, values: list[object]) -> bytes:
        if self.csv:
            cells = [
                self.null if v is None else _csv_field(_text(v), self.delimiter) for v in values
            ]
            return (self.delimiter.join(cells) + "\n").encode()
        cells = [self.null if v is None else _escape(_text(v), self.delimiter) for v in values]
        return (self.delimiter.join(cells) + "\n").encode()


def _csv_fields(line: str, delimiter: str) -> list[str | None]:
    """The fields of one CSV row as PostgreSQL writes them: a bare empty field is NULL, a quoted
    one ("") the empty string (the csv module reads both as "")."""
    if '"' not in line:
        return [field or None for field in line.split(delimiter)]
    fields: list[str | None] = []
    field: list[str] = []
    quoted = in_quotes = False
    index, end = 0, len(line)
    while index < end:
        char = line[index]
        if in_quotes:
            if char == '"' and line.startswith('"', index + 1):
                field.append('"')
                index += 1
            elif char == '"':
                in_quotes = False
            else:
                field.append(char)
        elif char == '"':
            in_quotes = quoted = True
        elif char == delimiter:
            fields.append("".join(field) if field or quoted else None)
            field, quoted = [], False
        else:
            field.append(char)
        index += 1
    fields.append("".join(field) if field or quoted else None)
    return fields


def _csv_field(text: str, delimiter: str) -> str:
    """TEXT as PostgreSQL's COPY writes a CSV field: quoted when empty (a bare empty field is
    NULL), when it holds the delimiter, a quote or a line break, or when it is the end marker."""
    if text and text != "\\." and not any(c in text for c in (delimiter, '"', "\n", "\r")):
        return text
    return '"' + text.replace('"', '""') + '"'


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _unescape(field: str) -> str:
    def one(match: re.Match[str]) -> str:
        octal, hexa, char = match.groups()
        if octal:
            return chr(int(octal, 8))
        if hexa:
            return chr(int(hexa, 16))
        return _ESCAPES.get(char, char)

    return _ESCAPE.sub(one, field) if "\\" in field else field


def _escape(text: str, delimiter: str) -> str:
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return out.replace(delimiter, "\\" + delimiter) if delimiter != "\\" else out


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def copy_out(sql: str) -> CopyOut | None:
    """The COPY … TO STDOUT that SQL (one statement) is, or None when it is none. Raises
    CopyNotMasked for a COPY whose output the broker cannot read."""
    from pglast.stream import RawStream

    from broker.pglast_guard import parse_sql

    try:
        trees = parse_sql(sql)
    except Exception:
        return None
    copies = [t.stmt for t in trees if type(t.stmt).__name__ == "CopyStmt" and not t.stmt.is_from]
    if not copies:
        return None
    if len(trees) != 1:
        raise CopyNotMasked("a COPY TO STDOUT must be sent on its own to be masked")
    node = copies[0]
    if node.filename is not None or getattr(node, "is_program", False):
        return None  # to a file or program on the server: the policy decides, no rows come here
    if node.query is not None:
        select = RawStream()(node.query)
    else:
        # The column list holds names (String nodes): written as identifiers, never as the
        # string constants a deparse of the bare nodes would give.
        columns = ", ".join(_identifier(a.sval) for a in node.attlist) if node.attlist else "*"
        select = f"SELECT {columns} FROM {RawStream()(node.relation)}"  # noqa: S608 (judged)
    settings: dict[str, str | None] = {}
    for option in node.options or ():
        arg = option.arg
        value = getattr(arg, "sval", None) if arg is not None else None
        if arg is not None and value is None:
            value = str(getattr(arg, "boolval", getattr(arg, "ival", "")))
        settings[option.defname] = value
    fmt = (settings.pop("format", None) or "text").lower()
    if fmt not in ("text", "csv"):
        raise CopyNotMasked(f"COPY in {fmt} format cannot be masked; use text or csv")
    header = settings.pop("header", "false")
    delimiter = settings.pop("delimiter", None) or ("," if fmt == "csv" else "\t")
    if settings.pop("null", None) is not None:
        # A field equal to the NULL string would be written back as it is: the string would
        # confirm a guessed value.
        raise CopyNotMasked("the COPY option null cannot be masked")
    if settings:
        raise CopyNotMasked(f"COPY options {', '.join(sorted(settings))} cannot be masked")
    if len(delimiter) != 1:
        raise CopyNotMasked("a COPY delimiter of more than one character cannot be masked")
    return CopyOut(
        select,
        csv=fmt == "csv",
        header=header is None or header.lower() in ("true", "on", "1", "match"),
        delimiter=delimiter,
        null="" if fmt == "csv" else "\\N",
    )
