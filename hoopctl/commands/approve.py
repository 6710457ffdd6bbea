"""`hoopctl approve`: decide a request, or open the live approval queue."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from hoopctl.approval_requests import (
    ApprovalRequest,
    decision_error,
    describe_decision,
)
from hoopctl.cli_common import (
    BrokerOption,
    _address,
    _run,
    app,
    complete_request,
)
from hoopctl.errors import (
    ApiCallError,
    UsageError,
)


@app.command()
def approve(
    request_id: Annotated[
        str | None,
        typer.Argument(
            metavar="ID",
            help="Decide this request; without it, open the live queue.",
            autocompletion=complete_request,
            show_default=False,
        ),
    ] = None,
    deny: Annotated[bool, typer.Option("--deny", help="Deny instead of approving.")] = False,
    comment: Annotated[
        str | None,
        typer.Option("--comment", "-m", help="A comment the requester sees with the decision."),
    ] = None,
    broker: BrokerOption = None,
) -> None:
    """Approve (or --deny) a request; without an ID, open the live approval queue.

    Exit codes: 0 decision recorded, 1 the request can no longer be decided (already decided
    by you, no longer pending, expired) or another error, 2 no such request, 3 you may not
    decide it (your own request, or not in its approver groups).
    """
    if request_id is None:
        if deny or comment is not None:
            _run(lambda: _usage("--deny and --comment need a request ID"))
        raise typer.Exit(_run(lambda: _queue(broker)))

    from hoopctl.session import connect_api

    async def work() -> None:
        verb = "deny" if deny else "approve"
        api, _ = await connect_api(_address(broker))
        async with api:
            params: dict[str, Any] = {"id": request_id, "decision": verb}
            if comment:
                params["comment"] = comment
            try:
                record = await api.call("approvals.decide", params)
            except ApiCallError as exc:
                raise decision_error(request_id, verb, exc) from None
        decided = ApprovalRequest.from_record(record if isinstance(record, dict) else {})
        print(describe_decision(verb, decided))

    _run(work)


def _usage(message: str) -> None:
    raise UsageError(message)


def _queue(broker: str | None) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(
            "the live queue needs a terminal; use hoopctl approvals to list and "
            "hoopctl approve ID [--deny] to decide"
        )
    import asyncio

    from hoopctl.approve_queue import run_queue

    return asyncio.run(run_queue(_address(broker)))
