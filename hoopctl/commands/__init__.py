"""One module per hoopctl command; each registers its command on the app
(hoopctl.cli_common.app) when imported.

Each module imports at its top only what building the command line needs (typer and small
modules); what talks to the broker (asyncssh, authlib, keyring, the replay player) is imported
inside the command's body, so start-up, help and completion stay fast. A command line that
starts with a command's name loads that command's module alone (`load`); anything else (help,
completion, a global option first, a mistyped name) loads them all.
"""

from __future__ import annotations

import importlib

# The commands, in the order `hoopctl --help` lists them: the approver's commands, the
# engineer's, then the incident responder's. Each is the module of its name ("-" as "_").
COMMANDS = (
    "approve",
    "approvals",
    "request",
    "requests",
    "login",
    "logout",
    "whoami",
    "targets",
    "connect",
    "exec",
    "proxy",
    "mcp",
    "ssh-config",
    "replay",
    "sessions",
    "signals",
    "verify-bundle",
)


def load(command: str | None = None) -> None:
    """Register COMMAND on the app, or every command when COMMAND is None or names none."""
    names = (command,) if command is not None and command in COMMANDS else COMMANDS
    for name in names:
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
