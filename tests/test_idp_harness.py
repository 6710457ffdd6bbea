"""End-to-end check of the test OIDC provider (tests/idp) and its Python harness."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.idp_harness import (
    OidcProviderProcess,
    approve_device_code,
    poll_device_token,
    start_device_authorization,
)

SCOPE = "openid profile email groups offline_access"


def _jwt_payload(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return json.loads(base64.urlsafe_b64decode(payload))


def _jwt_header(token: str) -> dict[str, Any]:
    header = token.split(".")[0]
    header += "=" * (-len(header) % 4)
    return json.loads(base64.urlsafe_b64decode(header))


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcProviderProcess]:
    with OidcProviderProcess(id_token_ttl=300, access_token_ttl=120) as proc:
        yield proc


def test_discovery(idp: OidcProviderProcess) -> None:
    assert idp.issuer.startswith("http://127.0.0.1:")
    assert idp.client_id == "hoopctl"
    meta = idp.metadata
    assert meta["issuer"] == idp.issuer
    assert meta["device_authorization_endpoint"] == f"{idp.issuer}/device/auth"
    assert "urn:ietf:params:oauth:grant-type:device_code" in meta["grant_types_supported"]
    assert "groups" in meta["scopes_supported"]
    assert meta["id_token_signing_alg_values_supported"] == ["RS256"]
    jwks = httpx.get(idp.jwks_uri, trust_env=False).json()
    assert [k["kty"] for k in jwks["keys"]] == ["RSA"]
    assert all("d" not in k for k in jwks["keys"])


def test_device_flow_approve_and_refresh(idp: OidcProviderProcess) -> None:
    da = start_device_authorization(idp, SCOPE)
    assert da["verification_uri"] == f"{idp.issuer}/device"
    assert da["expires_in"] == 600

    pending = poll_device_token(idp, da["device_code"])
    assert pending.status_code == 400
    assert pending.json()["error"] == "authorization_pending"

    approve_device_code(idp.issuer, da["user_code"], "alice", "alice-password")

    # The previous poll was just now; the provider answers slow_down when polled faster
    # than `interval`, so wait it out once.
    time.sleep(da.get("interval", 5))
    r = poll_device_token(idp, da["device_code"])
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert tokens["token_type"].lower() == "bearer"
    assert tokens["expires_in"] <= 120
    assert tokens["refresh_token"]
    assert set(tokens["scope"].split()) == set(SCOPE.split())

    id_token = tokens["id_token"]
    assert _jwt_header(id_token)["alg"] == "RS256"
    claims = _jwt_payload(id_token)
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == "hoopctl"
    assert claims["sub"] == "alice"
    assert claims["preferred_username"] == "alice"
    assert claims["email"] == "alice@example.test"
    assert claims["groups"] == ["engineers", "dba"]
    assert claims["exp"] - claims["iat"] == 300

    # userinfo accepts the access token
    me = httpx.get(
        idp.metadata["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        trust_env=False,
    )
    assert me.status_code == 200, me.text
    assert me.json()["groups"] == ["engineers", "dba"]

    # refresh_token grant gives a new id_token with the same claims
    rr = httpx.post(
        idp.token_endpoint,
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "hoopctl",
        },
        trust_env=False,
    )
    assert rr.status_code == 200, rr.text
    refreshed = rr.json()
    assert refreshed["id_token"] != id_token
    assert refreshed["refresh_token"] != tokens["refresh_token"]  # rotated (public client)
    rclaims = _jwt_payload(refreshed["id_token"])
    assert rclaims["sub"] == "alice"
    assert rclaims["preferred_username"] == "alice"
    assert rclaims["groups"] == ["engineers", "dba"]

    # The device code is single-use; replaying it is treated as a leak and the provider
    # revokes everything issued from that grant (the refreshed tokens included).
    again = poll_device_token(idp, da["device_code"])
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    rr2 = httpx.post(
        idp.token_endpoint,
        data={
            "grant_type": "refresh_token",
            "refresh_token": refreshed["refresh_token"],
            "client_id": "hoopctl",
        },
        trust_env=False,
    )
    assert rr2.status_code == 400
    assert rr2.json()["error"] == "invalid_grant"


def test_device_flow_deny(idp: OidcProviderProcess) -> None:
    da = start_device_authorization(idp, SCOPE)
    approve_device_code(idp.issuer, da["user_code"], "bob", "bob-password", deny=True)
    r = poll_device_token(idp, da["device_code"])
    assert r.status_code == 400
    assert r.json()["error"] == "access_denied"


def test_wrong_password_does_not_approve(idp: OidcProviderProcess) -> None:
    for user, password in (("alice", "not-her-password"), ("mallory", "alice-password")):
        da = start_device_authorization(idp, SCOPE)
        with pytest.raises(AssertionError, match=f"login as '{user}'"):
            approve_device_code(idp.issuer, da["user_code"], user, password)
        r = poll_device_token(idp, da["device_code"])
        assert r.status_code == 400
        assert r.json()["error"] == "authorization_pending"
        # Once the user pressed "Continue" on the confirm page the code is "in flight":
        # entering it again in a new browser session is refused by oidc-provider.
        with pytest.raises(AssertionError, match="confirm device"):
            approve_device_code(idp.issuer, da["user_code"], "alice", "alice-password")


def test_other_users_groups(idp: OidcProviderProcess) -> None:
    for user, groups in (("bob", ["approvers", "engineers"]), ("carol", ["contractors"])):
        da = start_device_authorization(idp, SCOPE)
        approve_device_code(idp.issuer, da["user_code"], user, f"{user}-password")
        r = poll_device_token(idp, da["device_code"])
        assert r.status_code == 200, r.text
        claims = _jwt_payload(r.json()["id_token"])
        assert claims["preferred_username"] == user
        assert claims["groups"] == groups


def test_unknown_user_code_is_rejected(idp: OidcProviderProcess) -> None:
    with pytest.raises(AssertionError, match="confirm device"):
        approve_device_code(idp.issuer, "BCDF-GHJK", "alice", "alice-password")


def test_short_device_code_ttl_expires() -> None:
    with OidcProviderProcess(device_code_ttl=2) as short:
        da = start_device_authorization(short, SCOPE)
        assert da["expires_in"] == 2
        time.sleep(3.2)
        r = poll_device_token(short, da["device_code"])
        assert r.status_code == 400
        assert r.json()["error"] == "expired_token"
        # and a human can no longer approve it
        with pytest.raises(AssertionError):
            approve_device_code(short.issuer, da["user_code"], "alice", "alice-password")


def test_short_id_token_ttl() -> None:
    with OidcProviderProcess(id_token_ttl=5, access_token_ttl=7) as short:
        da = start_device_authorization(short, SCOPE)
        approve_device_code(short.issuer, da["user_code"], "carol", "carol-password")
        r = poll_device_token(short, da["device_code"])
        assert r.status_code == 200, r.text
        tokens = r.json()
        claims = _jwt_payload(tokens["id_token"])
        assert claims["exp"] - claims["iat"] == 5
        assert tokens["expires_in"] <= 7


def test_startup_failure_reports_stderr() -> None:
    proc = OidcProviderProcess(startup_timeout=10)
    proc.device_code_ttl = "not-a-number"  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="invalid value for device-code-ttl"):
        proc.start()
    proc.stop()
