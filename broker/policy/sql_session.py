"""Session state that changes how the server reads later statements, and what the broker does
about each piece of it.

The broker judges statements by parsing their text. Some settings change how the *server*
reads the same bytes; if a session could change them, the broker would judge one statement
while the server ran another. Each one is either fixed by the broker at connect and refused
afterwards, or tracked:

MySQL / MariaDB (the broker connects with ``utf8mb4`` and an sql_mode without the modes below)
  - the character set (``SET NAMES``, ``SET CHARACTER SET``, ``character_set_client``,
    ``character_set_connection``, ``collation_connection``, ``character_set_results``):
    refused. In gbk, big5, sjis, cp932 and gb18030 a multi-byte character can end in the byte
    of ``\\`` or ``'``, so a string the broker reads as closed is open to the server.
  - ``sql_mode``: allowed only as a literal list of modes that do not change how text is read;
    ``NO_BACKSLASH_ESCAPES``, ``ANSI_QUOTES``, ``ANSI``, ``PIPES_AS_CONCAT``, ``IGNORE_SPACE``,
    ``HIGH_NOT_PRECEDENCE`` and the compatibility modes (``ORACLE``, ``MSSQL``, …) are refused.
PostgreSQL (the broker connects with ``client_encoding=UTF8`` and
``standard_conforming_strings=on``; connection options outrank ALTER ROLE/DATABASE/SYSTEM)
  - ``client_encoding`` (and ``SET NAMES``), ``standard_conforming_strings`` and
    ``backslash_quote``: refused (``RESET`` returns to the broker's value and is allowed).
  - ``search_path``, ``SET ROLE``, ``SET SESSION AUTHORIZATION``: tracked; after any of them
    the schema of an unqualified name is unknown for the rest of the session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pglast import ast


@dataclass
class SessionState:
    """What earlier input of one session changed, as far as judging later input is concerned."""

    names_unsure: bool = False  # search_path or role changed: unqualified names may be anywhere


# ------------------------------------------------------------------------------ PostgreSQL

_PG_FIXED = {
    "client_encoding": "the broker fixes the client encoding (UTF8) so that it reads statements "
    "exactly as the server does",
    "names": "the broker fixes the client encoding (UTF8) so that it reads statements "
    "exactly as the server does",
    "standard_conforming_strings": "the broker fixes standard_conforming_strings (on): with "
    "it off, a backslash can end a string the broker reads as still open",
    "backslash_quote": "the broker fixes how backslashes are read in strings",
}


def pg_state_problem(node: ast.Node) -> str | None:
    """Why the broker refuses NODE, if it changes a setting the broker fixes."""
    if not isinstance(node, ast.VariableSetStmt):
        return None
    kind = getattr(node.kind, "name", str(node.kind))
    if kind in ("VAR_RESET", "VAR_RESET_ALL"):
        return None  # back to the value the broker set at connect
    return _PG_FIXED.get((node.name or "").lower())


# --------------------------------------------------------------------- unparsed statements

_EFFECT_WORDS = {
    "destroys": re.compile(
        r"(?<![\w$@])(DELETE|DROP|TRUNCATE|UPDATE|REPLACE|MERGE|RENAME|ALTER)(?![\w$])", re.I
    ),
    "code": re.compile(
        r"(?<![\w$@])(CALL|EXECUTE|EXEC|DO|PREPARE|LOAD|HANDLER|INSTALL|FUNCTION|PROCEDURE)"
        r"(?![\w$])",
        re.I,
    ),
    "session": re.compile(r"^\s*(SET|USE|RESET|BEGIN|START|COMMIT|ROLLBACK)(?![\w$])", re.I),
}


def effects_of_words(bare: str) -> frozenset[str]:
    """What a statement the parser could not read may do, from the keywords it holds (BARE:
    comments and strings blanked). Used only to make a decision stricter."""
    effects = {"writes"} if bare.strip() else set()
    for effect, pattern in _EFFECT_WORDS.items():
        if pattern.search(bare):
            effects.add(effect)
    if "destroys" in effects:
        effects.add("writes")
    return frozenset(effects)
