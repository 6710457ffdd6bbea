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


def test_the_client_names_itself_for_the_audit_trail_only() -> None:
    request = parse_session_command("exec --client 'Claude Desktop/0.9.2' --no-wait pg")
    assert request.client_info == {"name": "Claude Desktop", "version": "0.9.2"}
    assert parse_session_command("exec pg").client_info is None
    for bad in ("nameless", "a/b/c", "x/" + "9" * 40, "evil\x1b[2J/1", "/1.0"):
        with pytest.raises(RequestError, match="--client takes NAME/VERSION"):
            parse_session_command(f"exec --client {bad!r} pg")


def test_summary_is_an_exec_option() -> None:
    assert parse_session_command("exec --summary pg").summary
    assert not parse_session_command("exec pg").summary
    with pytest.raises(RequestError, match="applies to exec only"):
        parse_session_command("connect --summary pg")
