"""What every protocol unit is, and the one error every unit raises when a target fails."""

from __future__ import annotations

from typing import ClassVar, Literal


class TargetError(Exception):
    """The target could not be reached or refused us; the message is safe to show the user."""


class Unit:
    """One protocol: everything the broker knows that is specific to it.

    ``name`` is the target ``type`` in the config; ``family`` says which interface the unit
    offers the session core: ``"sql"`` (broker.protocols.sql.SqlUnit) or ``"terminal"``
    (broker.protocols.terminal.TerminalUnit)."""

    name: ClassVar[str]
    family: ClassVar[Literal["sql", "terminal"]]
