"""`hoopctl replay`: play, list the commands of, export or verify a recorded session."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from hoopctl.address import BrokerAddress
from hoopctl.cli_common import (
    BrokerOption,
    _address,
    _run,
    app,
    complete_session,
)
from hoopctl.errors import ApiCallError, HoopError, UsageError
from hoopctl.escape import escape
from hoopctl.output import cell, listing_table, stderr, stdout
from hoopctl.replay.errors import RecordingDamaged, format_offset
from hoopctl.session_records import call_broker, check_session_id, not_found

MIN_SPEED, MAX_SPEED = 0.1, 64.0


class ExportFormat(StrEnum):
    cast = "cast"
    json = "json"
    text = "text"


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
        check_session_id(session)
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
    from rich.text import Text

    table = listing_table(("Offset", "Kind", "Command"), fold=True)
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
            raise not_found(exc, session_id) from None
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
        raise not_found(error, session_id) if isinstance(error, ApiCallError) else error
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
            return await call_broker(broker, "sessions.verify", {"id": session_id})
        except ApiCallError as exc:
            if exc.code in ("unknown_method", "unavailable"):
                raise HoopError("verification is not available on this broker") from None
            raise not_found(exc, session_id) from None

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
