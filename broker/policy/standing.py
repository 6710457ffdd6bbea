"""Whether a command or statement is one a standing approval names.

A standing approval pre-approves one command pattern for a group on a target. The match is
on what will run, never on text alone:

- shell targets: the line must be one plain simple command, with no redirection, assignment,
  expansion, substitution, glob or list operator, that the shell judge reads in full (no
  unknown part, nothing only known at run time, no inline code). Its program and arguments,
  after quote removal, must equal the pattern's words one by one; a pattern word may hold
  `*` and `?`, which match within one path segment of that one argument (never `/`, never
  `..`, never an option the pattern word does not start as). No comment may follow.
- SQL targets: the input must be one statement the policy parser reads in full. On
  PostgreSQL (pglast, the server's own parser) it matches when its parse tree, printed back,
  equals the pattern's; other dialects match the pattern's text exactly (outer whitespace
  and a final `;` aside), because their parser may drop what the server runs (MySQL's
  `/*! … */`).
"""

from __future__ import annotations

import re
import shlex

import bashlex
import bashlex.errors

from broker.policy.shell import parse_command_line
from broker.policy.sql import Dialect, parse_sql
from broker.protocols import sql_unit

# Characters a standing pattern for a shell target may not hold: the pattern is a list of
# words, never a script.
_SHELL_META = set(";&|<>$`()\n\r\\{}")


def pattern_problem(pattern: str, dialect: Dialect | None) -> str | None:
    """Why PATTERN cannot be a standing approval's pattern (DIALECT None: a shell target)."""
    if not pattern.strip():
        return "the pattern is empty"
    if len(pattern) > 4096:
        return "the pattern is longer than 4096 characters"
    if dialect is None:
        try:
            words = shlex.split(pattern)
        except ValueError as exc:
            return f"cannot read the pattern as shell words: {exc}"
        if not words:
            return "the pattern is empty"
        bad = sorted({ch for word in words for ch in word if ch in _SHELL_META})
        if bad:
            return "a pattern is one command with its arguments; it may not hold " + " ".join(
                repr(ch) for ch in bad
            )
        if any(ch in words[0] for ch in "*?["):
            return "the program name must be written out, without * or ?"
        return None
    parsed = parse_sql(pattern, dialect)
    if parsed.unknown is not None:
        return f"cannot read the pattern as SQL: {parsed.unknown}"
    if len(parsed.statements) != 1:
        return "a pattern is exactly one SQL statement"
    statement = parsed.statements[0]
    if statement.unknown or statement.refused:
        return f"the pattern's statement cannot be judged: {statement.unknown or statement.refused}"
    return None


def matches(pattern: str, text: str, dialect: Dialect | None) -> bool:
    """True when TEXT (exactly what will run) is what PATTERN names; never raises."""
    try:
        if pattern_problem(pattern, dialect) is not None:
            return False
        if dialect is None:
            return _shell_matches(pattern, text)
        return _sql_matches(pattern, text, dialect)
    except Exception:
        return False  # fail closed: a match that cannot be shown is no match


def _shell_matches(pattern: str, line: str) -> bool:
    words = _plain_command_words(line)
    if words is None:
        return False
    wanted = shlex.split(pattern)
    if len(words) != len(wanted) or words[0] != wanted[0]:
        return False
    return all(_word_matches(word, want) for word, want in zip(words[1:], wanted[1:], strict=True))


def _word_matches(word: str, want: str) -> bool:
    """WORD is what the pattern word WANT names. `*` and `?` stand for characters within one
    path segment (never `/`); a word they fill may not climb (`..`) or be an option where
    the pattern word is none (`systemctl restart *` never covers `--host=evil`)."""
    if "*" not in want and "?" not in want:
        return word == want
    if word.startswith("-") and not want.startswith("-"):
        return False
    if ".." in word.split("/"):
        return False
    regex = "".join("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch) for ch in want)
    return re.fullmatch(regex, word, flags=re.DOTALL) is not None


def _plain_command_words(line: str) -> list[str] | None:
    """The words of LINE when it is one plain simple command the judge reads in full."""
    line = line.strip(" \t")
    if not line or "\n" in line or "\r" in line:
        return None
    parsed = parse_command_line(line)
    if parsed.unknown is not None or not parsed.commands:
        return None
    if any(c.runtime or c.opaque for c in parsed.commands):
        return None
    try:
        nodes = bashlex.parse(line)
    except (bashlex.errors.ParsingError, NotImplementedError, IndexError, TypeError):
        return None
    if len(nodes) != 1 or nodes[0].kind != "command":
        return None
    if nodes[0].pos[1] != len(line):
        return None  # a comment after it: text the broker reads as nothing (or `#` later)
    parts = nodes[0].parts
    if not parts or any(part.kind != "word" or getattr(part, "parts", None) for part in parts):
        return None  # a redirection, an assignment, an expansion or a substitution
    # The judge's reading of the outermost command: its program and arguments as the shell
    # passes them (quotes removed), which is what the words must equal.
    outer = parsed.commands[0]
    words = [outer.program, *outer.args]
    if len(words) != len(parts):
        return None
    return words


def _sql_matches(pattern: str, text: str, dialect: Dialect) -> bool:
    parsed = parse_sql(text, dialect)
    if parsed.unknown is not None or len(parsed.statements) != 1:
        return False
    statement = parsed.statements[0]
    if statement.unknown or statement.refused:
        return False
    if sql_unit(dialect).parser == "pglast":
        return _pg_printed(text) == _pg_printed(pattern)
    return _trimmed(text) == _trimmed(pattern)


def _pg_printed(sql: str) -> str:
    from pglast.stream import RawStream

    return str(RawStream()(sql))


def _trimmed(sql: str) -> str:
    sql = sql.strip()
    while sql.endswith(";"):
        sql = sql[:-1].rstrip()
    return sql
