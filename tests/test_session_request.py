"""The session command line the broker accepts (`exec …`, `connect …`), as any SSH client may
send it, not only hoopctl."""

from __future__ import annotations

import pytest

from broker.sessions.request import RequestError, parse_session_command


def test_output_format_is_for_sql_only() -> None:
    assert parse_session_command("exec --output json pg").output == "json"
    with pytest.raises(RequestError, match="--output formats SQL results"):
        parse_session_command("exec --output json web -- ls -l")
    with pytest.raises(RequestError, match="applies to exec only"):
        parse_session_command("connect --output json web")
    assert parse_session_command("exec web -- ls").argv == ("ls",)
