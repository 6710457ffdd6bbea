"""`hoopctl signals`: what the broker noticed (insider-threat signals), for auditors."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from hoopctl.cli_common import BrokerOption, OutputOption, _run, app, complete_target
from hoopctl.escape import escape
from hoopctl.output import OutputFormat, render
from hoopctl.session_records import call_broker, iso_time, local_time, parse_when

_COLUMNS = [
    ("time_text", "Time"),
    ("signal", "Signal"),
    ("user", "User"),
    ("target", "Target"),
    ("session", "Session"),
    ("text", "What"),
]


@app.command("signals")
def signals(
    since: Annotated[
        str | None,
        typer.Option("--since", help="At or after: a duration ago (24h) or a date/time."),
    ] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's.")] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="Only on this target.", autocompletion=complete_target),
    ] = None,
    session: Annotated[str | None, typer.Option("--session", help="Only in this session.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="At most this many, newest first.")
    ] = 1000,
    output: OutputOption = OutputFormat.table,
    broker: BrokerOption = None,
) -> None:
    """List the signals the broker raised: first-time programs, off-hours sessions, volume
    spikes, repeated denials, self-approvals, overridden approvals, long sessions. Auditors
    only. Then: hoopctl sessions --flagged, hoopctl replay SESSION."""

    async def work() -> None:
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("user", user), ("target", target), ("session", session)):
            if value:
                params[key] = value
        if since:
            params["since"] = parse_when(since)
        rows = await call_broker(broker, "signals.list", params)
        if output is OutputFormat.json:
            render([{**row, "time": iso_time(row.get("time"))} for row in rows], _COLUMNS, output)
            return
        shown = [
            {
                **{k: escape(v) if isinstance(v, str) else v for k, v in row.items()},
                "time_text": local_time(row.get("time")),
            }
            for row in rows
        ]
        render(shown, _COLUMNS, output, empty="no signals")

    _run(work)
