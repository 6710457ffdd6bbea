"""`hoopctl connect`: an interactive, recorded session on a target."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from hoopctl.cli_common import (
    BrokerOption,
    _address,
    _run,
    app,
    complete_target,
)


@app.command()
def connect(
    target: Annotated[
        str,
        typer.Argument(help="Target name (see hoopctl targets).", autocompletion=complete_target),
    ],
    command: Annotated[
        list[str] | None,
        typer.Argument(help="Run this command (after --) instead of a shell.", show_default=False),
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why you connect; recorded with the session.")
    ] = None,
    broker: BrokerOption = None,
) -> None:
    """Open an interactive, recorded session on a target; its exit status becomes hoopctl's."""

    from hoopctl.credentials import CredentialStore
    from hoopctl.session import current_profile
    from hoopctl.terminal import run_session
    from hoopctl.transport import open_connection

    async def work() -> int:
        address = _address(broker)
        store = CredentialStore(address)
        profile = await current_profile(store)
        conn = await open_connection(
            address, username=profile.user, client_keys=[(store.private_key(), profile.cert())]
        )
        words = ["connect"]
        if reason:
            words += ["--reason", reason]
        words.append(target)
        if command:
            words += ["--", *command]
        try:
            return await run_session(conn, shlex.join(words))
        finally:
            conn.close()

    raise typer.Exit(_run(work))
