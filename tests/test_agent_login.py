"""Agent identities: `hoopctl login --client-credentials` against the real third-party IdP
(panva's oidc-provider, tests/idp: client `hoop-agent`), a real non-dev broker, and the
agent seen as an agent everywhere: audit events (`actor_kind`), rules (`actor_kind = "agent"`),
`hoopctl sessions` and an approver's `hoopctl approvals`; `[oidc] agent_claim` and
`agent_clients` decide who else is one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.config import OidcSection
from broker.errors import AuthError
from broker.identity.tokens import TokenValidator
from tests.helpers import (
    BrokerProcess,
    User,
    assert_one_line_error,
    free_port,
    oidc_config,
    start_broker,
)
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


def other_broker(idp_issuer: str, tmp_path: Path, extra_oidc: str) -> BrokerProcess:
    text = oidc_config(
        tmp_path / "data", port=free_port(), issuer=idp_issuer, extra_oidc=extra_oidc
    )
    return start_broker(tmp_path, text, dev=False, name="other")


def last_login_kind(broker: BrokerProcess, user: str) -> str | None:
    logins = [e for e in broker.audit_events("auth.login") if e.get("actor") == user]
    assert logins, f"no auth.login of {user}"
    return logins[-1].get("actor_kind")


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
    me = json.loads(whoami.stdout)
    assert (me["user"], me["kind"]) == (AGENT, "agent")
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
    no_id = user.run(
        "login", "--broker", broker.address, "--accept-host-key", broker.host_fingerprint,
        "--client-credentials", env={"HOOP_CLIENT_SECRET": SECRET},
    )  # fmt: skip
    assert_one_line_error(no_id, "--client-id", "HOOP_CLIENT_ID")
    assert no_id.returncode == 2 and SECRET not in no_id.stdout + no_id.stderr
    assert not list(user.config_dir.glob("profiles/*.json"))  # no login was saved


def test_a_token_the_broker_refuses_is_one_clear_line(
    idp: OidcProviderProcess, tmp_path: Path
) -> None:
    # The provider's token is for the audience "hoopctl"; this broker expects another.
    elsewhere = other_broker(idp.issuer, tmp_path, 'audience = "urn:hoop:elsewhere"')
    try:
        result = User(tmp_path / "agent").run(
            "login", "--broker", elsewhere.address, "--accept-host-key",
            elsewhere.host_fingerprint, "--client-credentials", "--client-id", AGENT,
            env={"HOOP_CLIENT_SECRET": SECRET},
        )  # fmt: skip
    finally:
        elsewhere.stop()
    assert_one_line_error(result, "the broker refused the login", "urn:hoop:elsewhere")
    assert SECRET not in result.stdout + result.stderr
    refused = elsewhere.audit_events("auth.login")
    assert [e["outcome"] for e in refused] == ["failure"]


def test_an_unreachable_identity_provider_is_one_clear_line(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    lonely = other_broker(dead, tmp_path, "")
    try:
        result = User(tmp_path / "agent").run(
            "login", "--broker", lonely.address, "--accept-host-key", lonely.host_fingerprint,
            "--client-credentials", "--client-id", AGENT, env={"HOOP_CLIENT_SECRET": SECRET},
        )  # fmt: skip
    finally:
        lonely.stop()
    assert_one_line_error(result, "cannot reach the identity provider", dead)
    assert SECRET not in result.stdout + result.stderr


def test_rules_and_listings_tell_agents_from_people(
    agent: User, broker: BrokerProcess, idp: OidcProviderProcess, tmp_path: Path
) -> None:
    bob = User(tmp_path / "bob")
    login_ok(bob, broker, idp.issuer, "bob")
    assert last_login_kind(broker, "bob") == "person"
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


def test_every_event_of_an_agents_session_names_an_agent(
    agent: User, broker: BrokerProcess
) -> None:
    ran = agent.run("exec", "dev-shell", "--", "echo", "agent-was-here")
    assert ran.returncode == 0 and "agent-was-here" in ran.stdout, ran.stderr
    started = [
        e
        for e in broker.audit_events("session.start")
        if e.get("actor") == AGENT and "agent-was-here" in str(e.get("details"))
    ]
    assert len(started) == 1
    session = [e for e in broker.audit_events() if e.get("session") == started[0]["session"]]
    assert {"session.start", "command", "session.end"} <= {e["type"] for e in session}
    assert {e.get("actor_kind") for e in session} == {"agent"}


def test_the_agent_claim_decides_for_an_account_that_logs_in_like_a_person(
    broker: BrokerProcess, idp: OidcProviderProcess, tmp_path: Path
) -> None:
    # ci-bot's ID token carries hoop_agent: true. A broker that does not name the claim
    # sees a person; one with agent_claim = "hoop_agent" an agent, and still bob as a person.
    login_ok(User(tmp_path / "bot"), broker, idp.issuer, "ci-bot")
    assert last_login_kind(broker, "ci-bot") == "person"
    claims = other_broker(idp.issuer, tmp_path, 'agent_claim = "hoop_agent"')
    try:
        login_ok(User(tmp_path / "bot2"), claims, idp.issuer, "ci-bot")
        login_ok(User(tmp_path / "bob"), claims, idp.issuer, "bob")
    finally:
        claims.stop()
    assert last_login_kind(claims, "ci-bot") == "agent"
    assert last_login_kind(claims, "bob") == "person"


BASE = {"iss": "https://idp.example", "aud": "hoopctl", "exp": 2_000_000_000}
PERSON = {**BASE, "sub": "u-1", "preferred_username": "alice", "azp": "hoopctl"}


def validator(**oidc: object) -> TokenValidator:
    return TokenValidator(OidcSection(issuer="https://idp.example", client_id="hoopctl", **oidc))


def test_a_person_is_a_person_unless_the_settings_say_otherwise() -> None:
    plain = validator()
    assert plain._identity(PERSON).kind == "person"
    assert plain._identity({**PERSON, "is_agent": True}).kind == "person"  # no agent_claim
    configured = validator(agent_claim="is_agent", agent_clients=["copilot-app"])
    assert configured._identity(PERSON).kind == "person"
    for marked in ({"is_agent": True}, {"is_agent": "agent"}, {"is_agent": "TRUE"}):
        assert configured._identity({**PERSON, **marked}).kind == "agent", marked
    for unmarked in ({"is_agent": False}, {"is_agent": "false"}, {"is_agent": 1}):
        assert configured._identity({**PERSON, **unmarked}).kind == "person", unmarked
    assert configured._identity({**PERSON, "azp": "copilot-app"}).kind == "agent"
    assert configured._identity({**PERSON, "client_id": "copilot-app"}).kind == "agent"
    assert configured._identity({**PERSON, "client_id": ["copilot-app"]}).kind == "person"


@pytest.mark.parametrize(
    ("claims", "user"),
    [
        # RFC 9068 / oidc-provider / Okta: the subject is the client.
        ({"sub": "svc-7", "client_id": "svc-7"}, "svc-7"),
        ({"sub": "svc-7", "azp": "svc-7"}, "svc-7"),
        # Auth0: gty, with the subject "CLIENT@clients".
        ({"sub": "svc-7@clients", "azp": "svc-7", "gty": "client-credentials"}, "svc-7"),
        # Microsoft Entra: idtyp "app", the subject the service principal's object id.
        ({"sub": "0f3c", "azp": "6e1b", "idtyp": "app"}, "6e1b"),
        # The username claim, when the provider names its service accounts.
        ({"sub": "a1", "azp": "svc-7", "gty": "client-credentials",
          "preferred_username": "service-account-svc-7"}, "service-account-svc-7"),
        # No subject names no person: an agent (named by the username claim).
        ({"preferred_username": "nobody-in-particular"}, "nobody-in-particular"),
    ],
)  # fmt: skip
def test_a_clients_own_token_is_an_agent_named_after_the_client(
    claims: dict[str, object], user: str
) -> None:
    found = validator()._identity({**BASE, "groups": ["dba"], **claims})
    assert (found.user, found.kind, found.groups) == (user, "agent", ("dba",))


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        # A person's token without the username claim is refused, never named after the
        # client that every person shares.
        ({"sub": "u-1", "azp": "hoopctl"}, "no 'preferred_username' claim"),
        ({"sub": "bad name", "client_id": "bad name"}, "cannot be used as an SSH principal"),
        ({"sub": "root", "client_id": "root"}, "cannot be used as an SSH principal"),
        ({"sub": "x", "client_id": "x", "preferred_username": "hoop-login"}, "SSH principal"),
    ],
)
def test_names_that_cannot_be_principals_are_refused(
    claims: dict[str, object], message: str
) -> None:
    with pytest.raises(AuthError, match=message):
        validator()._identity({**BASE, **claims})
