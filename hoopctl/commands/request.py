"""`hoopctl request`: ask for time-boxed access to a target, and optionally wait for it."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from broker.durations import format_duration
from hoopctl.approval_listing import duration_seconds
from hoopctl.approval_requests import (
    FINAL_STATES,
    ApprovalRequest,
    DecisionRefused,
    UnknownRequest,
    local_time,
)
from hoopctl.cli_common import (
    BrokerOption,
    _address,
    _run,
    app,
    complete_target,
)
from hoopctl.errors import (
    EXIT_APPROVAL,
    EXIT_DENIED,
    ApiCallError,
    HoopError,
    UsageError,
)
from hoopctl.escape import escape
from hoopctl.output import stderr

if TYPE_CHECKING:
    from hoopctl.transport import ApiClient


@app.command("request")
def request_access(
    target: Annotated[
        str,
        typer.Argument(help="Target name (see hoopctl targets).", autocompletion=complete_target),
    ],
    for_: Annotated[
        str, typer.Option("--for", metavar="DURATION", help="How long you need access (1h, 30m).")
    ] = "1h",
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why; shown to the approvers.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the decision (exit 0 granted, 3 denied).")
    ] = False,
    broker: BrokerOption = None,
) -> None:
    """Ask for time-boxed access to a target; prints the request id.

    With --wait: exit 0 when granted, 3 when denied, 4 when it expires or is cancelled, or when
    you stop waiting with Ctrl-C (the request stays pending).
    """
    seconds = 0

    from hoopctl.session import connect_api

    async def work() -> int:
        nonlocal seconds
        seconds = duration_seconds(for_, "--for")
        if seconds <= 0:
            raise UsageError("--for must be longer than 0s")
        api, _ = await connect_api(_address(broker))
        async with api:
            params: dict[str, Any] = {"target": target, "duration": seconds}
            if reason is not None:
                params["reason"] = reason
            try:
                record = await api.call("access.request", params)
            except ApiCallError as exc:
                if exc.code in ("not_found", "bad_request"):
                    raise UnknownRequest(escape(str(exc))) from None
                if exc.code == "forbidden":
                    raise DecisionRefused(escape(str(exc))) from None
                raise HoopError(escape(str(exc))) from None
            request = ApprovalRequest.from_record(record if isinstance(record, dict) else {})
            groups = ", ".join(request.approver_groups) or "the approvers"
            stderr.print(
                f"requested access to {escape(request.target)} for {format_duration(seconds)}: "
                f"request {escape(request.id)} waits for {escape(groups)}",
                markup=False,
            )
            print(request.id, flush=True)
            if not wait:
                return 0
            return await wait_for_decision(api, request)

    raise typer.Exit(_run(work))


async def wait_for_decision(api: ApiClient, request: ApprovalRequest) -> int:
    """Follow approvals.wait until REQUEST is decided; Ctrl-C stops waiting (exit 4)."""
    import asyncio

    from hoopctl.live_line import LiveLine, keep_ticking

    live = LiveLine(2)
    groups = escape(", ".join(request.approver_groups) or "the approvers")
    now = time.time()
    live.waiting(
        f"hoopctl: waiting for approval {escape(request.id)} from {groups}", request.left(now)
    )
    ticker = asyncio.ensure_future(keep_ticking(live))
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)

    async def follow() -> ApprovalRequest:
        latest = request
        async for event in api.stream("approvals.wait", {"id": request.id}):
            record = event.get("request")
            if isinstance(record, dict):
                latest = ApprovalRequest.from_record(record)
                if latest.state in FINAL_STATES:
                    break
        return latest

    follower = asyncio.ensure_future(follow())
    stop = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({follower, stop}, return_when=asyncio.FIRST_COMPLETED)
        live.finish()
        if not follower.done():
            follower.cancel()
            with contextlib.suppress(BaseException):
                await follower
            print(
                f"hoopctl: stopped waiting; request {escape(request.id)} is still pending "
                "(see hoopctl requests)",
                file=sys.stderr,
            )
            return EXIT_APPROVAL
        final = follower.result()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        ticker.cancel()
        stop.cancel()
        live.finish()
    return report_final(final)


def report_final(request: ApprovalRequest) -> int:
    """Say how REQUEST ended; return the exit status for it."""
    if request.state in ("approved", "executed"):
        until = ""
        if request.kind == "access" and request.grant_until:
            until = f"; you may connect until {local_time(request.grant_until)}"
        stderr.print(f"approved by {request.outcome()}{until}", markup=False)
        return 0
    if request.state == "denied":
        print(f"hoopctl: denied by {request.outcome()}", file=sys.stderr)
        return EXIT_DENIED
    if request.state == "pending":
        print(
            f"hoopctl: the broker stopped answering; request {escape(request.id)} is still "
            "pending (see hoopctl requests)",
            file=sys.stderr,
        )
        return EXIT_APPROVAL
    print(f"hoopctl: request {escape(request.id)} {request.state}", file=sys.stderr)
    return EXIT_APPROVAL
