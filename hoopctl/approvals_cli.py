"""`hoopctl approve`, `approvals`, `request` and `requests`: the approval workflow.

The client half of a waiting `hoopctl exec` is hoopctl.exec_relay.

Every string a requester controls (command, reason, screen lines, comments) goes through
hoopctl.escape before it reaches a terminal; JSON output keeps the raw strings.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from broker.durations import format_duration, parse_duration
from hoopctl.approval_requests import (
    FINAL_STATES,
    ApprovalRequest,
    DecisionRefused,
    UnknownRequest,
    clock,
    decision_error,
    describe_decision,
    local_time,
)
from hoopctl.cli_common import (
    BrokerOption,
    OutputOption,
    _address,
    _run,
    app,
    complete_request,
    complete_target,
    remember_listed,
)
from hoopctl.errors import (
    EXIT_APPROVAL,
    EXIT_DENIED,
    ApiCallError,
    HoopError,
    UsageError,
)
from hoopctl.escape import escape
from hoopctl.output import OutputFormat, cell, render, stderr, stdout

if TYPE_CHECKING:
    from hoopctl.transport import ApiClient


def exec_words(wait: str | None, no_wait: bool, request: str | None) -> list[str]:
    """The approval flags of an `exec` session command (docs/approvals-contract.md)."""
    if wait is not None and no_wait:
        raise UsageError("give either --wait DURATION or --no-wait, not both")
    words: list[str] = []
    if wait is not None:
        words += ["--wait", str(duration_seconds(wait, "--wait"))]
    if no_wait:
        words.append("--no-wait")
    if request is not None:
        if not request.strip():
            raise UsageError("--request needs a request id")
        words += ["--request", request]
    return words


def duration_seconds(text: str, flag: str) -> int:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    return seconds


# ---------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------


class StateFilter(StrEnum):
    pending = "pending"
    approved = "approved"
    denied = "denied"
    expired = "expired"
    cancelled = "cancelled"
    executed = "executed"


class Scope(StrEnum):
    review = "review"
    mine = "mine"
    all = "all"


def _records(result: Any) -> list[dict[str, Any]]:
    if not isinstance(result, list):
        raise HoopError("the broker sent an unexpected reply (not a list of requests)")
    return [item for item in result if isinstance(item, dict)]


def _expiry(request: ApprovalRequest, now: float) -> str:
    if request.pending:
        left = request.left(now)
        return "" if left is None else f"{clock(left)} left"
    if request.kind == "access" and request.state == "approved" and request.grant_until:
        left = request.grant_until - now
        return f"granted, {format_duration(left)} left" if left > 0 else "grant ended"
    return ""


def _table_row(request: ApprovalRequest, now: float) -> dict[str, Text | str]:
    age = request.age(now)
    approvers = ", ".join(request.approver_groups) or "-"
    return {
        "id": cell(request.id),
        "state": request.state,
        "kind": request.kind,
        "requester": cell(request.requester),
        "target": cell(request.target),
        "what": cell(request.what()),
        "rule": cell(request.rule),
        "why": cell(request.rule or request.cause),
        "reason": cell(request.reason),
        "approvers": cell(f"{approvers} ({request.approvals}/{request.approvals_needed})"),
        "age": "" if age is None else format_duration(age),
        "expires": _expiry(request, now),
        "decided": cell(request.outcome(str)),
    }


def _render_requests(
    requests: Iterable[ApprovalRequest],
    columns: list[tuple[str, str]],
    output: OutputFormat,
    *,
    empty: str,
) -> None:
    """JSON: the raw records. Table: like hoopctl.output.render, but every cell folds rather
    than being cut with an ellipsis (no part of a command may go unseen) and requester text
    is escaped, never read as rich markup."""
    listed = list(requests)
    if output is OutputFormat.json:
        render([request.raw for request in listed], columns, output)
        return
    if not listed:
        stderr.print(empty)
        return
    now = time.time()
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for _, heading in columns:
        table.add_column(heading, overflow="fold")
    for request in listed:
        row = _table_row(request, now)
        table.add_row(*(row[key] for key, _ in columns))
    stdout.print(table)


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


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
    output: OutputOption = OutputFormat.table,
    broker: BrokerOption = None,
) -> None:
    """List approval requests: those you may decide, your own and those you decided on."""

    from hoopctl.session import connect_api

    async def work() -> None:
        params: dict[str, Any] = {}
        if state is not None:
            params["state"] = state.value
        if scope is not None:
            params["scope"] = scope.value
        api, _ = await connect_api(_address(broker))
        async with api:
            records = _records(await api.call("approvals.list", params))
        remember_listed(broker, "requests", [record.get("id") for record in records])
        _render_requests(
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


@app.command()
def requests(output: OutputOption = OutputFormat.table, broker: BrokerOption = None) -> None:
    """List your own requests (commands held for approval, access requests) and your grants."""
    from hoopctl.session import connect_api

    async def work() -> None:
        api, _ = await connect_api(_address(broker))
        async with api:
            mine = _records(await api.call("approvals.list", {"scope": "mine"}))
            access = _records(await api.call("access.list", {}))
        seen: dict[str, dict[str, Any]] = {}
        for record in [*mine, *access]:
            seen.setdefault(str(record.get("id")), record)
        listed = sorted(
            (ApprovalRequest.from_record(record) for record in seen.values()),
            key=lambda request: request.created_at or 0,
            reverse=True,
        )
        remember_listed(broker, "requests", [request.id for request in listed])
        _render_requests(
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
