"""`hoopctl whoami`: who the broker says you are, your groups and your certificate's expiry."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from hoopctl.cli_common import (
    BrokerOption,
    OutputOption,
    _address,
    _run,
    app,
)
from hoopctl.output import OutputFormat, certificate_expiry, render_record


@app.command()
def whoami(broker: BrokerOption = None, output: OutputOption = OutputFormat.table) -> None:
    """Show who you are on the broker: user, groups, certificate expiry."""

    from hoopctl.session import connect_api

    async def work() -> None:
        address = _address(broker)
        api, profile = await connect_api(address)
        async with api:
            me = await api.call("whoami")
        record = {
            "user": me["user"],
            "groups": me["groups"],
            "kind": me.get("kind", "person"),  # "agent" for an agent's identity
            "broker": str(address),
            "certificate_expires": datetime.fromtimestamp(profile.valid_before, tz=UTC).isoformat(),
            "certificate_expires_in": int(profile.valid_before - time.time()),
        }
        if output is OutputFormat.table:
            record["certificate_expires"] = certificate_expiry(profile.valid_before)
        render_record(
            record,
            [
                ("user", "User"),
                ("groups", "Groups"),
                ("kind", "Kind"),
                ("broker", "Broker"),
                ("certificate_expires", "Certificate expires"),
            ],
            output,
        )

    _run(work)
