"""Agent identities: `hoopctl login --client-credentials` against the real third-party IdP
(panva's oidc-provider, tests/idp: client `hoop-agent`), a real non-dev broker, and the
agent seen as an agent everywhere: audit events (`actor_kind`), rules (`actor_kind = "agent"`),
`hoopctl sessions` and an approver's `hoopctl approvals`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.config import OidcSection
from broker.identity.tokens import TokenValidator
from tests.helpers import BrokerProcess, User, free_port, oidc_config, start_broker
from tests.idp_harness import OidcProviderProcess
from tests.test_oidc_provider_login import login_ok

AGENT, SECRET = "hoop-agent", "hoop-agent-secret"

POLICY = """
[policies.agents]
default = "allow"
on_unknown = "deny"

[[policies.agents.rules]]
name = "agents-no-id"
action = "deny"
actor_kind = "agent"
program = ["id"]

[[policies.agents.rules]]
name = "agents-hostname-reviewed"
action = "review"
actor_kind = "agent"
program = ["hostname"]
approvers = ["approvers"]
"""


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcProviderProcess]:
    with OidcProviderProcess(id_token_ttl=600) as provider:
        yield provider


@pytest.fixture(scope="module")
def broker(
    idp: OidcProviderProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    tmp = tmp_path_factory.mktemp("agents")
    text = oidc_config(tmp / "data", port=free_port(), issuer=idp.issuer) + POLICY
    text = text.replace(
        'access_approvers = ["leads"]\n', 'access_approvers = ["leads"]\npolicy = "agents"\n', 1
    )
    process = start_broker(tmp, text, dev=False, name="agents")
    yield process
    process.stop()


def agent_login(user: User, broker: BrokerProcess, **env: str) -> tuple[int, str]:
    result = user.run(
        "login", "--broker", broker.address, "--accept-host-key", broker.host_fingerprint,
        "--client-credentials", env=env,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def agent(broker: BrokerProcess, tmp_path_factory: pytest.TempPathFactory) -> User:
    user = User(tmp_path_factory.mktemp("agent"))
    status, output = agent_login(user, broker, HOOP_CLIENT_ID=AGENT, HOOP_CLIENT_SECRET=SECRET)
    assert status == 0, output
    assert f"as {AGENT}" in output and "dba" in output
    return user


def test_an_agent_logs_in_without_a_browser_and_is_an_agent(
    agent: User, broker: BrokerProcess
) -> None:
    whoami = agent.run("whoami", "--output", "json")
    assert whoami.returncode == 0, whoami.stderr
    assert json.loads(whoami.stdout)["user"] == AGENT
    logins = [e for e in broker.audit_events("auth.login") if e.get("actor") == AGENT]
    assert logins and logins[-1]["actor_kind"] == "agent" and logins[-1]["outcome"] == "success"


def test_the_secret_can_come_on_stdin_and_never_shows(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    user = User(tmp_path / "stdin-agent")
    result = user.run(
        "login", "--broker", broker.address, "--accept-host-key", broker.host_fingerprint,
        "--client-credentials", "--client-id", AGENT, "--client-secret-stdin",
        input=SECRET + "\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_a_wrong_secret_is_one_clear_line_and_nothing_leaks(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    user = User(tmp_path / "bad-agent")
    wrong = "not-the-secret-" + "x" * 8
    result = user.run(
        "login", "--broker", broker.address, "--accept-host-key", broker.host_fingerprint,
        "--client-credentials", "--client-id", AGENT,
        env={"HOOP_CLIENT_SECRET": wrong},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output and wrong not in output
    lines = [line for line in output.splitlines() if line.startswith("hoopctl: ")]
    assert any("refused client hoop-agent" in line and "invalid_client" in line for line in lines)
    missing = user.run(
        "login", "--broker", broker.address, "--accept-host-key", broker.host_fingerprint,
        "--client-credentials", "--client-id", AGENT,
    )  # fmt: skip
    assert missing.returncode == 2 and "HOOP_CLIENT_SECRET" in missing.stderr


def test_rules_and_listings_tell_agents_from_people(
    agent: User, broker: BrokerProcess, idp: OidcProviderProcess, tmp_path: Path
) -> None:
    bob = User(tmp_path / "bob")
    login_ok(bob, broker, idp.issuer, "bob")
    # The same command: denied to the agent by a rule for agents, run for a person.
    denied = agent.run("exec", "dev-shell", "--", "id", "-un")
    assert denied.returncode == 3 and "agents-no-id" in denied.stderr
    ran = bob.run("exec", "dev-shell", "--", "id", "-un")
    assert ran.returncode == 0, ran.stderr
    commands = broker.audit_events("command") + broker.audit_events("command.blocked")
    kinds = {(e["actor"], e["type"]): e.get("actor_kind") for e in commands}
    assert kinds[(AGENT, "command.blocked")] == "agent"
    assert kinds[("bob", "command")] == "person"

    # An agent's request is marked as an agent's in the approver's listing.
    held = agent.run("exec", "dev-shell", "--no-wait", "--", "hostname")
    assert held.returncode == 4, held.stderr
    listed = bob.run("approvals", "--scope", "all", "--output", "json")
    records = [r for r in json.loads(listed.stdout) if r["requester"] == AGENT]
    assert records and records[-1]["requester_kind"] == "agent"
    table = bob.run("approvals", "--scope", "all")
    assert f"{AGENT} [agent]" in table.stdout

    sessions = agent.run("sessions")
    assert f"{AGENT} [agent]" in sessions.stdout, sessions.stdout


async def test_the_kind_follows_the_claims() -> None:
    base = {"iss": "https://idp.example", "aud": "hoopctl", "exp": 2_000_000_000}
    plain = TokenValidator(OidcSection(issuer="https://idp.example", client_id="hoopctl"))
    person = {**base, "sub": "alice", "preferred_username": "alice", "azp": "hoopctl"}
    machine = {**base, "sub": "svc-7", "client_id": "svc-7", "groups": ["dba"]}
    assert plain._identity(person).kind == "person"
    found = plain._identity(machine)
    assert (found.user, found.kind, found.groups) == ("svc-7", "agent", ("dba",))
    configured = TokenValidator(
        OidcSection(
            issuer="https://idp.example", client_id="hoopctl", agent_claim="is_agent",
            agent_clients=["copilot-app"],
        )
    )  # fmt: skip
    assert configured._identity({**person, "is_agent": True}).kind == "agent"
    assert configured._identity({**person, "is_agent": "false"}).kind == "person"
    assert configured._identity({**person, "azp": "copilot-app"}).kind == "agent"
