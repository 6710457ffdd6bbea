"""Getting an authenticated broker connection: load the login, renew the certificate if needed."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import asyncssh

from hoopctl.address import BrokerAddress
from hoopctl.credentials import CredentialStore, Profile
from hoopctl.errors import ApiCallError, LoginError, NotLoggedIn
from hoopctl.ssh_config import refresh_exported_certificate
from hoopctl.transport import ApiClient, FirstUseDecision, open_connection

if TYPE_CHECKING:
    from hoopctl.oidc import TokenSet

# Renew a little before expiry so a command never starts with a certificate about to lapse.
RENEW_MARGIN = 120


async def exchange(
    address: BrokerAddress,
    id_token: str,
    key: asyncssh.SSHKey,
    *,
    first_use: FirstUseDecision | None = None,
) -> dict[str, Any]:
    """Trade an ID token for a certificate on KEY over an anonymous hoop-api connection."""
    conn = await open_connection(address, first_use=first_use)
    async with ApiClient(conn) as api:
        try:
            return await api.call(
                "auth.exchange",
                {"id_token": id_token, "public_key": key.export_public_key().decode()},
            )
        except ApiCallError as exc:
            raise LoginError(f"the broker refused the login: {exc}") from None


def profile_from(
    address: BrokerAddress,
    result: dict[str, Any],
    *,
    issuer: str,
    client_id: str,
    token_endpoint: str | None,
) -> Profile:
    return Profile(
        broker=str(address),
        user=result["user"],
        groups=list(result["groups"]),
        certificate=result["certificate"],
        valid_before=int(result["valid_before"]),
        issuer=issuer,
        client_id=client_id,
        token_endpoint=token_endpoint,
    )


async def renew(store: CredentialStore, profile: Profile) -> Profile:
    refresh_token = store.refresh_token()
    if not refresh_token or not profile.token_endpoint:
        raise NotLoggedIn(
            f"your certificate for {store.address} has expired: "
            f"run hoopctl login --broker {store.address}"
        )
    # Only a renewal talks to the identity provider: the OIDC client (authlib, httpx) is
    # loaded here, not by every command that connects with a valid certificate.
    from hoopctl.oidc import IdpUnreachable, LoginExpired, refresh

    login = f"hoopctl login --broker {store.address}"
    try:
        tokens: TokenSet = refresh(profile.token_endpoint, profile.client_id, refresh_token)
    except LoginExpired as exc:
        raise LoginError(f"{exc}: run {login}") from None
    except IdpUnreachable as exc:
        raise LoginError(
            f"your certificate for {store.address} has expired and cannot be renewed: {exc}; "
            f"check the network (VPN) and run the command again, or run {login} once the "
            "identity provider is back"
        ) from None
    key = store.private_key()
    result = await exchange(store.address, tokens.id_token, key)
    if result["user"] != profile.user:
        raise LoginError(
            f"renewal returned user {result['user']!r}, not {profile.user!r}: "
            f"run hoopctl login --broker {store.address}"
        )
    renewed = profile_from(
        store.address,
        result,
        issuer=profile.issuer,
        client_id=profile.client_id,
        token_endpoint=profile.token_endpoint,
    )
    if tokens.refresh_token and tokens.refresh_token != refresh_token:
        store.set_refresh_token(tokens.refresh_token)
    store.update_profile(renewed)
    refresh_exported_certificate(store.address, renewed)
    return renewed


async def current_profile(store: CredentialStore, *, renew_if_needed: bool = True) -> Profile:
    profile = store.profile()
    if renew_if_needed and profile.valid_before - time.time() < RENEW_MARGIN:
        profile = await renew(store, profile)
    return profile


async def connect_api(address: BrokerAddress) -> tuple[ApiClient, Profile]:
    store = CredentialStore(address)
    profile = await current_profile(store)
    key = store.private_key()
    conn = await open_connection(
        address, username=profile.user, client_keys=[(key, profile.cert())]
    )
    return ApiClient(conn), profile
