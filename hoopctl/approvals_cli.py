"""`hoopctl approve`, `approvals`, `request` and `requests`: the approval workflow.

Also the client half of a waiting `hoopctl exec` (run_exec): the broker's "waiting for
approval" lines shown as one live line, and Ctrl-C while waiting cancels the request.

Every string a requester controls (command, reason, screen lines, comments) goes through
hoopctl.escape before it reaches a terminal; JSON output keeps the raw strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import asyncssh
import typer
from rich.table import Table
from rich.text import Text

from broker.durations import format_duration, parse_duration
from hoopctl.cli_common import BrokerOption, OutputOption, _address, _run, app
from hoopctl.errors import (
    EXIT_APPROVAL,
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_USAGE,
    ApiCallError,
    BrokerUnreachable,
    HoopError,
    UsageError,
)
from hoopctl.escape import escape, escape_parts
from hoopctl.output import OutputFormat, render, stderr, stdout
from hoopctl.session import connect_api
from hoopctl.transport import ApiClient

# ---------------------------------------------------------------------------
# The request record (docs/approvals-contract.md), as a typed model
# ---------------------------------------------------------------------------

STATES = ("pending", "approved", "denied", "expired", "cancelled", "executed")
FINAL_STATES = frozenset(STATES) - {"pending"}


def timestamp(value: Any) -> float | None:
    """A time from the broker (epoch seconds, or ISO 8601 text) as epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def clock(seconds: float) -> str:
    """Time left as a countdown: 4:59, 1:02:03."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def local_time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return f"{datetime.fromtimestamp(epoch, tz=UTC).astimezone():%Y-%m-%d %H:%M:%S %Z}"


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list | tuple):
        return tuple(str(item) for item in value)
    if value is None:
        return ()
    return (str(value),)


@dataclass(frozen=True)
class Decision:
    approver: str
    decision: str  # "approve" | "deny"
    comment: str
    at: float | None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Decision:
        return cls(
            approver=str(record.get("approver") or ""),
            decision=str(record.get("decision") or ""),
            comment=str(record.get("comment") or ""),
            at=timestamp(record.get("at")),
        )


@dataclass(frozen=True)
class ApprovalRequest:
    """One command or access request, as every approvals.* method returns it."""

    id: str
    kind: str
    state: str
    requester: str
    requester_groups: tuple[str, ...]
    target: str
    session: str | None
    command: str | None
    command_sha256: str | None
    rule: str | None
    reason: str | None
    # Why the broker asks: its one-line reason ("cannot tell what this SQL does: cannot parse:
    # …"); what approvers see in place of a rule when no rule decided.
    cause: str | None
    unknown: bool
    approver_groups: tuple[str, ...]
    approvals_needed: int
    decisions: tuple[Decision, ...]
    screen: tuple[str, ...]
    created_at: float | None
    expires_at: float | None
    decided_at: float | None
    executed_at: float | None
    duration: int | None
    grant_until: float | None
    raw: dict[str, Any]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ApprovalRequest:
        def text(key: str) -> str | None:
            value = record.get(key)
            return None if value is None else str(value)

        duration = record.get("duration")
        return cls(
            id=str(record.get("id") or ""),
            kind=str(record.get("kind") or "command"),
            state=str(record.get("state") or "pending"),
            requester=str(record.get("requester") or ""),
            requester_groups=_strings(record.get("requester_groups")),
            target=str(record.get("target") or ""),
            session=text("session"),
            command=text("command"),
            command_sha256=text("command_sha256"),
            rule=text("rule"),
            reason=text("reason"),
            cause=text("cause"),
            unknown=record.get("unknown") is True,
            approver_groups=_strings(record.get("approver_groups")),
            approvals_needed=int(record.get("approvals_needed") or 1),
            decisions=tuple(
                Decision.from_record(item)
                for item in record.get("decisions") or ()
                if isinstance(item, dict)
            ),
            screen=_strings(record.get("screen")),
            created_at=timestamp(record.get("created_at")),
            expires_at=timestamp(record.get("expires_at")),
            decided_at=timestamp(record.get("decided_at")),
            executed_at=timestamp(record.get("executed_at")),
            duration=int(duration) if isinstance(duration, int | float) else None,
            grant_until=timestamp(record.get("grant_until")),
            raw=record,
        )

    @property
    def approvals(self) -> int:
        return sum(1 for item in self.decisions if item.decision == "approve")

    @property
    def pending(self) -> bool:
        return self.state == "pending"

    def decision_by(self, user: str) -> Decision | None:
        return next((item for item in self.decisions if item.approver == user), None)

    def why(self) -> tuple[str, str]:
        """(label, text) of why it was asked: the rule, else the broker's cause, else "-"."""
        if self.rule:
            return "rule", self.rule
        if self.cause:
            return "cause", self.cause
        return "rule", "-"

    def what(self) -> str:
        """What is asked, unescaped: the command, or the access asked for."""
        if self.kind == "access":
            asked = format_duration(self.duration) if self.duration else "a while"
            return f"access to {self.target} for {asked}"
        return self.command or ""

    def left(self, now: float) -> float | None:
        return None if self.expires_at is None else self.expires_at - now

    def age(self, now: float) -> float | None:
        return None if self.created_at is None else now - self.created_at

    def outcome(self, show: Callable[[str], str] = escape) -> str:
        """Who decided and what they said: "bob: ok, go ahead" (escaped unless SHOW says not)."""
        final = [item for item in self.decisions if item.decision == "deny"] or list(self.decisions)
        return "; ".join(
            show(item.approver) + (f": {show(item.comment)}" if item.comment else "")
            for item in final
        )


# ---------------------------------------------------------------------------
# Errors and their exit codes (docs/approving.md)
# ---------------------------------------------------------------------------


class UnknownRequest(HoopError):
    """No such request (or target), or not one the caller may see; a malformed request."""

    exit_code = EXIT_USAGE


class DecisionRefused(HoopError):
    """The caller may not decide this request: their own, or not in the approver groups."""

    exit_code = EXIT_DENIED


class RequestClosed(HoopError):
    """The request can no longer be decided: already decided by the caller, no longer pending,
    expired."""

    exit_code = EXIT_ERROR


def decision_error(request_id: str, verb: str, exc: ApiCallError) -> HoopError:
    message = f"cannot {verb} {escape(request_id)}: {escape(str(exc))}"
    if exc.code == "not_found":
        return UnknownRequest(message)
    if exc.code == "forbidden":
        return DecisionRefused(message)
    if exc.code in ("conflict", "expired"):
        return RequestClosed(message)
    return HoopError(message)


# ---------------------------------------------------------------------------
# Waiting in a terminal: one live line on stderr
# ---------------------------------------------------------------------------

WAITING = re.compile(
    r"^hoop: waiting for approval (\S+) from (.*?)(?: \((?:(\d+):)?(\d+):(\d\d) left\))?$"
)
# Lines after which the session no longer waits (the last: --no-wait, or --wait ran out).
ENDED = re.compile(
    r"^hoop: (approved by|denied by|request \S+ expired|request \S+ cancelled"
    r"|approval required(?: \(.*\))?: request \S+ waits for )"
)


class LiveLine:
    """A status line redrawn in place on a terminal's stderr (plain lines elsewhere)."""

    def __init__(self, fd: int = 2) -> None:
        self._fd = fd
        self.live = os.isatty(fd)
        self._shown = False
        self._text = ""
        self._deadline: float | None = None

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        while data:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            data = data[written:]

    def waiting(self, text: str, left: float | None) -> None:
        """Show TEXT (no timer) with a countdown from LEFT seconds, redrawn by tick()."""
        self._text = text
        self._deadline = None if left is None else time.monotonic() + left
        if self.live:
            self.tick()
        else:
            suffix = f" ({clock(left)} left)" if left is not None else ""
            self._write(f"{text}{suffix}\n")

    def tick(self) -> None:
        if not self.live or not self._text:
            return
        suffix = ""
        if self._deadline is not None:
            suffix = f" ({clock(math.ceil(self._deadline - time.monotonic()))} left)"
        self._write(f"\r\x1b[K{self._text}{suffix}")
        self._shown = True

    def finish(self) -> None:
        """Leave the live line as it stands and stop redrawing it."""
        if self._shown:
            self._write("\n")
        self._shown = False
        self._text = ""

    def line(self, text: str) -> None:
        """Print TEXT as a line of its own, below the live line."""
        self.finish()
        self._write(text + "\n")

    def raw(self, data: bytes) -> None:
        self.finish()
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            view = view[written:]


async def _ticker(live: LiveLine) -> None:
    while True:
        await asyncio.sleep(1)
        live.tick()


# ---------------------------------------------------------------------------
# `hoopctl exec`: the session, with the approval phase shown and Ctrl-C cancelling
# ---------------------------------------------------------------------------


def _parse_left(match: re.Match[str]) -> float | None:
    if match.group(5) is None:
        return None
    hours = int(match.group(3) or 0)
    return hours * 3600 + int(match.group(4)) * 60 + int(match.group(5))


class _ExecRelay:
    """Relays an exec session's output; reads the broker's `hoop:` lines until the command runs."""

    def __init__(self, live: LiveLine) -> None:
        self.live = live
        self.request_id: str | None = None  # the request we are waiting on, while we wait
        self._phase = True  # before the command's own output: broker lines, one at a time
        self._pending = b""

    def end_phase(self) -> None:
        if self._phase:
            self._phase = False
            self.request_id = None
            if self._pending:
                self.live.raw(self._pending)
                self._pending = b""
            self.live.finish()

    def broker_line(self, text: str) -> None:
        waiting = WAITING.match(text)
        if waiting:
            self.request_id = waiting.group(1)
            self.live.waiting(
                f"hoop: waiting for approval {escape(waiting.group(1))} "
                f"from {escape(waiting.group(2))}",
                _parse_left(waiting),
            )
            return
        if ENDED.match(text):
            self.request_id = None  # decided, expired, or no longer waited for
        self.live.line(escape(text))

    def stderr(self, data: bytes) -> None:
        if not self._phase:
            self.live.raw(data)
            return
        self._pending += data
        while self._phase and b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            text = line.decode("utf-8", "replace").rstrip("\r")
            if text.startswith("hoop: "):
                self.broker_line(text)
            else:
                # The command's own stderr: from here on, relay bytes untouched.
                rest, self._pending = line + b"\n" + self._pending, b""
                self.end_phase()
                self.live.raw(rest)

    def close(self) -> None:
        if self._pending:
            text = self._pending.decode("utf-8", "replace")
            self._pending = b""
            if self._phase and text.startswith("hoop: "):
                self.broker_line(text)
            else:
                self.live.raw(text.encode("utf-8", "replace"))
        self.live.finish()


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await asyncio.sleep(0.005)
            continue
        view = view[written:]


async def _cancel_request(conn: asyncssh.SSHClientConnection, request_id: str) -> bool:
    """Ask the broker to cancel REQUEST_ID; True when it is cancelled (or already was)."""
    api = ApiClient(conn)
    try:
        record = await asyncio.wait_for(api.call("approvals.cancel", {"id": request_id}), 5)
    except ApiCallError as exc:
        # Closing the channel may have cancelled it already.
        return exc.code == "conflict" and "cancelled" in str(exc)
    except (HoopError, TimeoutError):
        return False
    return isinstance(record, dict) and record.get("state") == "cancelled"


async def run_exec(conn: asyncssh.SSHClientConnection, command: str, stdin_data: bytes) -> int:
    """Run an `exec` session command; return the exit status hoopctl should exit with.

    While the broker holds the command for approval its `hoop: waiting for approval …` lines
    become one live line on a terminal. Ctrl-C while waiting closes the channel (which cancels
    the request at the broker), confirms the cancellation and returns 4; Ctrl-C at any other
    time closes the channel and returns 130.
    """
    try:
        process = await conn.create_process(command, encoding=None)
    except asyncssh.Error as exc:
        raise BrokerUnreachable(f"the broker refused the request: {exc.reason}") from None
    # The broker may answer and close before reading any input (--no-wait, a refusal).
    with contextlib.suppress(OSError, asyncssh.Error):
        process.stdin.write(stdin_data)
        process.stdin.write_eof()
    relay = _ExecRelay(LiveLine(2))
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()

    async def copy_stdout() -> None:
        while data := await process.stdout.read(65536):
            relay.end_phase()
            await _write_all(1, data)

    async def copy_stderr() -> None:
        while data := await process.stderr.read(65536):
            relay.stderr(data)
        relay.close()

    relays = asyncio.gather(copy_stdout(), copy_stderr())
    ticker = asyncio.ensure_future(_ticker(relay.live))
    stop = asyncio.ensure_future(interrupted.wait())
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        await asyncio.wait({relays, stop}, return_when=asyncio.FIRST_COMPLETED)
        if interrupted.is_set():
            waiting_on = relay.request_id
            relay.live.finish()
            process.close()
            relays.cancel()
            with contextlib.suppress(BaseException):
                await relays
            if waiting_on is None:
                print("hoopctl: interrupted", file=sys.stderr)
                return 130
            if await _cancel_request(conn, waiting_on):
                print(f"hoopctl: cancelled approval request {escape(waiting_on)}", file=sys.stderr)
            else:
                print(
                    f"hoopctl: stopped waiting for approval request {escape(waiting_on)}; "
                    "the broker cancels it when it notices the closed session",
                    file=sys.stderr,
                )
            return EXIT_APPROVAL
        await relays
        completed = await process.wait(check=False)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        for task in (ticker, stop):
            task.cancel()
        relay.live.finish()
    if completed.exit_status is not None and completed.exit_status >= 0:
        return completed.exit_status
    return 255


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


def shown(text: str | None) -> Text:
    """Requester-controlled TEXT for a rich table: escaped, escapes in reverse, no markup."""
    cell = Text()
    for piece, is_escape in escape_parts(text or ""):
        cell.append(piece, style="reverse" if is_escape else None)
    return cell


def _table_row(request: ApprovalRequest, now: float) -> dict[str, Text | str]:
    age = request.age(now)
    approvers = ", ".join(request.approver_groups) or "-"
    return {
        "id": shown(request.id),
        "state": request.state,
        "kind": request.kind,
        "requester": shown(request.requester),
        "target": shown(request.target),
        "what": shown(request.what()),
        "rule": shown(request.rule),
        "why": shown(request.rule or request.cause),
        "reason": shown(request.reason),
        "approvers": shown(f"{approvers} ({request.approvals}/{request.approvals_needed})"),
        "age": "" if age is None else format_duration(age),
        "expires": _expiry(request, now),
        "decided": shown(request.outcome(str)),
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


def describe_decision(
    verb: str, request: ApprovalRequest, show: Callable[[str], str] = escape
) -> str:
    """One line after a decision: what was decided and where the request stands (requester
    text escaped unless SHOW says not: the queue escapes its whole status line itself)."""
    done = "approved" if verb == "approve" else "denied"
    subject = f"{show(request.requester)} on {show(request.target)}: {show(request.what())}"
    line = f"{done} {show(request.id)} ({subject})"
    if request.state == done:
        return line
    if request.state == "pending" and verb == "approve":
        more = max(request.approvals_needed - request.approvals, 1)
        return line + f"; waiting for {more} more approval{'s' if more != 1 else ''}"
    return line + f"; request is {request.state}"


def _usage(message: str) -> None:
    raise UsageError(message)


def _queue(broker: str | None) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(
            "the live queue needs a terminal; use hoopctl approvals to list and "
            "hoopctl approve ID [--deny] to decide"
        )
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

    async def work() -> None:
        params: dict[str, Any] = {}
        if state is not None:
            params["state"] = state.value
        if scope is not None:
            params["scope"] = scope.value
        api, _ = await connect_api(_address(broker))
        async with api:
            records = _records(await api.call("approvals.list", params))
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
    target: Annotated[str, typer.Argument(help="Target name (see hoopctl targets).")],
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
    live = LiveLine(2)
    groups = escape(", ".join(request.approver_groups) or "the approvers")
    now = time.time()
    live.waiting(
        f"hoopctl: waiting for approval {escape(request.id)} from {groups}", request.left(now)
    )
    ticker = asyncio.ensure_future(_ticker(live))
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
