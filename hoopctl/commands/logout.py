"""`hoopctl logout`: forget the certificate, key and refresh token for a broker."""

from __future__ import annotations

from typing import Annotated

import typer

from hoopctl.cli_common import (
    BrokerOption,
    _address,
    _run,
    app,
)
from hoopctl.output import stderr


@app.command()
def logout(
    broker: BrokerOption = None,
    forget_host_key: Annotated[
        bool, typer.Option("--forget-host-key", help="Also drop the pinned broker host key.")
    ] = False,
) -> None:
    """Remove the certificate, key and refresh token for a broker."""

    from hoopctl.credentials import CredentialStore
    from hoopctl.hostkeys import forget

    def work() -> None:
        address = _address(broker)
        existed = CredentialStore(address).clear()
        if forget_host_key:
            forget(address)
        stderr.print(f"Logged out of {address}" if existed else f"Not logged in to {address}")

    _run(work)
