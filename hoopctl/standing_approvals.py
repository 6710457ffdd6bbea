"""Standing approvals from the command line: grant (`approve --standing`), revoke
(`approve --revoke`) and list (`approvals --standing`)."""

from __future__ import annotations

import time
from typing import Any

from broker.durations import format_duration
from hoopctl.approval_listing import duration_seconds, records_of
from hoopctl.approval_requests import local_time, refusal_error
from hoopctl.errors import ApiCallError
from hoopctl.escape import escape
from hoopctl.output import OutputFormat, render

COLUMNS = [
    ("id", "ID"),
    ("state", "State"),
    ("target", "Target"),
    ("group", "Group"),
    ("pattern", "Pattern"),
    ("granted_by", "Granted by"),
    ("until", "Until"),
    ("uses", "Uses"),
    ("comment", "Comment"),
]


def _describe(record: dict[str, Any]) -> str:
    until = local_time(float(record.get("expires_at") or 0))
    return (
        f"standing approval {escape(str(record.get('id')))}: "
        f"`{escape(str(record.get('pattern')))}` on {escape(str(record.get('target')))} "
        f"for {escape(str(record.get('group')))} until {until}"
    )


async def grant_standing(
    address: Any, pattern: str, target: str, group: str, period: str, comment: str
) -> None:
    from hoopctl.session import connect_api

    seconds = duration_seconds(period, "--for")
    api, _ = await connect_api(address)
    async with api:
        params = {
            "pattern": pattern,
            "target": target,
            "group": group,
            "duration": seconds,
            "comment": comment,
        }
        try:
            record = await api.call("approvals.standing.grant", params)
        except ApiCallError as exc:
            raise refusal_error("cannot grant the standing approval", exc, usage=True) from None
    print(_describe(record if isinstance(record, dict) else {}))


async def revoke_standing(address: Any, standing_id: str) -> None:
    from hoopctl.session import connect_api

    api, _ = await connect_api(address)
    async with api:
        try:
            record = await api.call("approvals.standing.revoke", {"id": standing_id})
        except ApiCallError as exc:
            raise refusal_error(f"cannot revoke {escape(standing_id)}", exc, usage=True) from None
    print("revoked " + _describe(record if isinstance(record, dict) else {}))


async def list_standing(address: Any, include_ended: bool, output: OutputFormat) -> None:
    from hoopctl.session import connect_api

    api, _ = await connect_api(address)
    async with api:
        records = records_of(await api.call("approvals.standing.list", {"all": include_ended}))
    now = time.time()
    rows = []
    for record in records:
        expires = float(record.get("expires_at") or 0)
        left = (
            f" ({format_duration(expires - now)} left)" if record.get("state") == "active" else ""
        )
        rows.append({**record, "until": local_time(expires) + left})
    if output is OutputFormat.json:
        render(records, COLUMNS, output)
        return
    render(
        rows,
        COLUMNS,
        output,
        empty="no standing approvals" + ("" if include_ended else " in force"),
    )
