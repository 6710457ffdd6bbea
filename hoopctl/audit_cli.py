"""`hoopctl sessions` and `replay`: finding and replaying recorded sessions.

    hoopctl sessions [--user U] [--target T] [--since 24h] [--until TIME] [--state S]
    hoopctl sessions show ID
    hoopctl sessions search TEXT
    hoopctl replay ID|FILE.cast [--speed X] [--idle-limit S] [--at OFFSET] [--grep REGEX]
                   [--commands] [--format cast|json|text] [--follow] [--verify]

A recording is downloaded from the broker into a private cache file (XDG cache dir, 0700
directories, 0600 files) and played from there by hoopctl.replay; a FILE.cast that exists
plays with no broker at all. Everything the broker returns that a session's user typed or
a target printed is shown through hoopctl.escape, so it cannot drive the terminal.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from broker.durations import format_duration, parse_duration
from hoopctl.address import BrokerAddress
from hoopctl.cli_common import (
    BrokerOption,
    OutputOption,
    _address,
    _run,
    app,
    complete_session,
    remember_listed,
)
from hoopctl.errors import ApiCallError, HoopError, UsageError
from hoopctl.escape import escape
from hoopctl.output import OutputFormat, cell, render, render_record, stderr, stdout
from hoopctl.replay.errors import RecordingDamaged, format_offset

SESSION_ID = re.compile(r"\d{8}-[0-9a-f]{12}")
MIN_SPEED, MAX_SPEED = 0.1, 64.0


class SessionState(StrEnum):
    open = "open"
    closed = "closed"
    interrupted = "interrupted"
    failed = "failed"
    terminated = "terminated"
    blocked = "blocked"  # a one-off exec refused before it ran


class ExportFormat(StrEnum):
    cast = "cast"
    json = "json"
    text = "text"


# -- times and offsets ------------------------------------------------------------------


def parse_when(text: str, *, now: float | None = None) -> float:
    """A point in time from a flag: a duration ago ("24h", "90m", "2d") or an ISO 8601 date
    or date and time ("2026-11-23", "2026-11-23T14:05", "2026-11-23 14:05:00Z"; local time
    unless a zone is given). Returns unix time."""
    now = time.time() if now is None else now
    with contextlib.suppress(ValueError):
        return now - parse_duration(text)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"not a time: {text!r} (use a duration ago such as 24h, or a date such as "
            "2026-11-23 or 2026-11-23T14:05)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # naive: local time
    return when.timestamp()


def _local(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return f"{datetime.fromtimestamp(epoch, tz=UTC).astimezone():%Y-%m-%d %H:%M:%S}"


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


# -- hoopctl sessions ------------------------------------------------------------------

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


async def _call(broker: str | None, method: str, params: dict[str, Any]) -> Any:
    from hoopctl.session import connect_api

    api, _ = await connect_api(_address(broker))
    async with api:
        return await api.call(method, params)


def _for_json(row: dict[str, Any]) -> dict[str, Any]:
    record = dict(row)
    record["started_at"] = _iso(row.get("started_at"))
    record["ended_at"] = _iso(row.get("ended_at"))
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
    output: OutputOption = OutputFormat.table,
    broker: BrokerOption = None,
) -> None:
    """List recorded sessions: user, target, start, duration, commands, blocked and approved.

    Auditors see every session; anyone else only their own. Then: hoopctl sessions show ID,
    hoopctl replay ID.
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
        rows = await _call(broker, "sessions.list", params)
        remember_listed(broker, "sessions", [row.get("id") for row in rows])
        if output is OutputFormat.json:
            render([_for_json(row) for row in rows], _LIST_COLUMNS, output)
            return
        shown = [
            {
                **{
                    key: escape(str(value)) if isinstance(value, str) else value
                    for key, value in row.items()
                },
                "started": _local(row["started_at"]),
                "duration_text": format_duration(row["duration"]),
            }
            for row in rows
        ]
        render(shown, _LIST_COLUMNS, output, empty="no sessions to show")

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
        _check_session_id(session_id)
        summary = await _call(broker, "sessions.show", {"id": session_id})
        if output is OutputFormat.json:
            record = _for_json(summary)
            for entry in record["timeline"]:
                entry["time"] = _iso(entry.get("time"))
            sys.stdout.write(_json(record))
            return
        record = {
            key: escape(value) if isinstance(value, str) else value
            for key, value in summary.items()
        }
        record["started"] = _local(summary["started_at"])
        record["ended"] = _local(summary["ended_at"]) or "(still open)"
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
        table = Table(show_edge=False, header_style="bold", pad_edge=False)
        for heading in ("Offset", "Command", "Outcome", "Decision", "Rule", "Decided by"):
            table.add_column(heading, overflow="fold")
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
        matches = await _call(broker, "sessions.search", {"text": text, "limit": limit})
        if output is OutputFormat.json:
            sys.stdout.write(_json(matches))
            return
        if not matches:
            stderr.print(f"no session matches {escape(text)!r}", markup=False)
            return
        table = Table(show_edge=False, header_style="bold", pad_edge=False)
        for heading in ("Session", "Offset", "User", "Target", "Kind", "Line"):
            table.add_column(heading, overflow="fold")
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


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, default=str) + "\n"


# -- hoopctl replay --------------------------------------------------------------------


def _check_session_id(value: str) -> None:
    if not SESSION_ID.fullmatch(value):
        shown = escape(value[:80]) + ("…" if len(value) > 80 else "")
        raise UsageError(
            f"not a session id or a .cast file: {shown!r} (session ids look like "
            "20261123-3f2a9c1d0b7e)"
        )


def cache_dir(address: BrokerAddress) -> Path:
    """$XDG_CACHE_HOME/hoopctl/recordings/HOST_PORT, each hoopctl directory mode 0700."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base
    for part in ("hoopctl", "recordings", re.sub(r"[^A-Za-z0-9._-]", "_", str(address))):
        path = path / part
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)
    return path


class Download:
    """A recording streamed from the broker into a 0600 file, written as chunks arrive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state: str | None = None
        self.done = threading.Event()
        self.started = threading.Event()
        self.error: BaseException | None = None

    async def run(self, broker: str | None, session_id: str, *, follow: bool) -> None:
        from hoopctl.session import connect_api

        try:
            api, _ = await connect_api(_address(broker))
            async with api:
                await self._fetch(api, session_id, follow)
        except BaseException as exc:
            self.error = exc
            if not self.started.is_set():  # nothing worth keeping: no half-empty cache file
                with contextlib.suppress(OSError):
                    self.path.unlink()
            raise
        finally:
            self.started.set()
            self.done.set()

    async def _fetch(self, api: Any, session_id: str, follow: bool) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            ended = False
            async for event in api.stream(
                "sessions.recording", {"id": session_id, "follow": follow}
            ):
                kind = event.get("type")
                if kind == "start":
                    self.state = event.get("state")
                elif kind == "chunk":
                    data = base64.b64decode(event["data"])
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    self.started.set()
                elif kind == "end":
                    self.state = event.get("state")
                    ended = True
            if not ended:
                raise HoopError("the broker ended the recording download early; try again")
        finally:
            os.close(fd)


def _not_found(exc: ApiCallError, session_id: str) -> HoopError:
    if exc.code == "not_found":
        return HoopError(f"no session {session_id} on this broker (or it is not yours to replay)")
    return exc


def _player() -> Any:
    try:
        from hoopctl import replay as player
    except ImportError:
        raise HoopError("the replay player is not available in this hoopctl build") from None
    return player


@app.command()
def replay(
    session: Annotated[
        str,
        typer.Argument(
            metavar="ID|FILE.cast",
            help="A session id, or a local .cast file.",
            autocompletion=complete_session,
        ),
    ],
    speed: Annotated[
        float,
        typer.Option("--speed", "-s", min=MIN_SPEED, max=MAX_SPEED, help="Playback speed factor."),
    ] = 1.0,
    idle_limit: Annotated[
        float | None,
        typer.Option("--idle-limit", "-i", min=0.0, help="Cut pauses longer than this (seconds)."),
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="Start at this offset (75, 1:05.2, 1m15s).")
    ] = None,
    grep: Annotated[
        str | None, typer.Option("--grep", "-g", help="Start at the first output matching REGEX.")
    ] = None,
    commands: Annotated[
        bool, typer.Option("--commands", help="Print the command timeline only.")
    ] = False,
    fmt: Annotated[
        ExportFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="Write the recording to stdout: cast, json, or text (the screen as shown).",
            case_sensitive=False,
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option("--follow", help="Attach to a live session and keep playing as it grows."),
    ] = False,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Check the session's audit chain and recording signature."),
    ] = False,
    broker: BrokerOption = None,
) -> None:
    """Play a recorded session in the terminal (space pause, +/- speed, → skip, n next command,
    q quit), or print its commands or export it.

    Exit codes: 0 done, 1 error (unknown session, broker unreachable, damaged recording),
    2 usage (not a session id or a .cast file, bad option).
    """

    def work() -> int:
        player = _player()
        offset = player.parse_offset(at) if at is not None else None
        if grep is not None:
            try:
                re.compile(grep)
            except re.error as exc:
                raise UsageError(f"--grep: not a regular expression: {exc}") from None
        if commands and fmt is not None:
            raise UsageError("give either --commands or --format, not both")
        if follow and (commands or fmt is not None):
            raise UsageError(
                "--follow plays in the terminal; it does not go with --commands or --format"
            )
        local = Path(session)
        if session.endswith(".cast") and local.is_file():
            if verify:
                raise UsageError("--verify checks a session on the broker: give its session id")
            return _play_file(local, speed, idle_limit, offset, grep, commands, fmt, follow or None)
        _check_session_id(session)
        if verify:
            return _verify(broker, session)
        return _replay_remote(
            broker, session, speed, idle_limit, offset, grep, commands, fmt, follow
        )

    raise typer.Exit(_run(work))


def _play_file(
    path: Path,
    speed: float,
    idle_limit: float | None,
    offset: float | None,
    grep: str | None,
    commands: bool,
    fmt: ExportFormat | None,
    follow: bool | Callable[[], bool] | None,
) -> int:
    player = _player()
    if commands:
        try:
            _print_commands(player.commands(path))
        except RecordingDamaged as exc:
            _print_commands(exc.partial or [])
            raise
        return 0
    if fmt is not None:
        player.export(path, fmt.value, sys.stdout)
        sys.stdout.flush()
        return 0
    return int(
        player.play(path, speed=speed, idle_limit=idle_limit, at=offset, grep=grep, follow=follow)
    )


def _print_commands(entries: list[Any]) -> None:
    if not entries:
        stderr.print("no commands in this recording")
        return
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for heading in ("Offset", "Kind", "Command"):
        table.add_column(heading, overflow="fold")
    for at, kind, text in entries:
        style = "bold red" if kind == "blocked" else ""
        table.add_row(format_offset(at), Text(escape(kind), style=style), cell(text))
    stdout.print(table)


def _replay_remote(
    broker: str | None,
    session_id: str,
    speed: float,
    idle_limit: float | None,
    offset: float | None,
    grep: str | None,
    commands: bool,
    fmt: ExportFormat | None,
    follow: bool,
) -> int:
    import asyncio

    address = _address(broker)
    path = cache_dir(address) / f"{session_id}.cast"
    download = Download(path)
    if not follow:
        try:
            asyncio.run(download.run(broker, session_id, follow=False))
        except ApiCallError as exc:
            raise _not_found(exc, session_id) from None
        return _play_file(path, speed, idle_limit, offset, grep, commands, fmt, None)
    # Live: the download keeps appending in a thread while the player, which owns the
    # terminal (and its signals), follows the file on the main thread.
    thread = threading.Thread(
        target=lambda: _quietly(asyncio.run, download.run(broker, session_id, follow=True)),
        name="hoopctl-download",
        daemon=True,
    )
    thread.start()
    download.started.wait()
    if download.error is not None:
        error = download.error
        raise _not_found(error, session_id) if isinstance(error, ApiCallError) else error
    if download.state != "open":
        stderr.print(f"session {session_id} has ended ({download.state}); playing its recording")
        download.done.wait()
        if download.error is not None:
            raise download.error
        return _play_file(path, speed, idle_limit, offset, grep, False, None, None)
    return _play_file(
        path, speed, idle_limit, offset, grep, False, None, follow=download.done.is_set
    )


def _quietly(run: Any, coroutine: Any) -> None:
    with contextlib.suppress(BaseException):
        run(coroutine)


def _verify(broker: str | None, session_id: str) -> int:
    """Exit 0 when the recording and the audit events are intact, 1 with each problem found."""
    import asyncio

    async def work() -> dict[str, Any]:
        try:
            return await _call(broker, "sessions.verify", {"id": session_id})
        except ApiCallError as exc:
            if exc.code in ("unknown_method", "unavailable"):
                raise HoopError("verification is not available on this broker") from None
            raise _not_found(exc, session_id) from None

    report = asyncio.run(work())
    for note in report.get("notes", []):
        stderr.print(f"note: {escape(note)}", markup=False)
    problems = report.get("problems", [])
    if not problems:
        stdout.print(
            f"session {session_id}: intact (recording signature and audit chain verified)",
            markup=False,
        )
        return 0
    for problem in problems:
        stdout.print(escape(problem), markup=False)
    count = len(problems)
    stderr.print(
        f"session {session_id}: {count} problem{'s' if count != 1 else ''} found", markup=False
    )
    return 1
