"""`hoopctl`: the command line for engineers, approvers and incident responders.

Login, targets and sessions live here; approvals and audit commands in their own modules,
which add themselves to the same Typer app (see the imports at the end).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from broker.durations import format_duration
from hoopctl.address import BrokerAddress, save_default
from hoopctl.approvals_cli import exec_words
from hoopctl.cli_common import (
    EXIT_CLOSED_PIPE,
    BrokerOption,
    OutputOption,
    _address,
    _run,
    app,
    closed_stdout,
    complete_request,
    complete_target,
    remember_listed,
)
from hoopctl.errors import HostKeyError, LoginError, UsageError
from hoopctl.output import OutputFormat, render, render_record, stderr

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


def _expiry(valid_before: int) -> str:
    when = datetime.fromtimestamp(valid_before, tz=UTC).astimezone()
    left = valid_before - time.time()
    status = f"in {format_duration(left)}" if left > 0 else "EXPIRED"
    return f"{when:%Y-%m-%d %H:%M:%S %Z} ({status})"


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
    from hoopctl.oidc import discover, poll_for_tokens, start_device_authorization
    from hoopctl.session import exchange, profile_from
    from hoopctl.transport import ApiClient, open_connection

    async def login_settings(address: BrokerAddress) -> dict[str, Any]:
        conn = await open_connection(address, first_use=_first_use(accept_host_key))
        async with ApiClient(conn) as api:
            return dict(await api.call("auth.config"))

    # Synchronous on purpose: the device-flow wait must stop at the first Ctrl-C, which an
    # event loop would only deliver at its next await.
    def work() -> None:
        if dev_user is not None and token_stdin:
            raise UsageError("--dev-user and --token-stdin exclude each other")
        if dev_user is not None and not dev_user.strip():
            raise UsageError("--dev-user needs a user name (one of the broker's [dev.users])")
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
        if token_stdin:
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
            f"certificate valid until {_expiry(profile.valid_before)}"
        )

    _run(work)


@app.command()
def logout(
    broker: BrokerOption = None,
    forget_host_key: Annotated[
        bool, typer.Option("--forget-host-key", help="Also drop the pinned broker host key.")
    ] = False,
) -> None:
    """Remove the certificate, key and refresh token for a broker."""

    from hoopctl.credentials import CredentialStore
    from hoopctl.hostkeys import forget

    def work() -> None:
        address = _address(broker)
        existed = CredentialStore(address).clear()
        if forget_host_key:
            forget(address)
        stderr.print(f"Logged out of {address}" if existed else f"Not logged in to {address}")

    _run(work)


@app.command()
def whoami(broker: BrokerOption = None, output: OutputOption = OutputFormat.table) -> None:
    """Show who you are on the broker: user, groups, certificate expiry."""

    from hoopctl.session import connect_api

    async def work() -> None:
        address = _address(broker)
        api, profile = await connect_api(address)
        async with api:
            me = await api.call("whoami")
        record = {
            "user": me["user"],
            "groups": me["groups"],
            "broker": str(address),
            "certificate_expires": datetime.fromtimestamp(profile.valid_before, tz=UTC).isoformat(),
            "certificate_expires_in": int(profile.valid_before - time.time()),
        }
        if output is OutputFormat.table:
            record["certificate_expires"] = _expiry(profile.valid_before)
        render_record(
            record,
            [
                ("user", "User"),
                ("groups", "Groups"),
                ("broker", "Broker"),
                ("certificate_expires", "Certificate expires"),
            ],
            output,
        )

    _run(work)


@app.command()
def targets(broker: BrokerOption = None, output: OutputOption = OutputFormat.table) -> None:
    """List the targets you may reach, with their type and policy."""

    from hoopctl.session import connect_api

    async def work() -> None:
        api, _ = await connect_api(_address(broker))
        async with api:
            rows = await api.call("targets.list")
        remember_listed(broker, "targets", [row.get("name") for row in rows], replace=True)
        render(
            rows,
            [
                ("name", "Name"),
                ("type", "Type"),
                ("description", "Description"),
                ("policy", "Policy"),
            ],
            output,
            empty="no targets are open to your groups",
        )

    _run(work)


@app.command()
def connect(
    target: Annotated[
        str,
        typer.Argument(help="Target name (see hoopctl targets).", autocompletion=complete_target),
    ],
    command: Annotated[
        list[str] | None,
        typer.Argument(help="Run this command (after --) instead of a shell.", show_default=False),
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why you connect; recorded with the session.")
    ] = None,
    broker: BrokerOption = None,
) -> None:
    """Open an interactive, recorded session on a target; its exit status becomes hoopctl's."""

    from hoopctl.credentials import CredentialStore
    from hoopctl.session import current_profile
    from hoopctl.terminal import run_session
    from hoopctl.transport import open_connection

    async def work() -> int:
        address = _address(broker)
        store = CredentialStore(address)
        profile = await current_profile(store)
        conn = await open_connection(
            address, username=profile.user, client_keys=[(store.private_key(), profile.cert())]
        )
        words = ["connect"]
        if reason:
            words += ["--reason", reason]
        words.append(target)
        if command:
            words += ["--", *command]
        try:
            return await run_session(conn, shlex.join(words))
        finally:
            conn.close()

    raise typer.Exit(_run(work))


class ExecOutput(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


@app.command("exec")
def exec_(
    target: Annotated[
        str,
        typer.Argument(help="Target name (see hoopctl targets).", autocompletion=complete_target),
    ],
    command: Annotated[
        list[str] | None,
        typer.Argument(
            help="For ssh/local targets: the command to run (after --).", show_default=False
        ),
    ] = None,
    sql: Annotated[str | None, typer.Option("--command", "-c", help="SQL to run.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Read SQL from FILE (- for stdin).")
    ] = None,
    output: Annotated[
        ExecOutput | None,
        typer.Option(
            "--output",
            "-o",
            help="SQL result format (default table); a command's output passes through as it is.",
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Recorded with the request.")
    ] = None,
    wait: Annotated[
        str | None,
        typer.Option(
            "--wait",
            metavar="DURATION",
            help="If the command needs approval, wait this long for it (default 5m).",
        ),
    ] = None,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait", help="If the command needs approval, exit 4 at once with the request id."
        ),
    ] = False,
    request: Annotated[
        str | None,
        typer.Option(
            "--request",
            metavar="ID",
            help="Run the command of this approved request (once); no input runs it as approved.",
            autocompletion=complete_request,
        ),
    ] = None,
    broker: BrokerOption = None,
) -> None:
    """Run SQL (or a command) on a target once, for scripts and agents.

    Exit codes: 0 success, 1 error from the target, 2 usage, 3 denied by policy or by an
    approver, 4 approval required, expired or cancelled (Ctrl-C while waiting cancels).
    """

    def read_input() -> bytes:
        if command:
            if sql is not None or file is not None:
                raise UsageError("give either a command after -- or SQL with -c/-f, not both")
            if output is not None:
                raise UsageError(
                    "--output formats SQL results; a command's output is passed through as it is"
                )
            return b""
        if sql is not None and file is not None:
            raise UsageError("give SQL with either -c or -f, not both")
        if sql is not None:
            return sql.encode()
        if file is not None and str(file) != "-":
            try:
                return file.read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read {file}: {exc.strerror}") from None
        if sys.stdin.isatty():
            if request is not None:
                return b""  # run the approved text as it was approved
            raise UsageError("no SQL given: use -c SQL, -f FILE, or pipe it on stdin")
        return sys.stdin.buffer.read()

    from hoopctl.credentials import CredentialStore
    from hoopctl.exec_relay import run_exec
    from hoopctl.session import current_profile
    from hoopctl.transport import open_connection

    async def work() -> int:
        approval_words = exec_words(wait, no_wait, request)
        data = read_input()
        address = _address(broker)
        store = CredentialStore(address)
        profile = await current_profile(store)
        conn = await open_connection(
            address, username=profile.user, client_keys=[(store.private_key(), profile.cert())]
        )
        words = ["exec"] if command else ["exec", "--output", (output or ExecOutput.table).value]
        if reason:
            words += ["--reason", reason]
        words += approval_words
        words.append(target)
        if command:
            words += ["--", *command]
        try:
            return await run_exec(conn, shlex.join(words), data)
        finally:
            conn.close()

    raise typer.Exit(_run(work))


@app.command("ssh-config")
def ssh_config(
    broker: BrokerOption = None,
    alias: Annotated[
        str | None,
        typer.Option("--alias", help="Host alias to use in the block (default hoop-HOST)."),
    ] = None,
) -> None:
    """Print an OpenSSH Host block so plain `ssh` reaches the broker with your certificate."""

    from hoopctl.credentials import CredentialStore
    from hoopctl.session import current_profile
    from hoopctl.ssh_config import write_ssh_config

    async def work() -> None:
        address = _address(broker)
        store = CredentialStore(address)
        profile = await current_profile(store)
        block, key_path = write_ssh_config(address, profile, store.private_key(), alias=alias)
        stderr.print(f"note: wrote your key and certificate for OpenSSH under {key_path.parent}")
        sys.stdout.write(block)

    _run(work)


# Command modules register on import.
from hoopctl import approvals_cli, audit_cli  # noqa: E402,F401


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # output written outside a command body (help, completion)
        closed_stdout()
        sys.exit(EXIT_CLOSED_PIPE)


if __name__ == "__main__":
    main()
