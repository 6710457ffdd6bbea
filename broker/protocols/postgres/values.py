"""Values on the wire: the types the broker can read from a cell or a parameter, in text or
binary format, and how a value is written as an SQL literal for the policy to judge.

A value of a type not listed here cannot be read in binary format: the caller fails closed
(a masked column is sent as NULL; a statement with such a parameter is judged unknown)."""

from __future__ import annotations

import math
import struct
import uuid

# Type OIDs (pg_type.oid; fixed for built-in types).
BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, XML, FLOAT4, FLOAT8, UNKNOWN, BPCHAR, VARCHAR, JSONB = (
    114,
    142,
    700,
    701,
    705,
    1042,
    1043,
    3802,
)
UUID, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ = (
    2950,
    1082,
    1083,
    1114,
    1184,
    1186,
    1266,
)

# Their binary form is the UTF-8 text itself (jsonb: a version byte first).
TEXT_LIKE = frozenset({TEXT, VARCHAR, BPCHAR, NAME, CHAR, JSON, XML, UNKNOWN, 0})
# Values of these types cannot hold the text a detector looks for (a date cannot be an email).
NO_TEXT_INSIDE = frozenset({BOOL, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ, UUID})

_INTS = {INT2: "!h", INT4: "!i", INT8: "!q", OID: "!I"}
_FLOATS = {FLOAT4: "!f", FLOAT8: "!d"}


class Unreadable(ValueError):
    """A value the broker cannot read (its type's binary format is not known here)."""


def read_value(data: bytes, type_oid: int, fmt: int) -> object:
    """A cell or parameter as a Python value: str for text format and text-like types, int,
    float, bool, bytes, or str (uuid) for the binary forms known here."""
    if fmt == 0:
        return data.decode("utf-8", "replace")
    if type_oid in TEXT_LIKE:
        return data.decode("utf-8", "replace")
    if type_oid == JSONB:
        if data[:1] != b"\x01":
            raise Unreadable("jsonb of an unknown version")
        return data[1:].decode("utf-8", "replace")
    try:
        if type_oid in _INTS:
            return struct.unpack(_INTS[type_oid], data)[0]
        if type_oid in _FLOATS:
            return struct.unpack(_FLOATS[type_oid], data)[0]
    except struct.error:
        raise Unreadable("a number of the wrong size") from None
    if type_oid == BOOL and len(data) == 1:
        return data != b"\x00"
    if type_oid == BYTEA:
        return data
    if type_oid == UUID and len(data) == 16:
        return str(uuid.UUID(bytes=data))
    raise Unreadable(f"type {type_oid} in binary format")


def as_text(value: object) -> str:
    """A value read from a cell, written as PostgreSQL writes it in text format."""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return value if isinstance(value, str) else str(value)


def text_bytes(value: object, type_oid: int) -> bytes:
    """A value as the bytes of a text column (text format and binary alike); jsonb keeps its
    version byte."""
    data = as_text(value).encode("utf-8")
    return b"\x01" + data if type_oid == JSONB else data


def literal(value: object) -> str:
    """VALUE as an SQL literal (standard_conforming_strings is on for the broker's sessions)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"({value})"  # never `0--5`: a minus after a minus would start a comment
    if isinstance(value, float):
        return f"({value!r})" if math.isfinite(value) else f"'{value!r}'::float8"
    if isinstance(value, bytes):
        return f"'\\x{value.hex()}'::bytea"
    return "'" + str(value).replace("'", "''") + "'"
