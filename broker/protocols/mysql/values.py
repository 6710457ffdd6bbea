"""Values on MySQL's wire: column definitions, rows of the text and the binary protocol, a
prepared statement's parameters, and how a value is written as an SQL literal for the policy
to judge.

A value of a type not listed here cannot be read in the binary protocol (its length is not
known either): the caller fails closed (a row's columns are sent as NULL; a statement with
such a parameter is judged unknown)."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from broker.protocols.mysql import packets as p

# Column types (enum_field_types).
DECIMAL, TINY, SHORT, LONG, FLOAT, DOUBLE, NULL, TIMESTAMP, LONGLONG, INT24 = range(10)
DATE, TIME, DATETIME, YEAR, NEWDATE, VARCHAR, BIT, TIMESTAMP2, DATETIME2, TIME2 = range(10, 20)
JSON, NEWDECIMAL, ENUM, SET, TINY_BLOB, MEDIUM_BLOB, LONG_BLOB, BLOB = range(245, 253)
VAR_STRING, STRING, GEOMETRY = 253, 254, 255

BINARY_CHARSET = 63
UNSIGNED_FLAG = 32

_FIXED = {TINY: 1, SHORT: 2, YEAR: 2, LONG: 4, INT24: 4, LONGLONG: 8, FLOAT: 4, DOUBLE: 8, NULL: 0}
_INTEGERS = frozenset({TINY, SHORT, YEAR, LONG, INT24, LONGLONG})
_DATES = frozenset({DATE, DATETIME, TIMESTAMP, NEWDATE, DATETIME2, TIMESTAMP2})
_TIMES = frozenset({TIME, TIME2})
_DECIMALS = frozenset({DECIMAL, NEWDECIMAL})
_STRINGS = frozenset(
    {VARCHAR, VAR_STRING, STRING, TINY_BLOB, MEDIUM_BLOB, LONG_BLOB, BLOB, JSON, ENUM, SET}
)
_LENENC = _STRINGS | _DECIMALS | {BIT, GEOMETRY}
# Types whose values can carry any text (a masked value in the column's own type).
TEXT_LIKE = _STRINGS
# Types whose values cannot hold the text a detector looks for.
NO_TEXT_INSIDE = _DATES | _TIMES | {YEAR}


class Unreadable(ValueError):
    """A value the broker cannot read."""


# -- column definitions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One ColumnDefinition41 packet: its name, and the fixed fields at FIXED in PAYLOAD."""

    payload: bytes
    name: str
    charset: int
    type: int
    flags: int
    fixed: int

    @property
    def unsigned(self) -> bool:
        return bool(self.flags & UNSIGNED_FLAG)

    def as_text(self) -> bytes:
        """The definition told to the client when a rule masks the column: a string of
        utf8mb4, nullable, whatever the column's own type."""
        length = max(int.from_bytes(self.payload[self.fixed + 2 : self.fixed + 6], "little"), 1024)
        fixed = struct.pack("<HIBHB", 45, min(length, 0xFFFFFFFF), VAR_STRING, 0, 0)
        return self.payload[: self.fixed] + fixed + self.payload[self.fixed + len(fixed) :]


def parse_column(payload: bytes) -> Column:
    cur = p.Cursor(payload)
    for _ in range(4):  # catalog, schema, table, org_table
        cur.lenenc_bytes()
    name = (cur.lenenc_bytes() or b"").decode("utf-8", "replace")
    cur.lenenc_bytes()  # org_name
    cur.lenenc()  # the length of the fixed fields (0x0c)
    fixed = cur.at
    charset, _, kind, flags, _ = struct.unpack("<HIBHB", cur.take(10))
    return Column(payload, name, charset, kind, flags, fixed)


# -- rows -------------------------------------------------------------------------------------


def parse_text_row(payload: bytes) -> list[bytes | None]:
    cur = p.Cursor(payload)
    cells = []
    while cur.left:
        cells.append(cur.lenenc_bytes())
    return cells


def text_row(cells: list[bytes | None]) -> bytes:
    return b"".join(b"\xfb" if cell is None else p.lenenc_bytes(cell) for cell in cells)


def parse_binary_row(payload: bytes, columns: list[Column]) -> list[bytes | None]:
    """Each cell of a binary row as it is on the wire (length prefixes included); None for NULL.
    Unreadable for a column of a type not known here."""
    n = len(columns)
    cur = p.Cursor(payload, 1)
    nulls = cur.take((n + 9) // 8)
    cells: list[bytes | None] = []
    for i, column in enumerate(columns):
        if nulls[(i + 2) // 8] & (1 << ((i + 2) % 8)):
            cells.append(None)
            continue
        start = cur.at
        kind = column.type
        if kind in _FIXED:
            cur.take(_FIXED[kind])
        elif kind in _DATES or kind in _TIMES:
            cur.take(cur.int(1))
        elif kind in _LENENC:
            cur.lenenc_bytes()
        else:
            raise Unreadable(f"column type {kind} in the binary protocol")
        cells.append(payload[start : cur.at])
    return cells


def binary_row(cells: list[bytes | None]) -> bytes:
    nulls = bytearray((len(cells) + 9) // 8)
    for i, cell in enumerate(cells):
        if cell is None:
            nulls[(i + 2) // 8] |= 1 << ((i + 2) % 8)
    return b"\x00" + bytes(nulls) + b"".join(cell for cell in cells if cell is not None)


# -- reading a value --------------------------------------------------------------------------


def read_text(cell: bytes, column: Column) -> object:
    """A text-protocol cell for masking: the text, or bytes in a binary-charset column."""
    if column.charset == BINARY_CHARSET and column.type in _STRINGS | {BIT, GEOMETRY}:
        return cell
    return cell.decode("utf-8", "replace")


def read_binary(cell: bytes, kind: int, *, unsigned: bool, charset: int) -> object:
    """A binary-protocol cell (as parse_binary_row cut it, or a parameter) as a Python value."""
    try:
        if kind in _INTEGERS:
            return int.from_bytes(cell, "little", signed=not unsigned)
        if kind == FLOAT:
            return struct.unpack("<f", cell)[0]
        if kind == DOUBLE:
            return struct.unpack("<d", cell)[0]
        if kind == NULL:
            return None
        if kind in _DATES:
            return _date(cell[1:], kind == DATE or kind == NEWDATE)
        if kind in _TIMES:
            return _time(cell[1:])
        if kind in _LENENC:
            data = p.Cursor(cell).lenenc_bytes() or b""
            if kind in _DECIMALS:
                return Decimal(data.decode("ascii"))
            if charset == BINARY_CHARSET or kind in (BIT, GEOMETRY):
                return data
            return data.decode("utf-8", "replace")
    except (struct.error, p.ProtocolError, InvalidOperation, UnicodeDecodeError):
        raise Unreadable("a value of the wrong size or form") from None
    raise Unreadable(f"type {kind} in the binary protocol")


def _date(data: bytes, date_only: bool) -> str:
    if len(data) not in (0, 4, 7, 11):
        raise Unreadable("a date of the wrong size")
    year, month, day, hour, minute, second = (
        struct.unpack("<HBBBBB", data[:7].ljust(7, b"\0")) if data else (0,) * 6
    )
    text = f"{year:04d}-{month:02d}-{day:02d}"
    if date_only:
        return text
    text += f" {hour:02d}:{minute:02d}:{second:02d}"
    if len(data) == 11:
        text += f".{int.from_bytes(data[7:11], 'little'):06d}"
    return text


def _time(data: bytes) -> str:
    if len(data) not in (0, 8, 12):
        raise Unreadable("a time of the wrong size")
    if not data:
        return "00:00:00"
    negative, days, hour, minute, second = struct.unpack("<BIBBB", data[:8])
    text = f"{'-' if negative else ''}{days * 24 + hour:02d}:{minute:02d}:{second:02d}"
    if len(data) == 12:
        text += f".{int.from_bytes(data[8:12], 'little'):06d}"
    return text


def as_text(value: object) -> bytes:
    """A value as the bytes of a text cell."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"1" if value else b"0"
    return str(value).encode("utf-8")


def as_string_cell(value: object) -> bytes:
    """A value as a binary-protocol cell of a string column."""
    return p.lenenc_bytes(as_text(value))


# -- parameters -------------------------------------------------------------------------------


@dataclass
class Execute:
    """A COM_STMT_EXECUTE: the statement, its flags, and each parameter's value (read)."""

    statement_id: int
    flags: int
    types: list[tuple[int, bool]]  # (type, unsigned) of each parameter
    values: list[object]
    problem: str | None  # why a parameter could not be read (the statement is then unknown)


def parse_execute(
    payload: bytes,
    count: int,
    previous: list[tuple[int, bool]],
    long_data: dict[int, bytes],
) -> Execute:
    """A COM_STMT_EXECUTE of a statement with COUNT parameters; PREVIOUS: their types as the
    last execute bound them; LONG_DATA: values sent before it (COM_STMT_SEND_LONG_DATA)."""
    cur = p.Cursor(payload, 1)
    statement_id = cur.int(4)
    flags = cur.int(1)
    cur.int(4)  # iteration count (always 1)
    execute = Execute(statement_id, flags, previous, [], None)
    if not count:
        return execute
    try:
        nulls = cur.take((count + 7) // 8)
        if cur.int(1):
            raw = cur.take(2 * count)
            execute.types = [(raw[2 * i], bool(raw[2 * i + 1] & 0x80)) for i in range(count)]
        if len(execute.types) != count:
            raise Unreadable("the parameters' types were never given")
        for i, (kind, unsigned) in enumerate(execute.types):
            if i in long_data:
                value: object = long_data[i]
                if kind not in (BLOB, TINY_BLOB, MEDIUM_BLOB, LONG_BLOB, GEOMETRY, BIT):
                    value = _text_or_bytes(long_data[i])
            elif nulls[i // 8] & (1 << (i % 8)):
                value = None
            else:
                value = _parameter(cur, kind, unsigned)
            execute.values.append(value)
        if cur.at != len(cur.body):
            raise Unreadable("bytes after the last parameter")
    except (Unreadable, p.ProtocolError) as exc:
        execute.problem = f"parameter {len(execute.values) + 1} cannot be read ({exc})"
    return execute


# The parameter types whose reading by the server is known: others (YEAR, INT24, BIT,
# GEOMETRY, the server's internal date types) MariaDB reads as NULL without taking their
# bytes, MySQL otherwise: every value after them would be read from another place.
_PARAMETER_TYPES = (
    frozenset({TINY, SHORT, LONG, LONGLONG, FLOAT, DOUBLE, NULL, DATE, DATETIME, TIMESTAMP, TIME})
    | _DECIMALS
    | _STRINGS
)


def _parameter(cur: p.Cursor, kind: int, unsigned: bool) -> object:
    if kind not in _PARAMETER_TYPES:
        raise Unreadable(f"parameter type {kind}")
    start = cur.at
    if kind in _FIXED:
        cur.take(_FIXED[kind])
    elif kind in _DATES or kind in _TIMES:
        cur.take(cur.int(1))
    elif kind in _LENENC:
        cur.lenenc_bytes()
    else:
        raise Unreadable(f"type {kind}")
    cell = cur.body[start : cur.at]
    if kind in _STRINGS:
        return _text_or_bytes(p.Cursor(cell).lenenc_bytes() or b"")
    return read_binary(cell, kind, unsigned=unsigned, charset=BINARY_CHARSET)


def _text_or_bytes(data: bytes) -> str | bytes:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def literal(value: object) -> str:
    """VALUE as a MySQL literal (backslash escapes on: the broker's sql_mode)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        if isinstance(value, float) and not math.isfinite(value):
            raise Unreadable("a number that is not finite")
        if isinstance(value, Decimal) and not value.is_finite():
            raise Unreadable("a decimal that is not finite")
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, bytes):
        return f"X'{value.hex()}'"
    text = str(value).replace("\\", "\\\\").replace("'", "''").replace("\0", "\\0")
    return f"'{text}'"


def bind(sql: str, positions: list[int], values: list[object]) -> tuple[str, str | None]:
    """SQL with the placeholders at POSITIONS replaced by VALUES as literals; and why that
    could not be done, or None."""
    if len(positions) != len(values):
        return sql, (
            f"the statement has {len(positions)} placeholders the broker can see, "
            f"and {len(values)} parameters"
        )
    out = []
    at = 0
    for i, (position, value) in enumerate(zip(positions, values, strict=True)):
        try:
            text = literal(value)
        except Unreadable as exc:
            return sql, f"parameter {i + 1} cannot be read ({exc})"
        out.append(sql[at:position])
        out.append(text)
        at = position + 1
    out.append(sql[at:])
    return "".join(out), None
