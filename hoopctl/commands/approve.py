"""`hoopctl approve`: decide a request, or open the live approval queue."""

from __future__ import annotations

import sys
from collections.abc import Coroutine
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
    complete_target,
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
    standing: Annotated[
        str | None,
        typer.Option(
            "--standing",
            metavar="PATTERN",
            help="Pre-approve this command (or SQL statement) for --group on --target, --for "
            "a period: matching commands then run without waiting.",
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target", help="With --standing: the target.", autocompletion=complete_target
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option("--group", help="With --standing: the group whose members it covers."),
    ] = None,
    for_: Annotated[
        str | None,
        typer.Option("--for", metavar="DURATION", help="With --standing: how long (7d, 12h)."),
    ] = None,
    revoke: Annotated[
        str | None,
        typer.Option("--revoke", metavar="ID", help="End the standing approval ID now."),
    ] = None,
    broker: BrokerOption = None,
) -> None:
    """Approve (or --deny) a request; without an ID, open the live approval queue.

    --standing PATTERN --target T --group G --for 7d --comment TEXT pre-approves a command
    pattern; --revoke ID ends one (hoopctl approvals --standing lists them).

    Exit codes: 0 decision recorded, 1 the request can no longer be decided (already decided
    by you, no longer pending, expired) or another error, 2 no such request (or bad usage),
    3 you may not decide it (your own request, or not in its approver groups; for
    --standing, a group you belong to).
    """
    if standing is not None or revoke is not None:
        _run(
            lambda: _standing(
                request_id, standing, target, group, for_, comment, revoke, deny, broker
            )
        )
        return
    if target is not None or group is not None or for_ is not None:
        _run(lambda: _usage("--target, --group and --for go with --standing"))
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


def _standing(
    request_id: str | None,
    pattern: str | None,
    target: str | None,
    group: str | None,
    for_: str | None,
    comment: str | None,
    revoke: str | None,
    deny: bool,
    broker: str | None,
) -> Coroutine[Any, Any, None]:
    from hoopctl.standing_approvals import grant_standing, revoke_standing

    if request_id is not None or deny:
        raise UsageError("--standing and --revoke take no request ID and no --deny")
    if revoke is not None:
        if pattern is not None or target or group or for_:
            raise UsageError("--revoke takes only the standing approval's ID")
        return revoke_standing(_address(broker), revoke)
    assert pattern is not None
    missing = [
        flag
        for flag, value in (
            ("--target", target),
            ("--group", group),
            ("--for", for_),
            ("--comment", comment),
        )
        if not value
    ]
    if missing:
        raise UsageError(f"--standing needs {', '.join(missing)}")
    assert target and group and for_ and comment
    return grant_standing(_address(broker), pattern, target, group, for_, comment)


def _queue(broker: str | None) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(
            "the live queue needs a terminal; use hoopctl approvals to list and "
            "hoopctl approve ID [--deny] to decide"
        )
    import asyncio

    from hoopctl.approve_queue import run_queue

    return asyncio.run(run_queue(_address(broker)))
