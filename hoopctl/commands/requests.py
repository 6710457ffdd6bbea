"""`hoopctl requests`: your own requests and grants."""

from __future__ import annotations

from typing import Any

from hoopctl.approval_listing import records_of, render_requests
from hoopctl.approval_requests import (
    ApprovalRequest,
)
from hoopctl.cli_common import (
    BrokerOption,
    OutputOption,
    _address,
    _run,
    app,
    remember_listed,
)
from hoopctl.output import OutputFormat


@app.command()
def requests(output: OutputOption = OutputFormat.table, broker: BrokerOption = None) -> None:
    """List your own requests (commands held for approval, access requests) and your grants."""
    from hoopctl.session import connect_api

    async def work() -> None:
        api, _ = await connect_api(_address(broker))
        async with api:
            mine = records_of(await api.call("approvals.list", {"scope": "mine"}))
            access = records_of(await api.call("access.list", {}))
        seen: dict[str, dict[str, Any]] = {}
        for record in [*mine, *access]:
            seen.setdefault(str(record.get("id")), record)
        listed = sorted(
            (ApprovalRequest.from_record(record) for record in seen.values()),
            key=lambda request: request.created_at or 0,
            reverse=True,
        )
        remember_listed(broker, "requests", [request.id for request in listed])
        render_requests(
            listed,
            [
                ("id", "ID"),
                ("kind", "Kind"),
                ("target", "Target"),
                ("what", "Command / access"),
                ("state", "State"),
                ("approvers", "Approvers"),
                ("age", "Age"),
                ("expires", "Expires"),
                ("decided", "Decided by"),
            ],
            output,
            empty="you have no requests",
        )

    _run(work)
