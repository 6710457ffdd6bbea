"""`hoopctl sessions`, `sessions show`, `sessions search`, `sessions export`: recorded sessions,
listed, inspected and exported as evidence."""

from __future__ import annotations

import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from broker.durations import format_duration
from hoopctl.cli_common import (
    BrokerOption,
    OutputOption,
    _run,
    app,
    complete_session,
    remember_listed,
)
from hoopctl.errors import UsageError
from hoopctl.escape import escape
from hoopctl.output import (
    OutputFormat,
    cell,
    listing_table,
    render,
    render_record,
    stderr,
    stdout,
)
from hoopctl.replay.errors import format_offset
from hoopctl.session_records import (
    as_json,
    call_broker,
    check_session_id,
    download_bundle,
    iso_time,
    local_time,
    parse_when,
)

if TYPE_CHECKING:
    from rich.text import Text


class SessionState(StrEnum):
    open = "open"
    closed = "closed"
    interrupted = "interrupted"
    failed = "failed"
    terminated = "terminated"
    blocked = "blocked"  # a one-off exec refused before it ran


sessions_app = typer.Typer(
    help="List, inspect and search recorded sessions.",
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


app.add_typer(sessions_app, name="sessions")


_LIST_COLUMNS = [
    ("id", "Session"),
    ("user", "User"),
    ("target", "Target"),
    ("kind", "Kind"),
    ("state", "State"),
    ("started", "Started"),
    ("duration_text", "Duration"),
    ("commands", "Commands"),
    ("blocked", "Blocked"),
    ("approved", "Approved"),
]


def _for_json(row: dict[str, Any]) -> dict[str, Any]:
    record = dict(row)
    record["started_at"] = iso_time(row.get("started_at"))
    record["ended_at"] = iso_time(row.get("ended_at"))
    return record


@sessions_app.callback(invoke_without_command=True)
def sessions(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's.")] = None,
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="Only on this target.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Running at or after: a duration ago (24h) or a date/time."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="Started at or before: a duration ago or a date/time."),
    ] = None,
    state: Annotated[
        SessionState | None,
        typer.Option("--state", help="Only in this state.", case_sensitive=False),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="At most this many, newest first.")
    ] = 100,
    flagged: Annotated[
        bool,
        typer.Option(
            "--flagged", help="Only sessions with signals (auditors; see hoopctl signals)."
        ),
    ] = False,
    output: OutputOption = OutputFormat.table,
    broker: BrokerOption = None,
) -> None:
    """List recorded sessions: user, target, start, duration, commands, blocked and approved.

    Auditors see every session; anyone else only their own. --flagged: only those with
    signals, and which. Then: hoopctl sessions show ID, hoopctl replay ID.
    """
    if ctx.invoked_subcommand is not None:
        return

    async def work() -> None:
        params: dict[str, Any] = {"limit": limit}
        if user:
            params["user"] = user
        if target:
            params["target"] = target
        if state:
            params["state"] = state.value
        if since:
            params["since"] = parse_when(since)
        if until:
            params["until"] = parse_when(until)
        if flagged:
            params["flagged"] = True
        rows = await call_broker(broker, "sessions.list", params)
        remember_listed(broker, "sessions", [row.get("id") for row in rows])
        if output is OutputFormat.json:
            render([_for_json(row) for row in rows], _LIST_COLUMNS, output)  # every key
            return
        shown = [
            {
                **{
                    key: escape(str(value)) if isinstance(value, str) else value
                    for key, value in row.items()
                },
                "started": local_time(row["started_at"]),
                "duration_text": format_duration(row["duration"]),
                # Agents stand out from people: the same mark approvers see.
                **(
                    {"user": escape(f"{row['user']} [agent]")}
                    if row.get("user_kind") == "agent"
                    else {}
                ),
            }
            for row in rows
        ]
        columns = _LIST_COLUMNS + ([("signals_text", "Signals")] if flagged else [])
        for row in shown:
            row["signals_text"] = ", ".join(row.get("signals") or [])
        render(shown, columns, output, empty="no sessions to show")

    _run(work)


@sessions_app.command("show")
def sessions_show(
    session_id: Annotated[
        str,
        typer.Argument(
            metavar="ID", help="Session id (YYYYMMDD-12 hex).", autocompletion=complete_session
        ),
    ],
    output: OutputOption = OutputFormat.table,
    broker: BrokerOption = None,
) -> None:
    """Show a session's summary and its timeline of commands with decisions and approvers."""

    async def work() -> None:
        check_session_id(session_id)
        summary = await call_broker(broker, "sessions.show", {"id": session_id})
        if output is OutputFormat.json:
            record = _for_json(summary)
            for entry in record["timeline"]:
                entry["time"] = iso_time(entry.get("time"))
            sys.stdout.write(as_json(record))
            return
        record = {
            key: escape(value) if isinstance(value, str) else value
            for key, value in summary.items()
        }
        record["started"] = local_time(summary["started_at"])
        record["ended"] = local_time(summary["ended_at"]) or "(still open)"
        record["duration_text"] = format_duration(summary["duration"])
        record["counts"] = (
            f"{summary['commands']} commands, {summary['blocked']} blocked, "
            f"{summary['approved']} approved"
        )
        fields = [
            ("id", "Session"),
            ("user", "User"),
            ("target", "Target"),
            ("kind", "Kind"),
            ("state", "State"),
            ("started", "Started"),
            ("ended", "Ended"),
            ("duration_text", "Duration"),
            ("exit_status", "Exit status"),
            ("reason", "Reason"),
            ("counts", "Commands"),
        ]
        render_record(record, [f for f in fields if record.get(f[0]) not in (None, "")], output)
        timeline = summary["timeline"]
        if not timeline:
            stderr.print("no commands in this session")
            return
        from rich.text import Text

        table = listing_table(
            ("Offset", "Command", "Outcome", "Decision", "Rule", "Decided by"), fold=True
        )
        for entry in timeline:
            outcome = entry["outcome"]
            style = {"blocked": "bold red", "failed": "yellow"}.get(outcome, "")
            table.add_row(
                format_offset(entry["offset"]),
                cell(entry.get("text")),
                Text(outcome, style=style),
                Text(entry.get("decision") or ""),
                cell(entry.get("rule")),
                cell(entry.get("approver")),
            )
        stdout.print()
        stdout.print(table)
        stderr.print(f"replay from a command: hoopctl replay {session_id} --at OFFSET")

    _run(work)


@sessions_app.command("export")
def sessions_export(
    session_id: Annotated[
        str,
        typer.Argument(
            metavar="ID", help="Session id (YYYYMMDD-12 hex).", autocompletion=complete_session
        ),
    ],
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            metavar="FILE",
            help="Write the session's evidence bundle (a tar file) to FILE.",
            dir_okay=False,
        ),
    ] = None,
    broker: BrokerOption = None,
) -> None:
    """Export an ended session's evidence: its recording and signature, its audit events,
    its approvals and the broker's public key, signed for offline checking (hoopctl
    verify-bundle FILE). The broker checks the session first and refuses one that does not
    verify. Exit codes: 0 written, 1 refused or failed (nothing is left behind), 2 usage."""

    async def work() -> None:
        check_session_id(session_id)
        if bundle is None:
            raise UsageError("give --bundle FILE: the file to write the evidence bundle to")
        if bundle.exists():
            raise UsageError(f"{escape(str(bundle))} exists: remove it or choose another name")
        size = await download_bundle(broker, session_id, bundle)
        print(
            f"wrote {escape(str(bundle))} ({size} bytes): hoopctl verify-bundle {escape(str(bundle))}"
        )

    _run(work)


@sessions_app.command("search")
def sessions_search(
    text: Annotated[str, typer.Argument(help="Words to find in commands and output.")],
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="At most this many matches.")
    ] = 50,
    output: OutputOption = OutputFormat.table,
    broker: BrokerOption = None,
) -> None:
    """Find sessions by command text and by output text (words and word prefixes).

    Each match shows its session and time offset: hoopctl replay ID --at OFFSET.
    """

    async def work() -> None:
        if not re.search(r"[^\W_]", text):
            raise UsageError("search for at least one letter or digit")
        matches = await call_broker(broker, "sessions.search", {"text": text, "limit": limit})
        if output is OutputFormat.json:
            sys.stdout.write(as_json(matches))
            return
        if not matches:
            stderr.print(f"no session matches {escape(text)!r}", markup=False)
            return
        table = listing_table(("Session", "Offset", "User", "Target", "Kind", "Line"), fold=True)
        for match in matches:
            table.add_row(
                match["session"],
                format_offset(match["offset"]),
                cell(match["user"]),
                cell(match["target"]),
                match["kind"],
                highlighted(match["line"], match.get("spans") or []),
            )
        stdout.print(table)
        stderr.print("replay from a match: hoopctl replay SESSION --at OFFSET")

    _run(work)


def highlighted(line: str, spans: list[list[int]]) -> Text:
    """LINE shown escaped, with the matching parts in bold reverse."""
    from rich.text import Text

    shown = Text()
    position = 0
    for start, end in sorted((int(s), int(e)) for s, e in spans):
        if start < position or end > len(line):
            continue
        shown.append_text(cell(line[position:start]))
        found = cell(line[start:end])
        found.stylize("bold reverse")
        shown.append_text(found)
        position = end
    shown.append_text(cell(line[position:]))
    return shown
