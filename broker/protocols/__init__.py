"""The protocol units: one module per protocol, asked for by the target type.

A unit holds everything specific to its protocol (connecting and cancelling, the parser it
needs and that parser's dialect settings, catalog queries, the shapes of its errors); the core
asks it through one interface (broker.protocols.sql.SqlUnit, broker.protocols.terminal
.TerminalUnit). A new protocol is a new module here and one name in ``UNITS``.

Units are imported when first asked for, so a broker that serves only ssh targets never loads
a database driver."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.protocols.base import Unit
    from broker.protocols.sql import DatabaseConnection, SqlUnit
    from broker.protocols.terminal import TerminalUnit

# The target types, each the name of its unit's module in this package.
UNITS = ("postgres", "mysql", "sqlite", "ssh", "local")


class UnknownProtocol(ValueError):
    """A name that is no protocol unit's."""


def unit(name: str) -> Unit:
    """The unit of target type NAME."""
    if name not in UNITS:
        raise UnknownProtocol(f"no protocol unit is called {name!r}")
    found: Unit = importlib.import_module(f"{__name__}.{name}").UNIT
    return found


def sql_unit(name: str) -> SqlUnit:
    """The unit of SQL dialect NAME (a database target type)."""
    found = unit(name)
    if found.family != "sql":
        raise UnknownProtocol(f"{name!r} is not an SQL dialect")
    return found  # type: ignore[return-value]


def terminal_unit(name: str) -> TerminalUnit:
    """The unit of terminal target type NAME."""
    found = unit(name)
    if found.family != "terminal":
        raise UnknownProtocol(f"{name!r} is not a terminal protocol")
    return found  # type: ignore[return-value]


def unit_for(target: Any) -> Unit:
    """The unit of a configured target (its ``type``)."""
    return unit(target.type)


def sql_dialects() -> tuple[str, ...]:
    """The names of the SQL dialects, in registry order."""
    return tuple(name for name in UNITS if unit(name).family == "sql")


async def open_database(target: Any) -> DatabaseConnection:
    """A connection to database TARGET, with the broker's held credential."""
    return await sql_unit(target.type).open(target)
