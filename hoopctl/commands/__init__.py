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

# Command name -> its module, in the order `hoopctl --help` lists them: the approver's
# commands, the engineer's, then the incident responder's.
MODULES = {
    "approve": "approve",
    "approvals": "approvals",
    "request": "request",
    "requests": "requests",
    "login": "login",
    "logout": "logout",
    "whoami": "whoami",
    "targets": "targets",
    "connect": "connect",
    "exec": "exec",
    "proxy": "proxy",
    "mcp": "mcp",
    "ssh-config": "ssh_config",
    "replay": "replay",
    "sessions": "sessions",
    "signals": "signals",
    "verify-bundle": "verify_bundle",
}


def load(command: str | None = None) -> None:
    """Register COMMAND on the app, or every command when COMMAND is None or names none."""
    modules = [MODULES[command]] if command in MODULES else list(MODULES.values())
    for module in modules:
        importlib.import_module(f"{__name__}.{module}")
