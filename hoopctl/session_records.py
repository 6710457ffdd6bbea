"""What the session commands share: session ids, times, the broker call, JSON output."""

from __future__ import annotations

import contextlib
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.durations import parse_duration
from hoopctl.cli_common import (
    _address,
)
from hoopctl.errors import ApiCallError, HoopError, UsageError
from hoopctl.escape import escape

SESSION_ID = re.compile(r"\d{8}-[0-9a-f]{12}")


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


def local_time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return f"{datetime.fromtimestamp(epoch, tz=UTC).astimezone():%Y-%m-%d %H:%M:%S}"


def iso_time(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


async def call_broker(broker: str | None, method: str, params: dict[str, Any]) -> Any:
    from hoopctl.session import connect_api

    api, _ = await connect_api(_address(broker))
    async with api:
        return await api.call(method, params)


async def download_bundle(broker: str | None, session_id: str, path: Path) -> int:
    """Stream the session's evidence bundle into PATH (written whole or not at all); its size."""
    import base64
    import hashlib
    import os
    import tempfile

    from hoopctl.session import connect_api

    directory = path.parent if str(path.parent) else Path(".")
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".part")
    digest, size, ended = hashlib.sha256(), 0, None
    try:
        with os.fdopen(fd, "wb") as out:
            api, _ = await connect_api(_address(broker))
            async with api:
                try:
                    async for event in api.stream("sessions.bundle", {"id": session_id}):
                        if event.get("type") == "chunk":
                            data = base64.b64decode(event["data"])
                            digest.update(data)
                            size += len(data)
                            out.write(data)
                        elif event.get("type") == "end":
                            ended = event
                except ApiCallError as exc:
                    raise not_found(exc, session_id) from None
            out.flush()
            os.fsync(out.fileno())
        if ended is None or ended.get("size") != size or ended.get("sha256") != digest.hexdigest():
            raise HoopError("the bundle did not arrive whole; nothing was written")
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return size


def as_json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, default=str) + "\n"


def check_session_id(value: str) -> None:
    if not SESSION_ID.fullmatch(value):
        shown = escape(value[:80]) + ("…" if len(value) > 80 else "")
        raise UsageError(
            f"not a session id or a .cast file: {shown!r} (session ids look like "
            "20261123-3f2a9c1d0b7e)"
        )


def not_found(exc: ApiCallError, session_id: str) -> HoopError:
    if exc.code == "not_found":
        return HoopError(f"no session {session_id} on this broker (or it is not yours to replay)")
    return exc
