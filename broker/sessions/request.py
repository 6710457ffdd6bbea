"""Parsing what the client asked the broker to run: `connect [--reason TEXT] NAME [-- CMD …]`."""

from __future__ import annotations

import shlex
from dataclasses import dataclass


class RequestError(ValueError):
    """The session command is malformed; the message is for the user."""


@dataclass(frozen=True)
class SessionCommand:
    verb: str
    target: str
    reason: str | None = None
    argv: tuple[str, ...] = ()
    output: str = "table"


VERBS = ("connect", "exec")


def parse_session_command(command: str) -> SessionCommand:
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise RequestError(f"cannot parse the command: {exc}") from None
    if not words or words[0] not in VERBS:
        raise RequestError("expected: connect [--reason TEXT] TARGET [-- COMMAND …]")
    verb, rest = words[0], words[1:]
    reason: str | None = None
    output = "table"
    target: str | None = None
    while rest:
        word = rest.pop(0)
        if word == "--":
            break
        if word == "--reason":
            if not rest:
                raise RequestError("--reason needs a value")
            reason = rest.pop(0)
        elif word.startswith("--reason="):
            reason = word.split("=", 1)[1]
        elif word in ("--output", "-o") or word.startswith("--output="):
            value = word.split("=", 1)[1] if "=" in word else (rest.pop(0) if rest else "")
            if value not in ("table", "json", "csv"):
                raise RequestError("--output must be table, json or csv")
            output = value
        elif word.startswith("-"):
            raise RequestError(f"unknown option {word}")
        elif target is None:
            target = word
        else:
            rest.insert(0, word)
            break
    if target is None:
        raise RequestError(f"{verb}: which target?")
    return SessionCommand(verb=verb, target=target, reason=reason, argv=tuple(rest), output=output)
