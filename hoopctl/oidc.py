"""The OAuth 2.0 device authorization grant (RFC 8628) and refresh, against the broker's IdP."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client

from hoopctl.errors import LoginError

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
HTTP_TIMEOUT = 15.0


@dataclass(frozen=True)
class TokenSet:
    id_token: str
    refresh_token: str | None


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    interval: int


@dataclass(frozen=True)
class Endpoints:
    device_authorization: str
    token: str


def _require_secure(url: str, what: str) -> None:
    """Plain http is only acceptable to a loopback address (dev issuers, tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "http" or not loopback:
        raise LoginError(f"{what} {url} must use https")


def _discovery(issuer: str) -> dict[str, Any]:
    _require_secure(issuer, "issuer")
    url = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=HTTP_TIMEOUT)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise LoginError(f"cannot reach the identity provider at {url}: {exc}") from None
    if not isinstance(document, dict) or document.get("issuer", "").rstrip("/") != issuer.rstrip(
        "/"
    ):
        raise LoginError(f"identity provider at {url} names a different issuer")
    return document


def discover(issuer: str) -> Endpoints:
    document = _discovery(issuer)
    device = document.get("device_authorization_endpoint")
    token = document.get("token_endpoint")
    if not isinstance(device, str) or not isinstance(token, str):
        raise LoginError("the identity provider does not offer the device authorization grant")
    _require_secure(device, "device authorization endpoint")
    _require_secure(token, "token endpoint")
    return Endpoints(device_authorization=device, token=token)


def client_credentials_token(
    issuer: str, client_id: str, client_secret: str, scopes: list[str] | None = None
) -> str:
    """An access token (a JWT the broker validates) for a client of its own: the OAuth 2.0
    client credentials grant, with the client authenticating at the token endpoint."""
    token_endpoint = _discovery(issuer).get("token_endpoint")
    if not isinstance(token_endpoint, str):
        raise LoginError("the identity provider publishes no token endpoint")
    _require_secure(token_endpoint, "token endpoint")
    try:
        with OAuth2Client(
            client_id=client_id,
            client_secret=client_secret,
            token_endpoint_auth_method="client_secret_basic",  # noqa: S106 (a method's name)
            scope=" ".join(scopes) if scopes else None,
            timeout=HTTP_TIMEOUT,
        ) as client:
            token = client.fetch_token(token_endpoint, grant_type="client_credentials")
    except OAuthError as exc:
        # The provider's own words (invalid_client, unauthorized_client …); never the secret.
        raise LoginError(f"the identity provider refused client {client_id}: {exc.error}") from None
    except (httpx.HTTPError, ValueError) as exc:
        host = urlsplit(token_endpoint).netloc or token_endpoint
        raise LoginError(f"the identity provider {host} cannot be reached ({exc})") from None
    access = dict(token).get("access_token")
    if not isinstance(access, str) or access.count(".") != 2:
        raise LoginError(
            "the identity provider returned no JWT access token for this client (the broker "
            "validates a signed JWT: configure the client's tokens as JWTs for the broker's "
            "audience)"
        )
    return access


def _client(client_id: str) -> OAuth2Client:
    return OAuth2Client(
        client_id=client_id,
        token_endpoint_auth_method="none",  # noqa: S106 (a public client has no secret)
        timeout=HTTP_TIMEOUT,
    )


def start_device_authorization(
    endpoints: Endpoints, client_id: str, scopes: list[str], *, login_hint: str | None = None
) -> DeviceAuthorization:
    data = {"client_id": client_id, "scope": " ".join(scopes)}
    if login_hint:
        data["login_hint"] = login_hint
    try:
        response = httpx.post(endpoints.device_authorization, data=data, timeout=HTTP_TIMEOUT)
        body: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise LoginError(f"device authorization request failed: {exc}") from None
    if response.status_code != 200 or "device_code" not in body:
        error = body.get("error_description") or body.get("error") or f"HTTP {response.status_code}"
        raise LoginError(f"the identity provider refused the device authorization: {error}")
    return DeviceAuthorization(
        device_code=body["device_code"],
        user_code=body["user_code"],
        verification_uri=body.get("verification_uri") or body.get("verification_url", ""),
        verification_uri_complete=body.get("verification_uri_complete"),
        expires_in=int(body.get("expires_in", 600)),
        interval=int(body.get("interval", 5)),
    )


def _token_set(token: dict[str, Any]) -> TokenSet:
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise LoginError("the identity provider returned no ID token (is 'openid' in the scopes?)")
    refresh = token.get("refresh_token")
    return TokenSet(id_token=id_token, refresh_token=refresh if isinstance(refresh, str) else None)


def poll_for_tokens(
    endpoints: Endpoints,
    client_id: str,
    authorization: DeviceAuthorization,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> TokenSet:
    """Poll the token endpoint as RFC 8628 section 3.5 says: honour interval and slow_down."""
    deadline = clock() + authorization.expires_in
    interval = max(authorization.interval, 1)
    with _client(client_id) as client:
        while True:
            sleep(interval)
            if clock() >= deadline:
                raise LoginError(
                    "the login code expired before it was approved: run hoopctl login again"
                )
            try:
                token = client.fetch_token(
                    endpoints.token, grant_type=DEVICE_GRANT, device_code=authorization.device_code
                )
                return _token_set(dict(token))
            except OAuthError as exc:
                if exc.error == "authorization_pending":
                    continue
                if exc.error == "slow_down":
                    interval += 5
                    continue
                if exc.error == "access_denied":
                    raise LoginError("login was denied at the identity provider") from None
                if exc.error == "expired_token":
                    raise LoginError(
                        "the login code expired before it was approved: run hoopctl login again"
                    ) from None
                raise LoginError(
                    f"login failed: {exc.error}: {exc.description or ''}".rstrip(": ")
                ) from None
            except (httpx.HTTPError, ValueError) as exc:
                raise LoginError(f"cannot reach the token endpoint: {exc}") from None


class LoginExpired(LoginError):
    """The identity provider refused the refresh token: a new login is needed."""


class IdpUnreachable(LoginError):
    """The identity provider did not answer the refresh."""


def refresh(endpoint: str, client_id: str, refresh_token: str) -> TokenSet:
    try:
        with _client(client_id) as client:
            token = client.refresh_token(endpoint, refresh_token=refresh_token)
    except OAuthError as exc:
        raise LoginExpired(f"your login has expired ({exc.error})") from None
    except (httpx.HTTPError, ValueError) as exc:
        host = urlsplit(endpoint).netloc or endpoint
        raise IdpUnreachable(f"the identity provider {host} cannot be reached ({exc})") from None
    tokens = _token_set(dict(token))
    # Providers that do not rotate refresh tokens return none; keep the one we have.
    return TokenSet(tokens.id_token, tokens.refresh_token or refresh_token)
