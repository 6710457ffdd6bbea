"""`hoop-broker`: run the broker daemon, check its configuration, verify and prune its records,
revoke certificates and rotate the user CA."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from broker import __version__
from broker.audit.integrity import prune as prune_data_dir
from broker.audit.integrity import verify_data_dir
from broker.cli_help import plain_help_types
from broker.config import BrokerConfig, load_config, parse_config, review_problems
from broker.defaults import create_demo_database, default_dev_data_dir, dev_config_text
from broker.durations import parse_duration
from broker.errors import BrokerError, ConfigError
from broker.recording_objects import open_recording_objects

plain_help_types()

GIL_SWITCH_SECONDS = 0.0005  # see serve
app = typer.Typer(
    name="hoop-broker",
    help="The hoop session broker: an SSH gateway that records and polices every session.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"hoop-broker {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """The hoop session broker: an SSH gateway that records and polices every session."""


def _fail(error: BrokerError) -> None:
    print(f"hoop-broker: {error}", file=sys.stderr)
    if isinstance(error, ConfigError):
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
    raise typer.Exit(error.exit_code)


def _load(config: Path | None, dev: bool) -> BrokerConfig:
    if config is not None:
        return load_config(config)
    if not dev:
        raise ConfigError("--config FILE is required (or --dev for the embedded demo)")
    return parse_config(
        dev_config_text(default_dev_data_dir()), base_dir=Path.cwd(), source="embedded dev config"
    )


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Broker config file (TOML).")
    ] = None,
    dev: Annotated[
        bool,
        typer.Option("--dev", help="Serve the built-in OIDC issuer (INSECURE: demos and tests)."),
    ] = False,
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT to listen on (overrides config).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Python log level.")] = "WARNING",
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Worker processes sharing the port (SO_REUSEPORT) [default: the number of "
            "cores]. 1 runs the whole broker in one process.",
        ),
    ] = None,
) -> None:
    """Run the broker until SIGTERM or Ctrl-C."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from broker.app import serve_forever  # the whole broker: not needed by the other commands
    from broker.workers import WORKER_ENV, die_with_parent, say_ready, supervise

    worker = os.environ.get(WORKER_ENV)
    count = workers if workers is not None else (os.cpu_count() or 1)
    try:
        if worker:
            die_with_parent()
        loaded = _load(config, dev)
        if config is None and not worker:
            _demo_database(loaded)
        if not worker:  # (the supervisor has said it)
            for problem in review_problems(loaded):
                # check-config reports it as an error; a running broker refuses such input.
                print(f"hoop-broker: warning: {problem}", file=sys.stderr, flush=True)
        # The audit writer and the judging of long inputs run in threads: a thread waiting
        # for the GIL behind the event loop gets it after this long (5 ms by default, which
        # every statement of every session would wait).
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        if worker:
            asyncio.run(
                serve_forever(
                    loaded,
                    dev_mode=dev,
                    listen=listen,
                    role="worker",
                    ready=say_ready,
                )
            )
        elif count > 1:
            command = [
                "serve",
                *(["--config", str(config.resolve())] if config is not None else []),
                *(["--dev"] if dev else []),
                "--log-level",
                log_level,
            ]
            asyncio.run(
                supervise(loaded, dev_mode=dev, listen=listen, workers=count, command=command)
            )
        else:
            asyncio.run(serve_forever(loaded, dev_mode=dev, listen=listen))
    except BrokerError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


def _demo_database(loaded: BrokerConfig) -> None:
    """The embedded demo's SQLite target needs its database: made on first start."""
    target = loaded.target("demo-db")
    path = getattr(target, "path", None)
    if path is None:
        return
    try:
        create_demo_database(path)
    except (OSError, sqlite3.Error) as exc:
        raise BrokerError(f"cannot create the demo database {path}: {exc}") from None


@app.command("check-config")
def check_config(file: Annotated[Path, typer.Argument(help="Config file to check.")]) -> None:
    """Validate FILE; print every problem with its key path and exit 2 if there are any."""
    try:
        loaded = load_config(file)
        problems = review_problems(loaded)
        if problems:
            raise ConfigError(f"{file}: {len(problems)} problem(s)", problems)
    except ConfigError as exc:
        _fail(exc)
        return
    print(f"{file}: OK ({len(loaded.targets)} targets, {len(loaded.policies)} policies)")


ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="Broker config file (TOML).")
]
DevOption = Annotated[
    bool, typer.Option("--dev", help="Use the data dir of `hoop-broker serve --dev`.")
]


@app.command()
def verify(
    config: ConfigOption = None,
    dev: DevOption = False,
    session: Annotated[
        str | None,
        typer.Option(
            "--session", help="Check this session's recording (the chain is always whole)."
        ),
    ] = None,
) -> None:
    """Check the audit hash chain and the signed recordings; print each problem with its place.

    Exit 0 when everything is intact, 1 when anything was changed, deleted, reordered or is
    unsigned, 2 when the config is invalid. Safe while the broker runs (reads only).
    """
    try:
        loaded = _load(config, dev)
        report = verify_data_dir(
            loaded.broker.data_dir,
            session,
            open_recording_objects(loaded.recordings),
            loaded.store.conninfo(),
        )
    except BrokerError as exc:
        _fail(exc)
        return
    for problem in report.problems:
        print(problem)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"hoop-broker verify: {report.summary()}")
    raise typer.Exit(0 if report.intact else 1)


@app.command()
def prune(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age to keep, e.g. 90d: older records go.")
    ],
    config: ConfigOption = None,
    dev: DevOption = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be deleted; delete nothing.")
    ] = False,
) -> None:
    """Delete recordings and audit events older than --older-than; the chain stays verifiable.

    Sessions that ended before the cut lose their recording (and its .sig/.idx files) and
    their row; audit events before the cut are replaced by a signed checkpoint that
    `hoop-broker verify` starts from. The prune is itself an audit event (audit.prune).
    Run it as the broker's user; it is safe while the broker runs.
    """
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        print(f"hoop-broker: --older-than: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    try:
        loaded = _load(config, dev)
        result = prune_data_dir(
            loaded.broker.data_dir,
            seconds,
            dry_run=dry_run,
            objects=open_recording_objects(loaded.recordings),
            store_url=loaded.store.conninfo(),
            node=loaded.broker.node,
        )
    except BrokerError as exc:
        _fail(exc)
        return
    verb = "would delete" if dry_run else "deleted"
    events = (
        f"{result.events} audit events (seq {result.first_seq}-{result.last_seq})"
        if result.events
        else "no audit events"
    )
    cut = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(result.cut))
    print(
        f"hoop-broker prune: {verb} {events}, {len(result.sessions)} sessions and "
        f"{result.files} recording files ({result.bytes} bytes) from before {cut}"
    )
    if result.event is not None:
        checkpoint = f"checkpoint at seq {result.last_seq}; " if result.events else ""
        print(f"hoop-broker prune: {checkpoint}recorded as audit event seq {result.event['seq']}")
    if result.bucket_error is not None:
        print(f"hoop-broker prune: {result.bucket_error}", file=sys.stderr)
        raise typer.Exit(1)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


@app.command()
def revoke(
    who: Annotated[
        str,
        typer.Argument(
            metavar="USER|SERIAL",
            help="A user (all of their active certificates) or one certificate's serial.",
        ),
    ],
    config: ConfigOption = None,
    dev: DevOption = False,
) -> None:
    """Revoke every active certificate of USER, or the one certificate with SERIAL.

    The broker refuses a revoked certificate from the next connection on, also while it runs
    (it reads its certificate registry at every login); the user logs in again to get a new
    one. The revocation is an audit event (auth.revoked). Exit 0 when revoked (or revoked
    already), 2 for a user or serial the broker never issued a certificate to, or a bad config.
    """
    from broker.identity.registry import revoke as revoke_certificates

    try:
        loaded = _load(config, dev)
        result = revoke_certificates(
            loaded.broker.data_dir,
            who,
            store_url=loaded.store.conninfo(),
            node=loaded.broker.node,
        )
    except BrokerError as exc:
        _fail(exc)
        return
    if result.already is not None:
        when = _when(result.already.revoked_at or 0)
        print(
            f"hoop-broker revoke: serial {result.subject} ({result.already.user}) was revoked "
            f"already, at {when}"
        )
        return
    if not result.revoked:
        print(f"hoop-broker revoke: {result.subject} has no active certificates; nothing revoked")
        return
    for record in result.revoked:
        print(
            f"revoked serial {record.serial} of {record.user} (issued {_when(record.issued_at)}, "
            f"valid until {_when(record.valid_before)})"
        )
    count = len(result.revoked)
    what = f"{count} certificate{'s' if count != 1 else ''}"
    of = f" of {result.subject}" if result.by == "user" else ""
    seq = result.event["seq"] if result.event else "?"
    print(f"hoop-broker revoke: revoked {what}{of}; recorded as audit event seq {seq}")


@app.command("rotate-ca")
def rotate_ca(config: ConfigOption = None, dev: DevOption = False) -> None:
    """Replace the user CA with a new key and revoke every certificate the old one signed.

    The old key is kept as DATA_DIR/user_ca.retired-STAMP (0600) for the record and is not
    trusted any more; everyone logs in again (hoopctl says so at their next command). Safe
    while the broker runs: it signs with, and trusts, only the new CA from the next login on.
    Recorded as an audit event (auth.ca_rotated).
    """
    from broker.identity.registry import rotate_ca as rotate

    try:
        loaded = _load(config, dev)
        result = rotate(
            loaded.broker.data_dir, store_url=loaded.store.conninfo(), node=loaded.broker.node
        )
    except BrokerError as exc:
        _fail(exc)
        return
    count = len(result.revoked)
    users = sorted({record.user for record in result.revoked})
    print(f"hoop-broker rotate-ca: new user CA {result.fingerprint}")
    print(
        f"hoop-broker rotate-ca: retired {result.previous_fingerprint} as "
        f"{result.retired_path} (no longer trusted)"
    )
    print(
        f"hoop-broker rotate-ca: revoked {count} certificate{'s' if count != 1 else ''}"
        + (f" of {', '.join(users)}" if users else "")
        + "; they log in again with hoopctl login"
    )
    if result.event is not None:
        print(f"hoop-broker rotate-ca: recorded as audit event seq {result.event['seq']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
