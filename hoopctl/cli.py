"""`hoopctl`: the command line for engineers, approvers and incident responders.

The Typer app and its shared options live in hoopctl.cli_common; each command is a module of
hoopctl.commands, which registers itself on the app when imported (hoopctl.commands.load).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from hoopctl.cli_common import EXIT_CLOSED_PIPE, app, closed_stdout
from hoopctl.commands import load


def main(command: Callable[[], object] | None = None, *, named: str | None = None) -> None:
    """Run the command line; COMMAND is the app already built (a warm child's, hoopctl.warm).
    Otherwise the commands are registered first: only the one NAMED (the console script's
    first argument) when that is a command's name, else all of them."""
    if command is None:
        load(named)
    try:
        (command or app)()
    except BrokenPipeError:  # output written outside a command body (help, completion)
        closed_stdout()
        sys.exit(EXIT_CLOSED_PIPE)


if __name__ == "__main__":
    main()
