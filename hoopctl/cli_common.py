"""What every hoopctl command shares: the Typer app, common options, and error handling."""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from broker.cli_help import plain_help_types
from hoopctl import __version__
from hoopctl.address import BrokerAddress, resolve
from hoopctl.errors import HoopError
from hoopctl.output import OutputFormat

plain_help_types()

T = TypeVar("T")

app = typer.Typer(
    name="hoopctl",
    help="Reach production through the hoop broker: log in, connect, approve, replay.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

BrokerOption = Annotated[
    str | None,
    typer.Option(
        "--broker",
        "-b",
        envvar="HOOP_BROKER",
        help="Broker HOST[:PORT] (default port 2222). Env: HOOP_BROKER.",
        show_envvar=False,
    ),
]
OutputOption = Annotated[
    OutputFormat, typer.Option("--output", "-o", help="Output format.", case_sensitive=False)
]

_global_broker: str | None = None


def _address(broker: str | None) -> BrokerAddress:
    return resolve(broker or _global_broker)


def remember_listed(broker: str | None, kind: str, values: Any, *, replace: bool = False) -> None:
    """What a listing showed, kept for shell completion (hoopctl.completion_cache)."""
    from hoopctl.completion_cache import remember

    remember(str(_address(broker)), kind, values, replace=replace)


def _completion_broker(ctx: typer.Context) -> str | None:
    node: Any = ctx
    while node is not None:
        value = node.params.get("broker")
        if value:
            return str(value)
        node = node.parent
    return None


def _completer(kind: str) -> Callable[[typer.Context, str], list[str]]:
    def complete(ctx: typer.Context, incomplete: str) -> list[str]:
        from hoopctl.completion_cache import recall

        try:
            broker = str(resolve(_completion_broker(ctx)))
        except HoopError:
            return []
        return recall(broker, kind, incomplete)

    return complete


# Completion for the arguments that name a target, a session or a request: from the local
# cache only, so that a TAB never waits for the network.
complete_target = _completer("targets")
complete_session = _completer("sessions")
complete_request = _completer("requests")


def _ignore_unraisable(_unraisable: Any) -> None:
    return None


def _run(work: Callable[[], Awaitable[T]] | Callable[[], T]) -> T:
    """Run a command body; every HoopError becomes one line on stderr and its exit code."""
    try:
        result = work()
        if inspect.iscoroutine(result):
            import asyncio  # only here: most commands' start-up does not need it

            return asyncio.run(result)
        return result  # type: ignore[return-value]
    except HoopError as exc:
        print(f"hoopctl: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("hoopctl: interrupted", file=sys.stderr)
        # Ctrl-C can land inside a library object's constructor (authlib's OAuth2Client);
        # its destructor then fails at exit and Python prints a traceback. The one line above
        # is all the user should see.
        sys.unraisablehook = _ignore_unraisable
        raise typer.Exit(130) from None
    except BrokenPipeError:
        closed_stdout()
        raise typer.Exit(EXIT_CLOSED_PIPE) from None
    except Exception as exc:
        # A bug must still end in one line; HOOP_DEBUG=1 shows the traceback.
        if os.environ.get("HOOP_DEBUG"):
            raise
        print(f"hoopctl: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None


# As a process killed by SIGPIPE reports it (128 + 13), without a word: the reader (`head`,
# `less` quitting) has what it wanted.
EXIT_CLOSED_PIPE = 141


def closed_stdout() -> None:
    """The reader of stdout went away: point stdout at /dev/null, so that nothing more (not
    even the interpreter's final flush) fails on it."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _version(value: bool) -> None:
    if value:
        print(f"hoopctl {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    broker: BrokerOption = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    global _global_broker
    _global_broker = broker
