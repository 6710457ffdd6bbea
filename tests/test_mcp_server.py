"""`hoopctl mcp` driven by a real MCP client (the `mcp` SDK's stdio client starts the server
as a logged-in user), against a real broker, real PostgreSQL and a local target. Outcomes are
proved on the target: rows that survive, a table still there, a value that never shows."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.fixtures import approvals
from tests.fixtures.approvals import AccountsDb, World, approvals_world
from tests.helpers import User
from tests.test_proxy_postgres import EMAILS, MASKING, POLICY, restore

accounts_db = approvals.accounts_db
HOOPCTL = shutil.which("hoopctl") or os.path.join(os.path.dirname(sys.executable), "hoopctl")
TOOLS = {"targets_list", "exec", "approval_wait", "schema", "sessions_list", "session_show"}
CLIENT = types.Implementation(name="test-agent", version="1.2.3")
BUDGET = """
[targets.budget]
max_rows = 1000
"""
MILLION = "SELECT g AS n FROM generate_series(1, 1000000) g"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, accounts_db: AccountsDb) -> Iterator[World]:
    root = tmp_path_factory.mktemp("mcp")
    targets = accounts_db.target("pgm", root, policy="proxied") + MASKING + BUDGET + POLICY
    with approvals_world(root, targets=targets, people=("alice", "bob")) as made:
        yield made


@asynccontextmanager
async def mcp_session(user: User, world: World) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=HOOPCTL, args=["mcp", "--broker", world.broker.address], env=user.env
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, client_info=CLIENT) as session:
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert isinstance(result, types.CallToolResult), result
    assert not result.is_error, result
    if result.structured_content is not None:
        found = result.structured_content
        return found.get("result", found) if set(found) == {"result"} else found
    return json.loads(result.content[0].text)  # type: ignore[union-attr]


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 120))


def test_the_tools_masking_a_denial_and_a_command(world: World, accounts_db: AccountsDb) -> None:
    async def scenario() -> dict[str, Any]:
        async with mcp_session(world.alice.user, world) as session:
            listed = await session.list_tools()
            seen: dict[str, Any] = {"tools": {tool.name for tool in listed.tools}}
            seen["targets"] = await call(session, "targets_list")
            seen["select"] = await call(
                session, "exec", target="pgm", sql="SELECT id, email FROM accounts ORDER BY id"
            )
            seen["drop"] = await call(session, "exec", target="pgm", sql="DROP TABLE accounts")
            seen["echo"] = await call(session, "exec", target="shell", argv=["echo", "hi"])
            seen["rm"] = await call(session, "exec", target="shell", argv=["rm", "-f", "/x"])
            seen["schema"] = await call(session, "schema", target="pgm")
            seen["sessions"] = await call(session, "sessions_list")
            first = seen["sessions"]["sessions"][0]["id"]
            seen["session"] = await call(session, "session_show", session_id=first)
            return seen

    seen = run(scenario())
    assert seen["tools"] == TOOLS
    assert {"pgm", "shell"} <= {t["name"] for t in seen["targets"]["targets"]}

    select = seen["select"]
    assert select["status"] == "completed", select
    assert select["columns"] == ["id", "email"]
    assert [row[0] for row in select["rows"]][:2] == [1, 2]
    assert not any(email in json.dumps(select) for email in EMAILS)
    assert select["masked"].get("email", 0) >= 2
    assert select["truncated"] is False
    assert select["session_id"]

    drop = seen["drop"]
    assert drop["status"] == "denied" and "no-drop" in drop["reason"]
    assert accounts_db.count() >= 2  # the table is still there, with its rows

    assert seen["echo"]["status"] == "completed"
    assert seen["echo"]["stdout"].strip() == "hi" and seen["echo"]["exit_status"] == 0
    assert seen["rm"]["status"] == "denied", seen["rm"]

    tables = {t["name"]: t["columns"] for t in seen["schema"]["tables"]}
    assert {"name": "email", "masked": True} in tables["accounts"]
    assert {"name": "id", "masked": False} in tables["accounts"]

    sessions = seen["sessions"]["sessions"]
    assert sessions and all(s["user"] == "alice" for s in sessions)
    assert seen["session"]["status"] == "completed"

    # The audit trail names the MCP client, and the agent-facing calls are the broker's own.
    queries = [e for e in world.broker.audit_events("query") if e.get("target") == "pgm"]
    assert any(e.get("client") == {"name": "test-agent", "version": "1.2.3"} for e in queries)


def test_a_delete_waits_for_approval_then_runs_exactly_once(
    world: World, accounts_db: AccountsDb
) -> None:
    victim = accounts_db.new_account()
    before = accounts_db.count()
    sql = f"DELETE FROM accounts WHERE id = {victim} OR true"  # unbounded: to review

    async def ask() -> dict[str, Any]:
        async with mcp_session(world.alice.user, world) as session:
            return await call(session, "exec", target="pgm", sql=sql, reason="cleanup")

    asked = run(ask())
    assert asked["status"] == "pending_approval", asked
    request_id = asked["request_id"]
    assert accounts_db.count() == before  # nothing ran yet

    approved = world.bob.user.run("approve", request_id)
    assert approved.returncode == 0, approved.stderr

    async def wait() -> tuple[dict[str, Any], dict[str, Any]]:
        async with mcp_session(world.alice.user, world) as session:
            first = await call(session, "approval_wait", request_id=request_id, timeout=30)
            again = await call(session, "approval_wait", request_id=request_id, timeout=5)
            return first, again

    first, again = run(wait())
    assert first["status"] == "completed", first
    assert accounts_db.count() == 0  # it ran
    assert again["status"] != "completed"  # and never again
    executed = [e for e in world.broker.audit_events("query") if e["details"]["query"] == sql]
    assert len(executed) == 1
    restore(accounts_db)


def test_an_undecided_request_is_still_pending_after_the_wait(world: World) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with mcp_session(world.alice.user, world) as session:
            asked = await call(session, "exec", target="pgm", sql="UPDATE accounts SET email = 'x'")
            waited = await call(session, "approval_wait", request_id=asked["request_id"], timeout=1)
            return asked, waited

    asked, waited = run(scenario())
    assert asked["status"] == "pending_approval"
    assert waited == {
        "status": "pending_approval",
        "request_id": asked["request_id"],
        "reason": "still waiting for an approver",
    }
    world.alice.user.run("request", "cancel", asked["request_id"])


def test_print_config_is_what_mcp_clients_take(world: World) -> None:
    shown = world.alice.user.run("mcp", "--print-config", "--broker", world.broker.address)
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout)
    server = config["mcpServers"]["hoop"]
    assert os.path.isabs(server["command"]) and server["args"][0] == "mcp"
    assert server["args"][1:] == ["--broker", world.broker.address]


def test_a_million_row_select_stops_at_the_budget(world: World) -> None:
    async def scenario() -> dict[str, Any]:
        async with mcp_session(world.alice.user, world) as session:
            return await call(session, "exec", target="pgm", sql=MILLION)

    found = run(scenario())
    assert found["status"] == "completed"
    assert found["truncated"] is True
    assert [row[0] for row in found["rows"]] == list(range(1, 1001))


# A fixed transcript of an agent's tool calls, replayed; then the audit trail it left.
TRANSCRIPT: list[tuple[str, dict[str, Any]]] = [
    ("targets_list", {}),
    ("schema", {"target": "pgm"}),
    ("exec", {"target": "pgm", "sql": "SELECT count(*) AS n FROM accounts"}),
    ("exec", {"target": "pgm", "sql": "SELECT email FROM accounts WHERE id = 1"}),
    ("exec", {"target": "pgm", "sql": "TRUNCATE accounts"}),
    ("exec", {"target": "shell", "argv": ["id", "-un"]}),
    ("exec", {"target": "pgm", "sql": "SELEC broken"}),
]


def test_an_agent_loop_leaves_the_audit_trail_of_what_it_did(
    world: World, accounts_db: AccountsDb
) -> None:
    restore(accounts_db)
    start = len(world.broker.audit_events())

    async def replay() -> list[dict[str, Any]]:
        async with mcp_session(world.alice.user, world) as session:
            return [await call(session, tool, **args) for tool, args in TRANSCRIPT]

    answers = run(replay())
    assert [a["status"] for a in answers] == [
        "completed", "completed", "completed", "completed", "denied", "completed",
        "pending_approval",
    ]  # fmt: skip
    assert accounts_db.count() == 2  # the TRUNCATE never ran
    assert not any(email in json.dumps(answers) for email in EMAILS)
    trail = [
        e for e in world.broker.audit_events()[start:]
        if e["type"] in ("schema.read", "query", "query.blocked", "command", "approval.requested")
    ]  # fmt: skip
    described = [(e["type"], (e.get("details") or {}).get("query")) for e in trail]
    assert described == [
        ("schema.read", None),
        ("query", "SELECT count(*) AS n FROM accounts"),
        ("query", "SELECT email FROM accounts WHERE id = 1"),
        ("query.blocked", "TRUNCATE accounts"),
        ("command", None),
        ("approval.requested", None),
        ("query.blocked", "SELEC broken"),  # not run: it waits for a person (--no-wait)
    ]
    assert all(e["actor"] == "alice" for e in trail)
    ran = [e for e in trail if e["type"] in ("query", "command")]
    assert all(e.get("client") == {"name": "test-agent", "version": "1.2.3"} for e in ran)
    assert trail[2]["details"]["masked"] == {"email": 1}
    world.alice.user.run("request", "cancel", answers[-1]["request_id"])


def test_any_client_name_becomes_one_the_broker_takes() -> None:
    from broker.sessions.request import parse_session_command
    from hoopctl.mcp_server import client_words

    for name, version in [
        ("Claude Desktop", "0.9.2"),
        (" .weird\x1b[2J name/with/slashes ", "v1.0 (beta)"),
        ("", ""),
        ("中文客户端", "\uff11.\uff10"),
    ]:
        words = client_words((name, version))
        request = parse_session_command(" ".join(["exec", *map(repr, words), "pg"]))
        assert request.client_info is not None
        assert "\x1b" not in words[1] and words[1].count("/") == 1
