"""pglast's parse, guarded: a statement whose tree would be too deep for pglast to convert is
refused before it is parsed.

PostgreSQL's parser builds a chain of some 30,000 binary operators (`1 + 1 + … + 1`) without
complaint, and pglast then crashes the whole process (a C stack overflow: a segmentation
fault, not an exception) turning that tree into Python objects. Every parse of text a user
wrote goes through here. The scanner is linear and safe; statements with more operators than
MAX_OPERATORS (a third of the depth that crashes) are not parsed."""

from __future__ import annotations

from typing import Any

import pglast
import pglast.parser

MAX_OPERATORS = 10_000

# Tokens that cannot deepen a tree: names, constants, commas, brackets, dots, comments.
_FLAT = frozenset(
    {
        "IDENT", "UIDENT", "SCONST", "USCONST", "BCONST", "XCONST", "ICONST", "FCONST",
        "PARAM", "ASCII_44", "ASCII_40", "ASCII_41", "ASCII_59", "ASCII_46", "ASCII_91",
        "ASCII_93", "SQL_COMMENT", "C_COMMENT",
    }
)  # fmt: skip


class TooComplex(ValueError):
    """The statement has more operators than the broker parses."""


def operators(text: str) -> int:
    """How many tokens of TEXT could each add a level to its tree (an over-count)."""
    return sum(1 for token in pglast.parser.scan(text) if token.name not in _FLAT)


def parse_sql(text: str) -> Any:
    """pglast.parse_sql(TEXT), or TooComplex (pglast.parser.ParseError as pglast raises it)."""
    try:
        count = operators(text)
    except pglast.parser.ParseError:
        count = 0  # the parser reports it, as it would
    if count > MAX_OPERATORS:
        raise TooComplex(f"more than {MAX_OPERATORS} operators: too complex to inspect")
    return pglast.parse_sql(text)
