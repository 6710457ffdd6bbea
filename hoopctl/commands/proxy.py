"""`hoopctl proxy`: a local port where a database's own clients (psql, drivers, DBeaver) reach
a target through the broker."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from hoopctl.cli_common import BrokerOption, _address, _run, app, complete_target
from hoopctl.errors import UsageError


class ProxyOutput(StrEnum):
    text = "text"
    json = "json"


@app.command("proxy")
def proxy(
    target: Annotated[
        str,
        typer.Argument(
            help="Database target (see hoopctl targets).", autocompletion=complete_target
        ),
    ],
    port: Annotated[
        int,
        typer.Option("--port", "-p", help="Local port on 127.0.0.1 (default: a free one)."),
    ] = 0,
    no_password: Annotated[
        bool,
        typer.Option(
            "--no-password",
            help="Clients connect without the one-time password (any local user could then "
            "use your session while the proxy runs).",
        ),
    ] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Recorded with each session.")
    ] = None,
    output: Annotated[
        ProxyOutput,
        typer.Option(
            "--output",
            "-o",
            help="json: one line on stdout with host, port, user, password and DSN, for scripts.",
            case_sensitive=False,
        ),
    ] = ProxyOutput.text,
    broker: BrokerOption = None,
) -> None:
    """Listen on 127.0.0.1 for a database's own clients (psql, drivers, DBeaver) and carry each
    connection to TARGET through the broker: every statement is judged, masked, approved where
    a rule says so, and recorded, as with `hoopctl exec`. The target's password never leaves
    the broker; clients give the one-time password printed here. Ctrl-C stops the proxy."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0-65535, not {port}")

    import asyncio
    import secrets
    import signal
    import sys

    from hoopctl.credentials import CredentialStore
    from hoopctl.proxy_listener import ProxyListener
    from hoopctl.session import current_profile
    from hoopctl.transport import open_connection

    async def work() -> int:
        address = _address(broker)
        store = CredentialStore(address)
        profile = await current_profile(store)

        async def connect() -> object:
            current = await current_profile(store)
            return await open_connection(
                address, username=current.user, client_keys=[(store.private_key(), current.cert())]
            )

        conn: Any = await connect()
        try:
            kind = await _target_type(conn, target)
        except BaseException:
            conn.close()
            raise
        password = None if no_password else secrets.token_urlsafe(18)
        listener = ProxyListener(
            conn,
            target,
            password=password,
            reason=reason,
            reconnect=connect,  # type: ignore[arg-type]
        )
        try:
            server = await asyncio.start_server(listener.handle, "127.0.0.1", port)
        except OSError as exc:
            conn.close()
            raise UsageError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
        bound = server.sockets[0].getsockname()[1]
        _announce(target, kind, profile.user, bound, password, output)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        watching = asyncio.ensure_future(listener.watch())
        try:
            await stop.wait()
        finally:
            watching.cancel()
            server.close()
            await listener.close()
            listener.conn.close()
        print("hoopctl: proxy stopped", file=sys.stderr)
        return 0

    raise typer.Exit(_run(work))


# The database targets that take their own clients, and what to paste to reach them.
NATIVE_TYPES = ("postgres", "mysql")


async def _target_type(conn: object, target: str) -> str:
    """TARGET's type as the broker lists it; a one-line error when it takes no native client
    (the broker refuses those too: this only says so before anything listens)."""
    from hoopctl.transport import ApiClient

    api = ApiClient(conn)  # type: ignore[arg-type]
    try:
        rows = await api.call("targets.list")
    finally:
        api.close_channel()
    kinds = {row.get("name"): row.get("type") for row in rows}
    if target not in kinds:
        raise UsageError(f"no target {target!r} is open to you (see hoopctl targets)")
    kind = str(kinds[target])
    if kind not in NATIVE_TYPES:
        raise UsageError(
            f"target {target} is a {kind} target: proxy serves database targets "
            f"({', '.join(NATIVE_TYPES)}); for ssh targets see hoopctl ssh-config"
        )
    return kind


def _client_lines(kind: str, target: str, user: str, port: int) -> tuple[str, str, list[str]]:
    """(a DSN or URL, the JDBC URL, the lines to paste) for a KIND target."""
    if kind == "mysql":
        url = f"mysql://{user}@127.0.0.1:{port}/{target}"
        jdbc = f"jdbc:mariadb://127.0.0.1:{port}/{target}"
        command = (
            f"mariadb --host=127.0.0.1 --port={port} --user={user} --skip-ssl --password {target}"
        )
        return url, jdbc, [f"  {command}", f"  JDBC (DBeaver): {jdbc}"]
    dsn = f"host=127.0.0.1 port={port} dbname={target} user={user} sslmode=disable"
    jdbc = f"jdbc:postgresql://127.0.0.1:{port}/{target}?sslmode=disable"
    return dsn, jdbc, [f'  psql "{dsn}"', f"  JDBC (DBeaver): {jdbc}"]


def _announce(
    target: str, kind: str, user: str, port: int, password: str | None, output: ProxyOutput
) -> None:
    import sys

    dsn, jdbc, paste = _client_lines(kind, target, user, port)
    if output == ProxyOutput.json:
        record = {
            "target": target,
            "type": kind,
            "host": "127.0.0.1",
            "port": port,
            "user": user,
            "password": password,
            "dsn": dsn,
            "jdbc": jdbc,
        }
        print(json.dumps(record), flush=True)
    lines = [
        f"hoopctl: proxy for {target} ({kind}) listening on 127.0.0.1:{port}; Ctrl-C stops it",
        *paste,
    ]
    if password is not None:
        lines.append(f"  password (one-time, while this proxy runs): {password}")
    print("\n".join(lines), file=sys.stderr, flush=True)
