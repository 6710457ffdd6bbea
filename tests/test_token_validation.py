"""The broker validates ID tokens from `hoopctl login --token-stdin` against a real JWKS.

A loopback test issuer (tests/jwks_issuer.py: real HTTP, real RS256 signatures, keys the test
controls) publishes discovery and JWKS; a real broker process (no --dev) trusts it. Every bad
token must be refused with one line naming the problem, leave nothing behind on the user's
machine (no profile, no private key in the keyring), be audited as a failed auth.login, and
never be echoed: not in the audit reason, the broker's output, nor hoopctl's output.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from tests.helpers import (
    BrokerProcess,
    User,
    assert_one_line_error,
    free_port,
    oidc_config,
    start_broker,
)
from tests.jwks_issuer import (
    JwksIssuer,
    b64url_json,
    hs256_token,
    unsigned_token,
)

KEYRING_FILE = Path(".local/share/python_keyring/keyring_pass.cfg")
# Well beyond the broker's default 30 s leeway.
FAR = 600


@dataclass
class Stack:
    issuer: JwksIssuer
    broker: BrokerProcess
    key: RSAKey


def _start_stack(tmp_path: Path, *, name: str) -> tuple[JwksIssuer, BrokerProcess, RSAKey]:
    issuer = JwksIssuer().start()
    key = issuer.new_key("key-a")
    issuer.publish(key)
    try:
        broker = start_broker(
            tmp_path,
            oidc_config(tmp_path / f"{name}-data", port=free_port(), issuer=issuer.issuer),
            dev=False,
            name=name,
        )
    except Exception:
        issuer.stop()
        raise
    return issuer, broker, key


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One test issuer and one broker for the module; each test brings its own user HOME."""
    issuer, broker, key = _start_stack(tmp_path_factory.mktemp("tokens"), name="token-broker")
    yield Stack(issuer=issuer, broker=broker, key=key)
    broker.stop()
    issuer.stop()


@pytest.fixture
def user(tmp_path: Path) -> User:
    return User(tmp_path / "user")


def login_with_token(
    user: User, broker: BrokerProcess, token: str
) -> subprocess.CompletedProcess[str]:
    return user.run(
        "login",
        "--broker",
        broker.address,
        "--accept-host-key",
        broker.host_fingerprint,
        "--token-stdin",
        input=token,
    )


def _secret_parts(token: str) -> list[str]:
    """The whole token, and its payload and signature segments when it has them."""
    parts = [token]
    segments = token.split(".")
    if len(segments) == 3:
        parts += [segment for segment in segments[1:] if len(segment) >= 16]
    return parts


def assert_not_leaked(token: str, *texts: str) -> None:
    for text in texts:
        for part in _secret_parts(token):
            assert part not in text, "the token (or a segment of it) was echoed"


def assert_nothing_saved(user: User) -> None:
    profiles = user.config_dir / "profiles"
    assert not profiles.exists() or not list(profiles.glob("*.json")), list(profiles.iterdir())
    # A fresh HOME: a refused login must not even create the keyring file.
    keyring_file = user.home / KEYRING_FILE
    assert not keyring_file.exists(), keyring_file.read_text()


def login_events(broker: BrokerProcess) -> list[dict[str, Any]]:
    return broker.audit_events("auth.login")


def assert_refused(
    stack: Stack, user: User, token: str, *fragments: str
) -> subprocess.CompletedProcess[str]:
    """Log in with TOKEN and check every consequence of a refusal; return hoopctl's result."""
    before = len(login_events(stack.broker))
    result = login_with_token(user, stack.broker, token)
    assert_one_line_error(result, "the broker refused the login", *fragments)
    assert result.returncode == 1
    assert_nothing_saved(user)

    new = login_events(stack.broker)[before:]
    assert len(new) == 1, new
    event = new[0]
    assert event["outcome"] == "failure", event
    assert "actor" not in event, event
    for fragment in fragments:
        assert fragment in event["reason"], event
    assert_not_leaked(
        token,
        event["reason"],
        stack.broker.stdout_path.read_text(),
        stack.broker.stderr_path.read_text(),
        result.stderr,
        result.stdout,
    )
    return result


def assert_logged_in(
    broker: BrokerProcess, user: User, token: str, username: str = "alice"
) -> dict[str, Any]:
    result = login_with_token(user, broker, token)
    assert result.returncode == 0, result.stderr
    assert f"as {username}" in result.stderr.replace("\x1b[1m", "").replace("\x1b[0m", "")
    assert_not_leaked(
        token,
        result.stderr,
        result.stdout,
        broker.stdout_path.read_text(),
        broker.stderr_path.read_text(),
    )
    whoami = user.run("whoami", "--output", "json")
    assert whoami.returncode == 0, whoami.stderr
    me = json.loads(whoami.stdout)
    assert me["user"] == username
    assert me["broker"] == broker.address
    return me


# --- the control case ----------------------------------------------------------------------


def test_good_token_logs_in_and_whoami_works(stack: Stack, user: User) -> None:
    token = stack.issuer.mint(stack.issuer.claims(), stack.key)
    me = assert_logged_in(stack.broker, user, token)
    assert me["groups"] == ["dba", "engineers"]
    # Certificate lifetime follows the token's (1 h), below the broker's 8 h maximum.
    assert 3300 < me["certificate_expires_in"] <= 3600

    event = login_events(stack.broker)[-1]
    assert event["outcome"] == "success" and event["actor"] == "alice"
    assert list((user.config_dir / "profiles").glob("*.json"))
    assert (user.home / KEYRING_FILE).exists()


def test_skew_within_leeway_is_accepted(stack: Stack, user: User) -> None:
    now = int(time.time())
    token = stack.issuer.mint(stack.issuer.claims(nbf=now + 10, iat=now + 10), stack.key)
    assert_logged_in(stack.broker, user, token)


# --- time ----------------------------------------------------------------------------------


def test_expired_token_is_refused(stack: Stack, user: User) -> None:
    now = int(time.time())
    claims = stack.issuer.claims(iat=now - 2 * FAR, nbf=now - 2 * FAR, exp=now - FAR)
    assert_refused(stack, user, stack.issuer.mint(claims, stack.key), "expired")


def test_token_not_valid_yet_is_refused(stack: Stack, user: User) -> None:
    now = int(time.time())
    claims = stack.issuer.claims(nbf=now + FAR, exp=now + FAR + 3600)
    assert_refused(stack, user, stack.issuer.mint(claims, stack.key), "not valid yet")


def test_token_without_exp_is_refused(stack: Stack, user: User) -> None:
    claims = stack.issuer.claims(exp=None)
    assert_refused(stack, user, stack.issuer.mint(claims, stack.key), "exp")


def test_token_with_non_numeric_exp_is_refused(stack: Stack, user: User) -> None:
    claims = stack.issuer.claims(exp="tomorrow")
    assert_refused(stack, user, stack.issuer.mint(claims, stack.key))


def test_malformed_exp_is_reported_as_such_not_as_clock_skew(stack: Stack, user: User) -> None:
    claims = stack.issuer.claims(exp="tomorrow")
    result = login_with_token(user, stack.broker, stack.issuer.mint(claims, stack.key))
    assert_one_line_error(result, "exp")
    assert "not valid yet" not in result.stderr


# --- who issued it, for whom ---------------------------------------------------------------


def test_token_from_another_issuer_is_refused(stack: Stack, user: User) -> None:
    claims = stack.issuer.claims(iss="http://127.0.0.1:1/evil-issuer")
    assert_refused(stack, user, stack.issuer.mint(claims, stack.key), "issuer")


def test_token_for_another_audience_is_refused(stack: Stack, user: User) -> None:
    claims = stack.issuer.claims(aud="some-other-app")
    assert_refused(stack, user, stack.issuer.mint(claims, stack.key), "audience")


def test_token_without_audience_is_refused(stack: Stack, user: User) -> None:
    claims = stack.issuer.claims(aud=None)
    assert_refused(stack, user, stack.issuer.mint(claims, stack.key), "audience")


# --- signatures and algorithms -------------------------------------------------------------


def test_tampered_payload_is_refused(stack: Stack, user: User) -> None:
    good = stack.issuer.mint(stack.issuer.claims(), stack.key)
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = [*claims["groups"], "admins"]
    claims["preferred_username"] = "mallory"
    tampered = f"{header}.{b64url_json(claims)}.{signature}"
    assert tampered != good
    assert_refused(stack, user, tampered, "signature")


def test_unsigned_alg_none_token_is_refused(stack: Stack, user: User) -> None:
    token = unsigned_token(stack.issuer.claims(), kid=stack.key.kid)
    assert token.endswith(".")
    assert_refused(stack, user, token, "algorithm", "'none'")


def test_hs256_signed_with_the_public_key_pem_is_refused(stack: Stack, user: User) -> None:
    """Key confusion: HMAC keyed with the published RSA public key, which anyone can fetch."""
    public_pem = stack.key.as_pem(private=False)
    assert b"PUBLIC KEY" in public_pem
    token = hs256_token(stack.issuer.claims(), public_pem, kid=stack.key.kid)
    assert_refused(stack, user, token, "algorithm", "'HS256'")


def test_token_signed_by_an_unpublished_key_is_refused(stack: Stack, user: User) -> None:
    rogue = stack.issuer.new_key("rogue-key")
    token = stack.issuer.mint(stack.issuer.claims(), rogue)
    assert_refused(stack, user, token, "'rogue-key'", "does not publish")


def test_token_signed_by_another_key_under_a_published_kid_is_refused(
    stack: Stack, user: User
) -> None:
    impostor = stack.issuer.new_key(stack.key.kid)  # same kid, different key material
    token = stack.issuer.mint(stack.issuer.claims(), impostor)
    assert_refused(stack, user, token, "signature")


# --- who the token names -------------------------------------------------------------------


def test_token_without_username_claim_is_refused(stack: Stack, user: User) -> None:
    claims = stack.issuer.claims(preferred_username=None)
    assert_refused(stack, user, stack.issuer.mint(claims, stack.key), "preferred_username")


@pytest.mark.parametrize(
    "username",
    ["alice; rm -rf /", "root", "hoop-login", "../etc/passwd", "-oProxyCommand=x", "al ice"],
)
def test_username_that_is_not_a_safe_principal_is_refused(
    stack: Stack, user: User, username: str
) -> None:
    claims = stack.issuer.claims(preferred_username=username)
    assert_refused(stack, user, stack.issuer.mint(claims, stack.key), "SSH principal")


# --- not a token at all --------------------------------------------------------------------


def test_garbage_on_stdin_is_refused(stack: Stack, user: User) -> None:
    assert_refused(stack, user, "not-a-jwt", "not a signed JWT")


def test_malformed_three_part_garbage_is_refused(stack: Stack, user: User) -> None:
    assert_refused(stack, user, "aaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbb.cccc", "malformed")


def test_empty_stdin_is_a_usage_error(stack: Stack, user: User) -> None:
    before = len(login_events(stack.broker))
    for empty in ("", "  \n"):
        result = login_with_token(user, stack.broker, empty)
        assert result.returncode == 2, result
        assert_one_line_error(result, "--token-stdin", "no token")
        assert_nothing_saved(user)
    # Nothing reached auth.exchange, so there is nothing to audit.
    assert len(login_events(stack.broker)) == before


# --- key rotation (its own issuer and broker: it changes the published keys) ---------------


def test_key_rotation_new_key_accepted_old_key_refused(tmp_path: Path) -> None:
    issuer, broker, key_a = _start_stack(tmp_path, name="rotation-broker")
    stack = Stack(issuer=issuer, broker=broker, key=key_a)
    try:
        assert_logged_in(broker, User(tmp_path / "alice"), issuer.mint(issuer.claims(), key_a))
        fetches = issuer.jwks_fetches
        assert fetches >= 1

        key_b = issuer.new_key("key-b")
        issuer.publish(key_b)  # rotation: only B is published from now on
        time.sleep(1.1)  # past the validator's minimum interval between JWKS refetches

        bob_claims = issuer.claims(preferred_username="bob", sub="user-bob-0002")
        assert_logged_in(broker, User(tmp_path / "bob"), issuer.mint(bob_claims, key_b), "bob")
        assert issuer.jwks_fetches > fetches, "the unknown kid should have triggered a refetch"

        # A fresh, otherwise perfect token under the retired key.
        old = issuer.mint(issuer.claims(), key_a)
        assert_refused(stack, User(tmp_path / "mallory"), old, "'key-a'", "does not publish")
    finally:
        broker.stop()
        issuer.stop()
