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

    try:
        # Only the named command's module is loaded (the one a script runs), not all of them.
        run_cli(named=sys.argv[1] if len(sys.argv) > 1 else None)
    except SystemExit as exc:
        _leave(exc)
    _leave(SystemExit(0))


def _leave(request: SystemExit) -> None:
    """Exit with REQUEST's status without tearing the interpreter down: freeing every module's
    objects (typer, rich, pydantic, asyncssh, cryptography) took a one-off `exec` about a
    quarter of a second after its output was complete. Where anything could still be owed at exit (a
    status that is not a number, a thread still running, output that cannot be flushed),
    the interpreter's own exit runs as usual."""
    import threading  # here: `--version` and a TAB never need it

    code = 0 if request.code is None else request.code
    if not isinstance(code, int) or threading.active_count() > 1:
        raise request
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise request from None
    os._exit(code)


if __name__ == "__main__":
    main()
