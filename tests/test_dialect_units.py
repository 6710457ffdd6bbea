"""A dialect lives in its protocol unit (docs/architecture.md, "Protocol units").

The core never names an SQL dialect: not in an identifier, an import, or a string it uses
(docstrings and comments may explain). Only the dialect's own unit (broker/protocols/NAME.py
or the package broker/protocols/NAME/),
the registry (broker/protocols/__init__.py) and the config (broker/config.py and its embedded
default, broker/defaults.py) do. A module that imports the sqlite3 driver is part of the
broker's own store, which may name the two databases it runs on (SQLite's sqlite_master and
SQLITE_BUSY; PostgreSQL for `[store] url`), never a target's dialect."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from broker.protocols import UNITS, sql_dialects, sql_unit
from tests.helpers import REPO

BROKER = REPO / "broker"
# The registry and the config may name every dialect.
REGISTRY_AND_CONFIG = {
    BROKER / "protocols" / "__init__.py",
    BROKER / "config.py",
    BROKER / "defaults.py",
}

# What the broker's own store runs on (broker/store.py, broker/database.py).
STORE_DATABASES = {"sqlite", "postgres", "postgresql"}

_CAMEL = re.compile(r"[A-Z]?[a-z]+\d*|[A-Z]+\d*(?![a-z])|\d+")


def _words(text: str) -> set[str]:
    """The words of an identifier or string: its parts between anything not a letter or digit
    (MySQL, SQLITE, busy), and those parts split at case changes (PostgresTarget -> postgres,
    target); digits stay with their word (sqlite3 is the driver's name, not the dialect's)."""
    out = set()
    for part in re.split(r"[^A-Za-z0-9]+", text):
        out.add(part.lower())
        out.update(word.lower() for word in _CAMEL.findall(part))
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _texts(source: str) -> list[tuple[int, str]]:
    """(line, text) of every name and string the code uses."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in skip:
                out.append((line, node.value))
        elif isinstance(node, ast.Name):
            out.append((line, node.id))
        elif isinstance(node, ast.Attribute):
            out.append((line, node.attr))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.append((line, node.name))
        elif isinstance(node, ast.arg):
            out.append((line, node.arg))
        elif isinstance(node, ast.keyword) and node.arg:
            out.append((line, node.arg))
        elif isinstance(node, ast.alias):
            out.append((line, f"{node.name} {node.asname or ''}"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((line, node.module))
    return out


def _imports_sqlite_driver(source: str) -> bool:
    return re.search(r"^\s*import sqlite3\b", source, re.M) is not None


def dialect_names() -> dict[str, set[str]]:
    """Each SQL unit's name and the other names it goes by (postgresql, mariadb)."""
    return {name: {name, *sql_unit(name).aliases} for name in sql_dialects()}


def misplaced(path: Path, source: str, names: dict[str, set[str]]) -> list[str]:
    """Where SOURCE (the module at PATH) names a dialect it may not."""
    if path in REGISTRY_AND_CONFIG:
        return []
    units = BROKER / "protocols"
    own = path.stem if path.parent == units else None
    if path.parent.parent == units:  # a unit that is a package: broker/protocols/NAME/…
        own = path.parent.name
    store = _imports_sqlite_driver(source)
    found = []
    for line, text in _texts(source):
        words = _words(text)
        for dialect, spellings in names.items():
            if dialect == own or not words & spellings:
                continue
            if store and words & spellings <= STORE_DATABASES:
                continue
            found.append(f"{path.relative_to(REPO)}:{line}: {dialect} in {text[:60]!r}")
    return found


def test_every_sql_unit_is_registered_with_its_aliases() -> None:
    names = dialect_names()
    assert set(names) == {"postgres", "mysql", "sqlite"}
    assert names["mysql"] == {"mysql", "mariadb"}
    assert names["postgres"] == {"postgres", "postgresql"}
    assert set(UNITS) == {*names, "ssh", "local"}


def test_no_dialect_is_named_outside_its_unit_the_registry_and_the_config() -> None:
    names = dialect_names()
    found = []
    for path in sorted(BROKER.rglob("*.py")):
        found += misplaced(path, path.read_text(), names)
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "snippet",
    [
        'def judge(dialect):\n    if dialect == "mysql":\n        return 1\n',
        "from broker.config import PostgresTarget\n",
        "def column_sources_postgres(sql):\n    return sql\n",
        'QUERIES = {"sqlite": "SELECT name FROM sqlite_master"}\n',
        "def lookup(text):\n    return f'SELECT * FROM {text} -- MariaDB'\n",
    ],
)
def test_the_check_finds_a_dialect_branch_in_the_core(snippet: str) -> None:
    # The check can fail: the same code in a core module is reported.
    core = BROKER / "sessions" / "sql_exec.py"
    assert misplaced(core, snippet, dialect_names())


def test_the_check_lets_a_unit_name_itself_and_the_store_its_driver() -> None:
    names = dialect_names()
    own = 'NAME = "mysql"\nclass MysqlConnection: ...\n'
    assert not misplaced(BROKER / "protocols" / "mysql.py", own, names)
    assert not misplaced(BROKER / "protocols" / "mysql" / "wire.py", own, names)
    assert misplaced(BROKER / "protocols" / "postgres" / "wire.py", own, names)
    assert misplaced(BROKER / "protocols" / "sqlite.py", own, names)
    store = "import sqlite3\n\ndef busy(e):\n    return e.sqlite_errorname == 'SQLITE_BUSY'\n"
    assert not misplaced(BROKER / "store.py", store, names)
    # The store may name the databases it runs on, never a target's dialect.
    assert not misplaced(BROKER / "store.py", store + "MODE = 'postgres'\n", names)
    assert misplaced(BROKER / "store.py", store + "MODE = 'mariadb'\n", names)
    prose = '"""Reads PostgreSQL\'s catalog like MySQL does."""\n# sqlite too\nX = 1\n'
    assert not misplaced(BROKER / "masking_views.py", prose, names)
