"""`hoopctl targets`: the targets you may reach (and the names TAB offers)."""

from __future__ import annotations

from hoopctl.cli_common import (
    BrokerOption,
    OutputOption,
    _address,
    _run,
    app,
    remember_listed,
)
from hoopctl.output import OutputFormat, render


@app.command()
def targets(broker: BrokerOption = None, output: OutputOption = OutputFormat.table) -> None:
    """List the targets you may reach, with their type and policy."""

    from hoopctl.session import connect_api

    async def work() -> None:
        api, _ = await connect_api(_address(broker))
        async with api:
            rows = await api.call("targets.list")
        remember_listed(broker, "targets", [row.get("name") for row in rows], replace=True)
        render(
            rows,
            [
                ("name", "Name"),
                ("type", "Type"),
                ("description", "Description"),
                ("policy", "Policy"),
            ],
            output,
            empty="no targets are open to your groups",
        )

    _run(work)
