"""Login through a real third-party OIDC provider (panva's oidc-provider, tests/idp).

The broker runs as a real process with a non-dev config whose [oidc] issuer is the test
provider; hoopctl is the real console script; the test plays the human at the provider's
device pages with approve_device_code. The last tests drive hoopctl.oidc's polling loop at
the protocol level against the broker's built-in dev issuer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
import pytest_asyncio

from broker.identity.dev_issuer import DevIssuer, DevUser
from hoopctl.errors import LoginError
from hoopctl.oidc import (
    DeviceAuthorization,
    Endpoints,
    TokenSet,
    poll_for_tokens,
    start_device_authorization,
)
from tests.helpers import (
    USER_CODE,
    BrokerProcess,
    User,
    free_port,
    oidc_config,
    start_broker,
)
from tests.idp_harness import ACCOUNTS, OidcProviderProcess, approve_device_code

# oidc-provider asks clients to poll every 5 s: a device login takes at least that long.
LOGIN_TIMEOUT = 30
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

_SPAWNED: list[pexpect.spawn] = []

ProviderFactory = Callable[..., OidcProviderProcess]
BrokerFactory = Callable[..., BrokerProcess]


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcProviderProcess]:
    """One provider for the tests that need no special TTLs (ID tokens live 10 minutes)."""
    with OidcProviderProcess(id_token_ttl=600) as provider:
        yield provider


@pytest.fixture
def make_idp() -> Iterator[ProviderFactory]:
    """Start a provider with the given TTLs (seconds); stopped when the test ends."""
    with contextlib.ExitStack() as stack:
        yield lambda **kwargs: stack.enter_context(OidcProviderProcess(**kwargs))


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start a real, non-dev broker process trusting ISSUER; stopped when the test ends."""
    started: list[BrokerProcess] = []

    def factory(
        issuer: str, *, extra_oidc: str = "", certificate_ttl: str | None = None
    ) -> BrokerProcess:
        name = f"oidc-broker-{len(started)}"
        text = oidc_config(
            tmp_path / f"{name}-data", port=free_port(), issuer=issuer, extra_oidc=extra_oidc
        )
        if certificate_ttl:
            # oidc_config's [broker] table ends right before [oidc].
            text = text.replace("[oidc]", f'certificate_ttl = "{certificate_ttl}"\n\n[oidc]', 1)
        broker = start_broker(tmp_path, text, dev=False, name=name)
        started.append(broker)
        return broker

    yield factory
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(idp: OidcProviderProcess, make_broker: BrokerFactory) -> BrokerProcess:
    return make_broker(idp.issuer)


@pytest.fixture(autouse=True)
def _no_stray_hoopctl() -> Iterator[None]:
    """A failing test must not leave a hoopctl waiting for approval behind."""
    yield
    while _SPAWNED:
        _SPAWNED.pop().close(force=True)


@pytest.fixture
def carol(tmp_path: Path) -> User:
    return User(tmp_path / "carol")


def spawn_login(user: User, broker: BrokerProcess) -> pexpect.spawn:
    child = user.spawn(
        "login",
        "--broker",
        broker.address,
        "--accept-host-key",
        broker.host_fingerprint,
        "--no-browser",
        timeout=LOGIN_TIMEOUT,
    )
    child.logfile_read = io.StringIO()  # the whole terminal transcript, for finish()
    _SPAWNED.append(child)
    return child


def finish(child: pexpect.spawn) -> tuple[int | None, str]:
    """Wait for a spawned hoopctl to exit; return its exit status and everything it printed."""
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, ANSI.sub("", child.logfile_read.getvalue())


def one_line_error(output: str, *fragments: str) -> str:
    """OUTPUT (a terminal transcript) holds one 'hoopctl:' error line, no traceback."""
    assert "Traceback" not in output, output
    errors = [line.strip() for line in output.splitlines() if line.startswith("hoopctl: ")]
    errors = [line for line in errors if "no OS keyring here" not in line]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def login_with_provider(
    user: User, broker: BrokerProcess, issuer: str, username: str
) -> tuple[int | None, str]:
    """Run `hoopctl login` and approve its code at the provider as USERNAME."""
    child = spawn_login(user, broker)
    child.expect(USER_CODE)
    approve_device_code(issuer, child.match.group(1), username, ACCOUNTS[username]["password"])
    return finish(child)


def login_ok(user: User, broker: BrokerProcess, issuer: str, username: str) -> str:
    status, output = login_with_provider(user, broker, issuer, username)
    assert status == 0, output
    return output


def saved_profiles(user: User) -> list[Path]:
    profiles = user.config_dir / "profiles"
    return sorted(profiles.glob("*.json")) if profiles.exists() else []


def only_profile(user: User) -> dict[str, Any]:
    paths = saved_profiles(user)
    assert len(paths) == 1, paths
    return json.loads(paths[0].read_text())


def whoami(user: User) -> dict[str, Any]:
    result = user.run("whoami", "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def target_names(user: User) -> list[str]:
    result = user.run("targets", "-o", "json")
    assert result.returncode == 0, result.stderr
    return [row["name"] for row in json.loads(result.stdout)]


def successful_logins(broker: BrokerProcess, user: str) -> list[dict[str, Any]]:
    return [
        event
        for event in broker.audit_events("auth.login")
        if event.get("actor") == user and event.get("outcome") == "success"
    ]


# ---------------------------------------------------------------------------
# hoopctl login against the third-party provider
# ---------------------------------------------------------------------------


def test_login_with_third_party_oidc_provider_device_flow(
    idp: OidcProviderProcess, broker: BrokerProcess, alice: User
) -> None:
    child = spawn_login(alice, broker)
    child.expect(r"open (?:\x1b\[[0-9;]*m)*(http://\S+?)(?:\x1b\[[0-9;]*m)* ")
    assert child.match.group(1) == f"{idp.issuer}/device"
    child.expect(USER_CODE)
    approve_device_code(idp.issuer, child.match.group(1), "alice", "alice-password")
    status, output = finish(child)
    assert status == 0, output
    assert "as alice (groups: dba, engineers)" in output
    assert "DEV identity provider" not in output

    me = whoami(alice)
    assert me["user"] == "alice"
    assert me["groups"] == ["dba", "engineers"]
    assert me["broker"] == broker.address
    # Certificate lifetime = min(ID token lifetime 600 s, broker certificate_ttl 8 h).
    assert 570 <= me["certificate_expires_in"] <= 600

    profile = only_profile(alice)
    assert profile["issuer"] == idp.issuer
    assert profile["token_endpoint"] == idp.token_endpoint
    assert profile["user"] == "alice"
    event = successful_logins(broker, "alice")[-1]
    assert event["groups"] == ["dba", "engineers"]
    assert event["details"]["valid_before"] == profile["valid_before"]


def test_broker_certificate_ttl_caps_a_longer_id_token(
    idp: OidcProviderProcess, make_broker: BrokerFactory, alice: User
) -> None:
    broker = make_broker(idp.issuer, certificate_ttl="5m")
    login_ok(alice, broker, idp.issuer, "alice")
    # min(ID token lifetime 600 s, broker certificate_ttl 300 s)
    assert 270 <= whoami(alice)["certificate_expires_in"] <= 300


def test_certificate_renews_with_refresh_token(
    make_idp: ProviderFactory, make_broker: BrokerFactory, alice: User
) -> None:
    # ID tokens (and so certificates) live 30 s, under hoopctl's 120 s renewal margin:
    # every command renews with the refresh token.
    idp = make_idp(id_token_ttl=30)
    broker = make_broker(idp.issuer)
    login_ok(alice, broker, idp.issuer, "alice")
    first = only_profile(alice)
    assert 0 < first["valid_before"] - time.time() <= 30
    # Let the clock tick past the second the first ID token was issued in.
    time.sleep(1.1)

    me = whoami(alice)
    assert me["user"] == "alice" and me["groups"] == ["dba", "engineers"]
    second = only_profile(alice)
    assert second["certificate"] != first["certificate"]
    assert second["valid_before"] > first["valid_before"]
    assert 0 < me["certificate_expires_in"] <= 30
    assert len(successful_logins(broker, "alice")) == 2

    # The provider rotates refresh tokens: the new one was kept, so renewal works again.
    time.sleep(1.1)
    assert target_names(alice) == ["dev-shell"]
    third = only_profile(alice)
    assert third["valid_before"] > second["valid_before"]
    logins = successful_logins(broker, "alice")
    assert len(logins) == 3
    assert len({event["details"]["certificate_serial"] for event in logins}) == 3


def test_expired_login_with_the_provider_down_says_what_to_do(
    make_idp: ProviderFactory, make_broker: BrokerFactory, alice: User
) -> None:
    idp = make_idp(id_token_ttl=30)  # under the renewal margin: the next command renews
    broker = make_broker(idp.issuer)
    login_ok(alice, broker, idp.issuer, "alice")
    idp.stop()
    result = alice.run("whoami")
    assert result.returncode != 0
    error = one_line_error(result.stderr, "cannot be renewed", "cannot be reached")
    assert "check the network" in error
    assert f"hoopctl login --broker {broker.address}" in error


def test_device_code_expired_is_clear_error(
    make_idp: ProviderFactory, make_broker: BrokerFactory, alice: User
) -> None:
    idp = make_idp(device_code_ttl=3)
    broker = make_broker(idp.issuer)
    child = spawn_login(alice, broker)
    child.expect(USER_CODE)  # ... and nobody approves it
    status, output = finish(child)
    assert status == 1, output
    one_line_error(output, "expired", "hoopctl login")
    assert saved_profiles(alice) == []
    assert broker.audit_events("auth.login") == []


def test_device_login_denied_at_idp(
    idp: OidcProviderProcess, broker: BrokerProcess, alice: User
) -> None:
    child = spawn_login(alice, broker)
    child.expect(USER_CODE)
    approve_device_code(idp.issuer, child.match.group(1), "alice", "alice-password", deny=True)
    status, output = finish(child)
    assert status == 1, output
    one_line_error(output, "denied")
    assert saved_profiles(alice) == []
    assert successful_logins(broker, "alice") == []


def interrupt(child: pexpect.spawn) -> tuple[int | None, str]:
    """Press Ctrl-C once at a waiting hoopctl."""
    child.sendintr()
    return finish(child)


def test_wrong_password_does_not_log_in(
    idp: OidcProviderProcess, broker: BrokerProcess, alice: User
) -> None:
    child = spawn_login(alice, broker)
    child.expect(USER_CODE)
    user_code = child.match.group(1)
    with pytest.raises(AssertionError, match="Invalid username or password"):
        approve_device_code(idp.issuer, user_code, "alice", "not-alice-password")
    # hoopctl keeps waiting for an approval that will not come; the person gives up.
    assert child.isalive()
    try:
        status, output = interrupt(child)
    finally:
        child.close(force=True)
    assert status == 130, output
    one_line_error(output, "interrupted")
    assert saved_profiles(alice) == []
    assert successful_logins(broker, "alice") == []


def test_one_ctrl_c_stops_a_waiting_login(broker: BrokerProcess, alice: User) -> None:
    child = spawn_login(alice, broker)
    child.expect(USER_CODE)
    child.expect("Waiting for you to approve")
    child.sendintr()
    try:
        # A 5 s poll interval: a working Ctrl-C ends hoopctl well before it would poll again.
        child.expect(pexpect.EOF, timeout=4)
        child.close()
    finally:
        child.close(force=True)
    assert child.exitstatus == 130
    one_line_error(ANSI.sub("", child.logfile_read.getvalue()), "interrupted")


@pytest.mark.parametrize(
    ("groups_claim", "groups", "targets"),
    [
        ("groups", ["dba", "engineers"], ["dev-shell"]),
        ("roles", [], []),
    ],
)
def test_groups_claim_is_configurable(
    idp: OidcProviderProcess,
    make_broker: BrokerFactory,
    alice: User,
    groups_claim: str,
    groups: list[str],
    targets: list[str],
) -> None:
    broker = make_broker(idp.issuer, extra_oidc=f'groups_claim = "{groups_claim}"')
    login_ok(alice, broker, idp.issuer, "alice")
    me = whoami(alice)
    assert me["user"] == "alice"
    assert me["groups"] == groups
    assert target_names(alice) == targets
    if not targets:
        table = alice.run("targets")
        assert table.returncode == 0
        assert "no targets are open to your groups" in table.stdout + table.stderr


def test_user_in_no_allowed_group_sees_no_targets(
    idp: OidcProviderProcess, broker: BrokerProcess, carol: User
) -> None:
    login_ok(carol, broker, idp.issuer, "carol")
    me = whoami(carol)
    assert me["user"] == "carol" and me["groups"] == ["contractors"]
    assert target_names(carol) == ["contractor-box"]


# ---------------------------------------------------------------------------
# The polling loop, at the protocol level, against the broker's dev issuer
# ---------------------------------------------------------------------------


@pytest_asyncio.fixture
async def make_dev_issuer(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[DevIssuer] = []

    async def factory(**kwargs: Any) -> DevIssuer:
        issuer = DevIssuer(
            key_path=tmp_path / "dev-issuer.jwk",
            users={"alice": DevUser(name="alice", groups=("dba", "engineers"))},
            **kwargs,
        )
        await issuer.start()
        started.append(issuer)
        return issuer

    yield factory
    for issuer in started:
        await issuer.stop()


def dev_endpoints(issuer: DevIssuer) -> Endpoints:
    return Endpoints(
        device_authorization=f"{issuer.issuer}/device/code", token=f"{issuer.issuer}/token"
    )


async def device_authorization(issuer: DevIssuer, **override: Any) -> DeviceAuthorization:
    """A real /device/code answer, with fields overridden as a (mis)behaving client would."""
    authorization = await asyncio.to_thread(
        start_device_authorization, dev_endpoints(issuer), "hoopctl", ["openid", "groups"]
    )
    return dataclasses.replace(authorization, **override)


async def test_poll_for_tokens_backs_off_on_slow_down(make_dev_issuer) -> None:
    issuer = await make_dev_issuer(poll_interval=2, device_code_ttl=60)
    # The issuer asks for 2 s between polls; a client that polls every second gets slow_down.
    authorization = await device_authorization(issuer, interval=1)
    assert authorization.expires_in == 60
    loop = asyncio.get_running_loop()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            # The person approves while the client waits out its longer interval.
            loop.call_soon_threadsafe(issuer.approve, authorization.user_code, "alice")
        time.sleep(seconds)

    started = time.monotonic()
    tokens: TokenSet = await asyncio.to_thread(
        poll_for_tokens, dev_endpoints(issuer), "hoopctl", authorization, sleep=sleep
    )
    # poll 1 -> authorization_pending; poll 2 (1 s later) -> slow_down; +5 s -> tokens.
    assert sleeps == [1, 1, 6]
    assert time.monotonic() - started >= 8
    assert tokens.id_token.count(".") == 2
    assert tokens.refresh_token


async def test_poll_for_tokens_stops_when_the_code_expires(make_dev_issuer) -> None:
    issuer = await make_dev_issuer(poll_interval=1, device_code_ttl=2)
    authorization = await device_authorization(issuer)
    assert (authorization.expires_in, authorization.interval) == (2, 1)
    started = time.monotonic()
    with pytest.raises(LoginError, match="expired"):
        await asyncio.to_thread(poll_for_tokens, dev_endpoints(issuer), "hoopctl", authorization)
    assert 2 <= time.monotonic() - started < 20  # it waited for the expiry, then stopped


async def test_poll_for_tokens_reports_expired_token_from_the_issuer(make_dev_issuer) -> None:
    # The client believes it has 10 minutes; the issuer says the code expired after 2 s.
    issuer = await make_dev_issuer(poll_interval=1, device_code_ttl=2)
    authorization = await device_authorization(issuer, expires_in=600)
    with pytest.raises(LoginError, match="expired") as error:
        await asyncio.to_thread(poll_for_tokens, dev_endpoints(issuer), "hoopctl", authorization)
    assert "hoopctl login" in str(error.value)
