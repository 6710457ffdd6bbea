"""`hoopctl verify-bundle FILE`: check an evidence bundle offline, without any broker."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from hoopctl.cli_common import _run, app
from hoopctl.errors import HoopError, UsageError
from hoopctl.escape import escape
from hoopctl.output import OutputFormat

EXIT_CHANGED = 1


class BundleChanged(HoopError):
    exit_code = EXIT_CHANGED


@app.command("verify-bundle")
def verify_bundle(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="The bundle (hoopctl sessions export ID --bundle FILE)."
        ),
    ],
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            metavar="FINGERPRINT",
            help="The broker's audit key you trust (SHA256:…); without it, the bundle's own "
            "key is shown for you to compare.",
        ),
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="table (lines) or json.")
    ] = OutputFormat.table,
) -> None:
    """Check an evidence bundle without any broker: the manifest's signature, every audit
    event's hash, the recording and its signature, and the approvals. Names each part that
    changed. Exit codes: 0 intact, 1 changed (or signed by another key than --key), 2 not a
    bundle or unreadable."""
    _run(lambda: _verify(path, key, output))


def _verify(path: Path, key: str | None, output: OutputFormat) -> None:
    # The bundle's format is the broker's (broker.audit.evidence): one definition for the
    # writer and the checker.
    from broker.audit.evidence import MAX_BUNDLE, BundleError, read_members, verify_members

    try:
        if path.stat().st_size > MAX_BUNDLE:
            raise UsageError(f"{escape(str(path))}: too large to be a bundle")
        raw = path.read_bytes()
        members = read_members(raw)
    except OSError as exc:
        raise UsageError(f"cannot read {escape(str(path))}: {exc.strerror or exc}") from None
    except BundleError as exc:
        raise UsageError(f"{escape(str(path))}: {escape(str(exc))}") from None
    report = verify_members(members, key, raw)
    if output is OutputFormat.json:
        sys.stdout.write(
            json.dumps(
                {
                    "intact": report.intact,
                    "session": report.session,
                    "key": report.key,
                    # Without --key the bundle vouches for its own key: compare it yourself.
                    "key_pinned": key is not None,
                    "events": report.events,
                    "recording_bytes": report.recording_bytes,
                    "problems": report.problems,
                },
                indent=2,
            )
            + "\n"
        )
    else:
        for problem in report.problems:
            print(f"changed: {escape(problem)}")
    if not report.intact:
        raise BundleChanged(
            f"{escape(str(path))}: {len(report.problems)} problem"
            f"{'s' if len(report.problems) != 1 else ''}: the bundle is not as the broker signed it"
        )
    if output is not OutputFormat.json:
        recording = (
            f", recording {report.recording_bytes} bytes"
            if report.recording_bytes is not None
            else ""
        )
        trust = (
            ""
            if key
            else " -- a key the bundle brought itself: compare it with the broker's audit key, "
            "or pass --key"
        )
        print(
            f"intact: session {escape(report.session)}, {report.events} audit events{recording}; "
            f"signed by {escape(report.key)}{trust}"
        )
