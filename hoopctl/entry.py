"""The `hoopctl` console script: a TAB on a cached name is answered before the command line
is built (hoopctl.fast_complete); everything else goes to the Typer app (hoopctl.cli)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        # Answered before the command line is built (typer, rich and every command's module):
        # what scripts call most often, and the start-up cost everyone sees.
        from hoopctl import __version__

        sys.stdout.write(f"hoopctl {__version__}\n")
        return
    if os.environ.get("_HOOPCTL_COMPLETE", "").startswith("complete_") and not os.environ.get(
        "_HOOPCTL_FULL_COMPLETE"
    ):
        from hoopctl.fast_complete import answer

        text = answer(os.environ)
        if text is not None:
            sys.stdout.write(text)
            return
    if os.environ.get("HOOPCTL_PERSIST"):
        from hoopctl.warm import run_warm

        status = run_warm(sys.argv[1:])
        if status is not None:
            sys.exit(status)
    from hoopctl.cli import main as run_cli

    run_cli()


if __name__ == "__main__":
    main()
