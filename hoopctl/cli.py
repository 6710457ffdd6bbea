"""`hoopctl`: the command line for engineers, approvers and incident responders.

The Typer app and its shared options live in hoopctl.cli_common; each command is a module of
hoopctl.commands, which registers itself on the app when imported.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from hoopctl import commands  # noqa: F401  (registers every command on the app)
from hoopctl.cli_common import EXIT_CLOSED_PIPE, app, closed_stdout


def main(command: Callable[[], object] | None = None) -> None:
    """Run the command line; COMMAND is the app already built (a warm child's, hoopctl.warm)."""
    try:
        (command or app)()
    except BrokenPipeError:  # output written outside a command body (help, completion)
        closed_stdout()
        sys.exit(EXIT_CLOSED_PIPE)


if __name__ == "__main__":
    main()
