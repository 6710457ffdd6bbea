"""Tests for the development OIDC issuer, against a real server on loopback."""

from __future__ import annotations

import asyncio
import re
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from joserfc import jwt
from joserfc.jwk import KeySet

from broker.identity.dev_issuer import DEVICE_CODE_GRANT, USER_CODE_ALPHABET, DevIssuer, DevUser

USERS = {
    "alice": DevUser(name="alice", groups=("dba", "ops"), email="alice@example.test"),
    "bob": DevUser(name="bob", groups=()),
}

IssuerFactory = Callable[..., Awaitable[DevIssuer]]


@pytest_asyncio.fixture
async def make_issuer(tmp_path: Path) -> AsyncIterator[IssuerFactory]:
    started: list[DevIssuer] = []

    async def factory(**kwargs: Any) -> DevIssuer:
        kwargs.setdefault("key_path", tmp_path / "keys" / "dev-issuer.jwk")
        kwargs.setdefault("users", USERS)
        kwargs.setdefault("poll_interval", 0)
        issuer = DevIssuer(**kwargs)
        await issuer.start()
        started.append(issuer)
        return issuer

    yield factory
    for issuer in started:
        await issuer.stop()


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


async def device_code(
    client: httpx.AsyncClient, issuer: DevIssuer, client_id: str = "hoopctl"
) -> dict[str, Any]:
    resp = await client.post(
        f"{issuer.issuer}/device/code", data={"client_id": client_id, "scope": "openid groups"}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


async def poll(
    client: httpx.AsyncClient, issuer: DevIssuer, code: str, client_id: str = "hoopctl"
) -> httpx.Response:
    return await client.post(
        f"{issuer.issuer}/token",
        data={"grant_type": DEVICE_CODE_GRANT, "client_id": client_id, "device_code": code},
    )


async def verify(client: httpx.AsyncClient, issuer: DevIssuer, token: str) -> jwt.Token:
    jwks = (await client.get(f"{issuer.issuer}/jwks")).json()
    return jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256"])


@pytest.mark.asyncio
async def test_discovery(make_issuer: IssuerFactory, client: httpx.AsyncClient) -> None:
    issuer = await make_issuer()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", issuer.issuer)
    doc = (await client.get(f"{issuer.issuer}/.well-known/openid-configuration")).json()
    assert doc["issuer"] == issuer.issuer
    assert doc["jwks_uri"] == f"{issuer.issuer}/jwks"
    assert doc["device_authorization_endpoint"] == f"{issuer.issuer}/device/code"
    assert doc["token_endpoint"] == f"{issuer.issuer}/token"
    assert set(doc["grant_types_supported"]) == {DEVICE_CODE_GRANT, "refresh_token"}
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["response_types_supported"] == ["id_token"]
    assert doc["subject_types_supported"] == ["public"]
    assert "openid" in doc["scopes_supported"]
    assert {"sub", "groups", "preferred_username", "email"} <= set(doc["claims_supported"])


@pytest.mark.asyncio
async def test_jwks_is_public_only(make_issuer: IssuerFactory, client: httpx.AsyncClient) -> None:
    issuer = await make_issuer()
    keys = (await client.get(f"{issuer.issuer}/jwks")).json()["keys"]
    assert len(keys) == 1
    key = keys[0]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi", "oth"} & set(key)
    assert KeySet.import_key_set({"keys": keys}).keys[0].thumbprint() == key["kid"]


@pytest.mark.asyncio
async def test_device_code_response(make_issuer: IssuerFactory, client: httpx.AsyncClient) -> None:
    issuer = await make_issuer(poll_interval=3, device_code_ttl=120)
    body = await device_code(client, issuer)
    assert re.fullmatch(
        rf"[{USER_CODE_ALPHABET}]{{4}}-[{USER_CODE_ALPHABET}]{{4}}", body["user_code"]
    )
    assert len(body["device_code"]) >= 43
    assert body["verification_uri"] == f"{issuer.issuer}/device"
    assert body["verification_uri_complete"] == (
        f"{issuer.issuer}/device?user_code={body['user_code']}"
    )
    assert body["expires_in"] == 120
    assert body["interval"] == 3


@pytest.mark.asyncio
async def test_device_flow_programmatic_approval(
    make_issuer: IssuerFactory, client: httpx.AsyncClient
) -> None:
    issuer = await make_issuer()
    body = await device_code(client, issuer)
    resp = await poll(client, issuer, body["device_code"])
    assert resp.status_code == 400
    assert resp.json()["error"] == "authorization_pending"

    with pytest.raises(ValueError):
        issuer.approve(body["user_code"], "mallory")
    with pytest.raises(KeyError):
        issuer.approve("BBBB-BBBB", "alice")
    # User codes are matched case- and dash-insensitively, as people type them.
    issuer.approve(body["user_code"].lower().replace("-", ""), "alice")
    with pytest.raises(ValueError):
        issuer.approve(body["user_code"], "bob")

    resp = await poll(client, issuer, body["device_code"])
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    tokens = resp.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600
    assert tokens["scope"] == "openid groups"
    assert tokens["refresh_token"]

    token = await verify(client, issuer, tokens["id_token"])
    assert token.header["alg"] == "RS256"
    assert (
        token.header["kid"] == (await client.get(f"{issuer.issuer}/jwks")).json()["keys"][0]["kid"]
    )
    claims = token.claims
    now = int(time.time())
    assert claims["iss"] == issuer.issuer
    assert claims["sub"] == "alice"
    assert claims["aud"] == "hoopctl"
    assert claims["preferred_username"] == "alice"
    assert claims["email"] == "alice@example.test"
    assert claims["groups"] == ["dba", "ops"]
    assert claims["exp"] == claims["iat"] + 3600
    assert abs(claims["iat"] - now) <= 5 and claims["nbf"] == claims["iat"]
    assert abs(claims["auth_time"] - now) <= 5
    assert claims["jti"]
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer.issuer},
        aud={"essential": True, "value": "hoopctl"},
    ).validate(claims)

    access = await verify(client, issuer, tokens["access_token"])
    assert access.claims["sub"] == "alice"
    assert access.claims["jti"] != claims["jti"]

    # Single use: the device code is gone once redeemed.
    resp = await poll(client, issuer, body["device_code"])
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


@pytest.mark.asyncio
async def test_device_flow_html_form_approval(
    make_issuer: IssuerFactory, client: httpx.AsyncClient
) -> None:
    issuer = await make_issuer()
    body = await device_code(client, issuer)

    page = await client.get(body["verification_uri_complete"])
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "hoop-broker development issuer \u2014 INSECURE, for demos and tests only" in page.text
    assert f"value='{body['user_code']}'" in page.text
    assert "type='password'" not in page.text and 'type="password"' not in page.text
    assert ">bob<" in page.text

    resp = await client.post(
        f"{issuer.issuer}/device",
        data={"user_code": body["user_code"], "username": "bob", "action": "approve"},
    )
    assert resp.status_code == 200
    assert "Approved as bob" in resp.text

    resp = await poll(client, issuer, body["device_code"])
    assert resp.status_code == 200, resp.text
    claims = (await verify(client, issuer, resp.json()["id_token"])).claims
    assert claims["sub"] == "bob"
    assert claims["groups"] == []
    assert claims["email"] == "bob@dev.invalid"


@pytest.mark.asyncio
async def test_denied_via_form(make_issuer: IssuerFactory, client: httpx.AsyncClient) -> None:
    issuer = await make_issuer()
    body = await device_code(client, issuer)
    resp = await client.post(
        f"{issuer.issuer}/device",
        data={"user_code": body["user_code"], "username": "alice", "action": "deny"},
    )
    assert resp.status_code == 200
    assert "denied" in resp.text
    for _ in range(2):
        resp = await poll(client, issuer, body["device_code"])
        assert resp.status_code == 400
        assert resp.json()["error"] == "access_denied"
    with pytest.raises(ValueError):
        issuer.approve(body["user_code"], "alice")


@pytest.mark.asyncio
async def test_slow_down(make_issuer: IssuerFactory, client: httpx.AsyncClient) -> None:
    issuer = await make_issuer(poll_interval=1)
    body = await device_code(client, issuer)
    assert body["interval"] == 1
    assert (await poll(client, issuer, body["device_code"])).json()["error"] == (
        "authorization_pending"
    )
    resp = await poll(client, issuer, body["device_code"])
    assert resp.status_code == 400
    assert resp.json()["error"] == "slow_down"
    # The interval grew by 5 s, so waiting the original interval is still too fast.
    await asyncio.sleep(1.1)
    assert (await poll(client, issuer, body["device_code"])).json()["error"] == "slow_down"
    # An approved code is handed out regardless of the polling pace.
    issuer.approve(body["user_code"], "alice")
    assert (await poll(client, issuer, body["device_code"])).status_code == 200


@pytest.mark.asyncio
async def test_expired_device_code(make_issuer: IssuerFactory, client: httpx.AsyncClient) -> None:
    issuer = await make_issuer(device_code_ttl=1)
    body = await device_code(client, issuer)
    await asyncio.sleep(1.2)
    resp = await poll(client, issuer, body["device_code"])
    assert resp.status_code == 400
    assert resp.json()["error"] == "expired_token"
    with pytest.raises(KeyError):
        issuer.approve(body["user_code"], "alice")
    resp = await client.post(
        f"{issuer.issuer}/device",
        data={"user_code": body["user_code"], "username": "alice", "action": "approve"},
    )
    assert resp.status_code == 400
    assert "unknown or expired" in resp.text


@pytest.mark.asyncio
async def test_unknown_device_code(make_issuer: IssuerFactory, client: httpx.AsyncClient) -> None:
    issuer = await make_issuer()
    resp = await poll(client, issuer, "not-a-real-code")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


@pytest.mark.asyncio
async def test_refresh_rotates(make_issuer: IssuerFactory, client: httpx.AsyncClient) -> None:
    issuer = await make_issuer(auto_approve="alice")
    body = await device_code(client, issuer)
    first = (await poll(client, issuer, body["device_code"])).json()

    async def refresh(token: str, client_id: str = "hoopctl") -> httpx.Response:
        return await client.post(
            f"{issuer.issuer}/token",
            data={"grant_type": "refresh_token", "client_id": client_id, "refresh_token": token},
        )

    resp = await refresh(first["refresh_token"])
    assert resp.status_code == 200, resp.text
    second = resp.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["scope"] == "openid groups"
    claims = (await verify(client, issuer, second["id_token"])).claims
    first_claims = (await verify(client, issuer, first["id_token"])).claims
    assert claims["sub"] == "alice"
    assert claims["groups"] == ["dba", "ops"]
    assert claims["auth_time"] == first_claims["auth_time"]
    assert claims["jti"] != first_claims["jti"]

    resp = await refresh(first["refresh_token"])
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"
    resp = await refresh("garbage")
    assert resp.json()["error"] == "invalid_grant"
    resp = await refresh(second["refresh_token"], client_id="other")
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    assert (await refresh(second["refresh_token"])).status_code == 200


@pytest.mark.asyncio
async def test_expired_refresh_token(make_issuer: IssuerFactory, client: httpx.AsyncClient) -> None:
    issuer = await make_issuer(auto_approve="bob", refresh_token_ttl=1)
    body = await device_code(client, issuer)
    tokens = (await poll(client, issuer, body["device_code"])).json()
    await asyncio.sleep(1.2)
    resp = await client.post(
        f"{issuer.issuer}/token",
        data={
            "grant_type": "refresh_token",
            "client_id": "hoopctl",
            "refresh_token": tokens["refresh_token"],
        },
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


@pytest.mark.asyncio
async def test_auto_approve(make_issuer: IssuerFactory, client: httpx.AsyncClient) -> None:
    issuer = await make_issuer(auto_approve="bob", poll_interval=5)
    body = await device_code(client, issuer)
    resp = await poll(client, issuer, body["device_code"])
    assert resp.status_code == 200, resp.text
    assert (await verify(client, issuer, resp.json()["id_token"])).claims["sub"] == "bob"


def test_auto_approve_must_name_a_user(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DevIssuer(key_path=tmp_path / "k.jwk", users=USERS, auto_approve="nobody")
    with pytest.raises(ValueError):
        DevIssuer(key_path=tmp_path / "k.jwk", users={"carol": DevUser("alice", ())})


@pytest.mark.asyncio
async def test_key_persisted(tmp_path: Path, client: httpx.AsyncClient) -> None:
    key_path = tmp_path / "state" / "dev-issuer.jwk"
    first = DevIssuer(key_path=key_path, users=USERS)
    await first.start()
    try:
        kid1 = (await client.get(f"{first.issuer}/jwks")).json()["keys"][0]["kid"]
    finally:
        await first.stop()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700

    second = DevIssuer(key_path=key_path, users=USERS)
    await second.start()
    try:
        kid2 = (await client.get(f"{second.issuer}/jwks")).json()["keys"][0]["kid"]
    finally:
        await second.stop()
    assert kid1 == kid2


@pytest.mark.asyncio
async def test_unknown_client(make_issuer: IssuerFactory, client: httpx.AsyncClient) -> None:
    issuer = await make_issuer()
    resp = await client.post(f"{issuer.issuer}/device/code", data={"client_id": "evil"})
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    resp = await client.post(f"{issuer.issuer}/device/code", data={})
    assert resp.status_code == 401

    body = await device_code(client, issuer)
    resp = await poll(client, issuer, body["device_code"], client_id="evil")
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


@pytest.mark.asyncio
async def test_unsupported_grant_type(
    make_issuer: IssuerFactory, client: httpx.AsyncClient
) -> None:
    issuer = await make_issuer()
    resp = await client.post(
        f"{issuer.issuer}/token", data={"grant_type": "password", "client_id": "hoopctl"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "unsupported_grant_type"


@pytest.mark.asyncio
async def test_verification_page_escapes(
    make_issuer: IssuerFactory, client: httpx.AsyncClient
) -> None:
    issuer = await make_issuer()
    evil = "<script>alert(1)</script>'\""
    page = await client.get(f"{issuer.issuer}/device", params={"user_code": evil})
    assert page.status_code == 200
    assert "<script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#x27;&quot;" in page.text

    resp = await client.post(
        f"{issuer.issuer}/device",
        data={"user_code": evil, "username": "<b>x</b>", "action": "approve"},
    )
    assert resp.status_code == 400
    assert "<script>" not in resp.text and "<b>x</b>" not in resp.text
    assert "&lt;script&gt;" in resp.text


@pytest.mark.asyncio
async def test_login_hint_signs_in_that_user_at_once(
    make_issuer: IssuerFactory, client: httpx.AsyncClient
) -> None:
    issuer = await make_issuer(auto_approve="alice")
    resp = await client.post(
        f"{issuer.issuer}/device/code",
        data={"client_id": "hoopctl", "scope": "openid", "login_hint": "bob"},
    )
    assert resp.status_code == 200, resp.text
    tokens = await poll(client, issuer, resp.json()["device_code"])
    assert (await verify(client, issuer, tokens.json()["id_token"])).claims["sub"] == "bob"

    unknown = await client.post(
        f"{issuer.issuer}/device/code",
        data={"client_id": "hoopctl", "scope": "openid", "login_hint": "mallory"},
    )
    assert unknown.status_code == 400
    assert (
        unknown.json()["error_description"] == "no dev user named 'mallory' (dev users: alice, bob)"
    )


@pytest.mark.asyncio
async def test_refresh_tokens_outlive_the_issuer_as_digests_only(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    saved = tmp_path / "state" / "refresh.json"

    async def started() -> DevIssuer:
        issuer = DevIssuer(
            key_path=tmp_path / "state" / "key.jwk",
            users=USERS,
            auto_approve="alice",
            poll_interval=0,
            refresh_path=saved,
        )
        await issuer.start()
        return issuer

    async def refresh(issuer: DevIssuer, token: str) -> httpx.Response:
        return await client.post(
            f"{issuer.issuer}/token",
            data={"grant_type": "refresh_token", "client_id": "hoopctl", "refresh_token": token},
        )

    first = await started()
    try:
        body = await device_code(client, first)
        token = (await poll(client, first, body["device_code"])).json()["refresh_token"]
    finally:
        await first.stop()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert token not in saved.read_text()

    second = await started()
    try:
        resp = await refresh(second, token)
        assert resp.status_code == 200, resp.text
        assert (await refresh(second, token)).json()["error"] == "invalid_grant"  # spent
        rotated = resp.json()["refresh_token"]
    finally:
        await second.stop()

    # A damaged file is ignored: the issuer starts, and old tokens are simply unknown.
    saved.write_text("{not json")
    third = await started()
    try:
        assert (await refresh(third, rotated)).json()["error"] == "invalid_grant"
    finally:
        await third.stop()
