"""The `hoop-api` subsystem's wire format: one JSON object per line in each direction.

Request:  {"id": 1, "method": "targets.list", "params": {...}}
Response: {"id": 1, "result": ...}  or  {"id": 1, "error": {"code": "...", "message": "..."}}
"""

from __future__ import annotations

import json
from typing import Any

SUBSYSTEM = "hoop-api"
LOGIN_USER = "hoop-login"
MAX_LINE = 256 * 1024
PROTOCOL_VERSION = 1


class ApiError(Exception):
    """An error the broker reports to the client; code is stable, message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":")) + "\n"


def decode(line: str) -> dict[str, Any]:
    if len(line) > MAX_LINE:
        raise ApiError("bad_request", "request too large")
    try:
        message = json.loads(line)
    except ValueError:
        raise ApiError("bad_request", "request is not JSON") from None
    if not isinstance(message, dict):
        raise ApiError("bad_request", "request must be a JSON object")
    return message
