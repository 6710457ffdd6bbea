"""`hoopctl ssh-config`: OpenSSH Host blocks for plain `ssh`, scp, sftp and rsync through the
broker: one for the broker itself, one per ssh target (`NAME.hoop`, SetEnv HOOP_TARGET)."""

from __future__ import annotations

import re
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

# A target name as the broker's config allows it: safe as an OpenSSH Host pattern and value.
_HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@app.command("ssh-config")
def ssh_config(
    broker: BrokerOption = None,
    alias: Annotated[
        str | None,
        typer.Option("--alias", help="Host alias to use in the block (default hoop-HOST)."),
    ] = None,
) -> None:
    """Print OpenSSH Host blocks: one for the broker, one per ssh target (NAME.hoop), so plain
    ssh, scp, sftp and rsync reach your targets through the broker with your certificate."""

    from hoopctl.credentials import CredentialStore
    from hoopctl.session import connect_api
    from hoopctl.ssh_config import SSH_TYPE, write_ssh_config

    async def work() -> None:
        address = _address(broker)
        store = CredentialStore(address)
        api, profile = await connect_api(address)
        async with api:
            rows = await api.call("targets.list")
        names = [
            str(row["name"])
            for row in rows
            if row.get("type") == SSH_TYPE and _HOST_NAME.match(str(row.get("name", "")))
        ]
        block, key_path = write_ssh_config(
            address, profile, store.private_key(), alias=alias, targets=names
        )
        stderr.print(f"note: wrote your key and certificate for OpenSSH under {key_path.parent}")
        if names:
            stderr.print(
                f"note: ssh {names[0]}.hoop, scp, sftp and rsync -e ssh reach your targets "
                "(OpenSSH 7.8 or later)"
            )
        sys.stdout.write(block)

    _run(work)
