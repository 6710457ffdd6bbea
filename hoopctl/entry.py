"""The `hoopctl` console script: a TAB on a cached name is answered before the command line
is built (hoopctl.fast_complete); everything else goes to the Typer app (hoopctl.cli)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    if os.environ.get("_HOOPCTL_COMPLETE", "").startswith("complete_") and not os.environ.get(
        "_HOOPCTL_FULL_COMPLETE"
    ):
        from hoopctl.fast_complete import answer

        text = answer(os.environ)
        if text is not None:
            sys.stdout.write(text)
            return
    from hoopctl.cli import main as run_cli

    run_cli()


if __name__ == "__main__":
    main()
