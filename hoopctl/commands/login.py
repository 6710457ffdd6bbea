"""`hoopctl login`: OIDC device flow (or a token on stdin, or an agent's client credentials),
then a short-lived certificate."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hoopctl.address import BrokerAddress, save_default
from hoopctl.cli_common import (
    BrokerOption,
    _address,
    _run,
    app,
)
from hoopctl.errors import HostKeyError, LoginError, UsageError
from hoopctl.output import certificate_expiry, stderr

# What talks to the broker (asyncssh, authlib, keyring) is imported by the commands that use
# it, so that start-up, --help and shell completion stay fast.
if TYPE_CHECKING:
    import asyncssh

    from hoopctl.transport import FirstUseDecision


def _first_use(accept: str | None) -> FirstUseDecision:
    from rich.prompt import Confirm

    from hoopctl.hostkeys import fingerprint

    def decide(key: asyncssh.SSHKey) -> bool:
        offered = fingerprint(key)
        stderr.print(f"The broker's host key fingerprint is {offered}.")
        if accept is not None:
            if accept != offered:
                raise HostKeyError(f"broker offered host key {offered}, not the expected {accept}")
            return True
        if sys.stdin.isatty():
            return Confirm.ask("Trust this broker and pin its key?", default=False, console=stderr)
        raise HostKeyError(
            f"broker host key {offered} is not pinned yet; check it with the broker's operator "
            f"and run again with --accept-host-key {offered}"
        )

    return decide


def _can_open_browser() -> bool:
    if not sys.stdout.isatty():
        return False
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


@app.command()
def login(
    broker: BrokerOption = None,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Do not try to open a web browser.")
    ] = False,
    accept_host_key: Annotated[
        str | None,
        typer.Option(
            "--accept-host-key",
            metavar="SHA256:…",
            help="Pin the broker's host key without asking if it has this fingerprint.",
        ),
    ] = None,
    forget_host_key: Annotated[
        bool,
        typer.Option(
            "--forget-host-key", help="Drop the pinned host key first (after a rotation)."
        ),
    ] = False,
    token_stdin: Annotated[
        bool,
        typer.Option(
            "--token-stdin",
            help="Read an ID token from stdin instead of the device flow (CI, agents).",
        ),
    ] = False,
    client_credentials: Annotated[
        bool,
        typer.Option(
            "--client-credentials",
            help="Log in as a client of your own (an agent, a service): the OAuth 2.0 client "
            "credentials grant. Client id: --client-id or HOOP_CLIENT_ID; secret: "
            "HOOP_CLIENT_SECRET or --client-secret-stdin (never on the command line).",
        ),
    ] = False,
    client_id: Annotated[
        str | None,
        typer.Option(
            "--client-id", envvar="HOOP_CLIENT_ID", help="The client id (--client-credentials)."
        ),
    ] = None,
    client_secret_stdin: Annotated[
        bool,
        typer.Option(
            "--client-secret-stdin",
            help="Read the client secret from stdin (--client-credentials).",
        ),
    ] = False,
    dev_user: Annotated[
        str | None,
        typer.Option(
            "--dev-user",
            metavar="NAME",
            help="Log in at once as this user of the broker's dev.users; only against a "
            "broker's built-in dev issuer (hoop-broker serve --dev).",
        ),
    ] = None,
) -> None:
    """Log in with your identity provider and get a short-lived certificate from the broker."""

    import asyncio
    import webbrowser

    import asyncssh

    from hoopctl.credentials import CredentialStore, announce_backend
    from hoopctl.hostkeys import forget
    from hoopctl.oidc import (
        client_credentials_token,
        discover,
        poll_for_tokens,
        start_device_authorization,
    )
    from hoopctl.session import exchange, profile_from
    from hoopctl.transport import ApiClient, open_connection

    async def login_settings(address: BrokerAddress) -> dict[str, Any]:
        conn = await open_connection(address, first_use=_first_use(accept_host_key))
        async with ApiClient(conn) as api:
            return dict(await api.call("auth.config"))

    def client_secret() -> str:
        if client_secret_stdin and sys.stdin.isatty():
            import getpass

            secret = getpass.getpass("Client secret: ", stream=sys.stderr).strip()
        elif client_secret_stdin:
            secret = sys.stdin.readline().strip()
        else:
            secret = os.environ.get("HOOP_CLIENT_SECRET", "").strip()
        if not secret:
            raise UsageError(
                "--client-credentials needs the client secret: set HOOP_CLIENT_SECRET or pipe "
                "it to --client-secret-stdin"
            )
        return secret

    # Synchronous on purpose: the device-flow wait must stop at the first Ctrl-C, which an
    # event loop would only deliver at its next await.
    def work() -> None:
        chosen = [token_stdin, dev_user is not None, client_credentials]
        if sum(chosen) > 1:
            raise UsageError(
                "--dev-user, --token-stdin and --client-credentials exclude each other"
            )
        if client_secret_stdin and not client_credentials:
            raise UsageError("--client-secret-stdin goes with --client-credentials")
        if client_credentials and not (client_id or "").strip():
            raise UsageError(
                "--client-credentials needs the client id: --client-id ID or HOOP_CLIENT_ID"
            )
        if dev_user is not None and not dev_user.strip():
            raise UsageError("--dev-user needs a user name (one of the broker's [dev.users])")
        secret = client_secret() if client_credentials else ""
        address = _address(broker)
        store = CredentialStore(address)
        store.check_usable()
        if forget_host_key:
            forget(address)
        config = asyncio.run(login_settings(address))
        if config.get("dev"):
            stderr.print("[yellow]warning:[/] this broker runs a DEV identity provider (insecure)")
        elif dev_user is not None:
            raise UsageError(
                f"--dev-user works only with a broker's built-in dev issuer "
                f"(hoop-broker serve --dev); {address} logs in with {config['issuer']}"
            )
        token_endpoint = None
        if client_credentials:
            id_token = client_credentials_token(config["issuer"], (client_id or "").strip(), secret)
            refresh_token = None
        elif token_stdin:
            id_token = sys.stdin.read().strip()
            if not id_token:
                raise UsageError("--token-stdin: no token on stdin")
            refresh_token = None
        else:
            endpoints = discover(config["issuer"])
            token_endpoint = endpoints.token
            authorization = start_device_authorization(
                endpoints,
                config["client_id"],
                list(config["scopes"]),
                login_hint=dev_user.strip() if dev_user else None,
            )
            url = authorization.verification_uri_complete or authorization.verification_uri
            if dev_user:
                stderr.print(f"Logging in as {dev_user.strip()} with the dev issuer", markup=False)
            else:
                stderr.print(
                    f"To log in, open [bold]{authorization.verification_uri}[/] "
                    f"and enter the code [bold]{authorization.user_code}[/]",
                )
                if authorization.verification_uri_complete:
                    stderr.print(f"or open {authorization.verification_uri_complete}", markup=False)
                if not no_browser and _can_open_browser():
                    webbrowser.open(url)
            with stderr.status("Waiting for you to approve the login…"):
                tokens = poll_for_tokens(endpoints, config["client_id"], authorization)
            id_token, refresh_token = tokens.id_token, tokens.refresh_token
        key = asyncssh.generate_private_key("ssh-ed25519", comment=f"hoopctl {address}")
        result = asyncio.run(exchange(address, id_token, key))
        if dev_user and result["user"] != dev_user.strip():
            raise LoginError(
                f"the dev issuer logged you in as {result['user']}, not {dev_user.strip()} "
                "(is the broker older than --dev-user?)"
            )
        profile = profile_from(
            address,
            result,
            issuer=config["issuer"],
            client_id=config["client_id"],
            token_endpoint=token_endpoint,
        )
        announce_backend()
        store.save(profile, key, refresh_token)
        save_default(address)
        groups = ", ".join(profile.groups) or "none"
        stderr.print(
            f"Logged in to {address} as [bold]{profile.user}[/] (groups: {groups}); "
            f"certificate valid until {certificate_expiry(profile.valid_before)}"
        )

    _run(work)
