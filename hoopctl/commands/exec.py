"""`hoopctl exec`: run SQL or a command on a target once, for scripts and agents."""

from __future__ import annotations

import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from hoopctl.approval_listing import exec_words
from hoopctl.cli_common import (
    BrokerOption,
    _address,
    _run,
    app,
    complete_request,
    complete_target,
)
from hoopctl.errors import UsageError


class ExecOutput(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


@app.command("exec")
def exec_(
    target: Annotated[
        str,
        typer.Argument(help="Target name (see hoopctl targets).", autocompletion=complete_target),
    ],
    command: Annotated[
        list[str] | None,
        typer.Argument(
            help="For ssh/local targets: the command to run (after --).", show_default=False
        ),
    ] = None,
    sql: Annotated[str | None, typer.Option("--command", "-c", help="SQL to run.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Read SQL from FILE (- for stdin).")
    ] = None,
    output: Annotated[
        ExecOutput | None,
        typer.Option(
            "--output",
            "-o",
            help="SQL result format (default table); a command's output passes through as it is.",
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Recorded with the request.")
    ] = None,
    wait: Annotated[
        str | None,
        typer.Option(
            "--wait",
            metavar="DURATION",
            help="If the command needs approval, wait this long for it (default 5m).",
        ),
    ] = None,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait", help="If the command needs approval, exit 4 at once with the request id."
        ),
    ] = False,
    request: Annotated[
        str | None,
        typer.Option(
            "--request",
            metavar="ID",
            help="Run the command of this approved request (once); no input runs it as approved.",
            autocompletion=complete_request,
        ),
    ] = None,
    summary: Annotated[
        bool,
        typer.Option(
            "--summary",
            help="End with a line `hoop: summary {json}` on stderr: the session id, the exit "
            "status and, for SQL, each statement's rows, masked counts and truncation.",
        ),
    ] = False,
    broker: BrokerOption = None,
) -> None:
    """Run SQL (or a command) on a target once, for scripts and agents.

    Exit codes: 0 success, 1 error from the target, 2 usage, 3 denied by policy or by an
    approver, 4 approval required, expired or cancelled (Ctrl-C while waiting cancels).
    """

    def read_input() -> bytes:
        if command:
            if sql is not None or file is not None:
                raise UsageError("give either a command after -- or SQL with -c/-f, not both")
            if output is not None:
                raise UsageError(
                    "--output formats SQL results; a command's output is passed through as it is"
                )
            return b""
        if sql is not None and file is not None:
            raise UsageError("give SQL with either -c or -f, not both")
        if sql is not None:
            return sql.encode()
        if file is not None and str(file) != "-":
            try:
                return file.read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read {file}: {exc.strerror}") from None
        if sys.stdin.isatty():
            if request is not None:
                return b""  # run the approved text as it was approved
            raise UsageError("no SQL given: use -c SQL, -f FILE, or pipe it on stdin")
        return sys.stdin.buffer.read()

    from hoopctl.credentials import CredentialStore
    from hoopctl.exec_relay import run_exec
    from hoopctl.session import current_profile
    from hoopctl.transport import open_connection

    async def work() -> int:
        approval_words = exec_words(wait, no_wait, request)
        data = read_input()
        address = _address(broker)
        store = CredentialStore(address)
        profile = await current_profile(store)
        conn = await open_connection(
            address, username=profile.user, client_keys=[(store.private_key(), profile.cert())]
        )
        words = ["exec"] if command else ["exec", "--output", (output or ExecOutput.table).value]
        if reason:
            words += ["--reason", reason]
        if summary:
            words.append("--summary")
        words += approval_words
        words.append(target)
        if command:
            words += ["--", *command]
        try:
            return await run_exec(conn, shlex.join(words), data)
        finally:
            conn.close()

    raise typer.Exit(_run(work))
