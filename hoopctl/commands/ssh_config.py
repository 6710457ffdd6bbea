"""`hoopctl ssh-config`: an OpenSSH Host block for plain `ssh` through the broker."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from hoopctl.cli_common import (
    BrokerOption,
    _address,
    _run,
    app,
)
from hoopctl.output import stderr


@app.command("ssh-config")
def ssh_config(
    broker: BrokerOption = None,
    alias: Annotated[
        str | None,
        typer.Option("--alias", help="Host alias to use in the block (default hoop-HOST)."),
    ] = None,
) -> None:
    """Print an OpenSSH Host block so plain `ssh` reaches the broker with your certificate."""

    from hoopctl.credentials import CredentialStore
    from hoopctl.session import current_profile
    from hoopctl.ssh_config import write_ssh_config

    async def work() -> None:
        address = _address(broker)
        store = CredentialStore(address)
        profile = await current_profile(store)
        block, key_path = write_ssh_config(address, profile, store.private_key(), alias=alias)
        stderr.print(f"note: wrote your key and certificate for OpenSSH under {key_path.parent}")
        sys.stdout.write(block)

    _run(work)
