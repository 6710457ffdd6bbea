"""`hoopctl approvals`: the requests you may decide, your own and those you decided on."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from hoopctl.approval_listing import Scope, StateFilter, records_of, render_requests
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
from hoopctl.errors import UsageError
from hoopctl.output import OutputFormat


def _usage(message: str) -> None:
    raise UsageError(message)


@app.command()
def approvals(
    state: Annotated[
        StateFilter | None,
        typer.Option("--state", help="Only requests in this state.", case_sensitive=False),
    ] = None,
    scope: Annotated[
        Scope | None,
        typer.Option(
            "--scope",
            help="review: those you may decide; mine: your own; all (the default): both, "
            "and those you decided on.",
            case_sensitive=False,
        ),
    ] = None,
    standing: Annotated[
        bool,
        typer.Option("--standing", help="List standing approvals instead of requests."),
    ] = False,
    all_: Annotated[
        bool,
        typer.Option("--all", help="With --standing: also those revoked or expired."),
    ] = False,
    output: OutputOption = OutputFormat.table,
    broker: BrokerOption = None,
) -> None:
    """List approval requests: those you may decide, your own and those you decided on.

    With --standing: the standing approvals in force that you granted, that cover a group
    of yours, or that you could revoke (--all: also those ended).
    """
    if standing:
        from hoopctl.standing_approvals import list_standing

        if state is not None or scope is not None:
            _run(lambda: _usage("--state and --scope list requests, not standing approvals"))
        _run(lambda: list_standing(_address(broker), all_, output))
        return
    if all_:
        _run(lambda: _usage("--all goes with --standing"))

    from hoopctl.session import connect_api

    async def work() -> None:
        params: dict[str, Any] = {}
        if state is not None:
            params["state"] = state.value
        if scope is not None:
            params["scope"] = scope.value
        api, _ = await connect_api(_address(broker))
        async with api:
            records = records_of(await api.call("approvals.list", params))
        remember_listed(broker, "requests", [record.get("id") for record in records])
        render_requests(
            [ApprovalRequest.from_record(record) for record in records],
            [
                ("id", "ID"),
                ("state", "State"),
                ("requester", "Requester"),
                ("target", "Target"),
                ("what", "Command"),
                ("why", "Rule or cause"),
                ("reason", "Reason"),
                ("approvers", "Approvers"),
                ("expires", "Expires"),
                ("decided", "Decided by"),
            ],
            output,
            empty="no approval requests" + (f" in state {state.value}" if state else ""),
        )

    _run(work)
