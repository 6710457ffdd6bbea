"""`hoop-broker`: run the broker daemon, check its configuration, verify and prune its records."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from broker.config import BrokerConfig, load_config, parse_config
from broker.defaults import DEV_CONFIG, default_dev_data_dir
from broker.durations import parse_duration
from broker.errors import BrokerError, ConfigError
from broker.integrity import prune as prune_data_dir
from broker.integrity import verify_data_dir

app = typer.Typer(
    name="hoop-broker",
    help="The hoop session broker: an SSH gateway that records and polices every session.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
    loaded = parse_config(DEV_CONFIG, base_dir=Path.cwd(), source="embedded dev config")
    broker = loaded.broker.model_copy(update={"data_dir": default_dev_data_dir()})
    return loaded.model_copy(update={"broker": broker})


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
) -> None:
    """Run the broker until SIGTERM or Ctrl-C."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from broker.app import serve_forever  # the whole broker: not needed by the other commands

    try:
        loaded = _load(config, dev)
        asyncio.run(serve_forever(loaded, dev_mode=dev, listen=listen))
    except BrokerError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


@app.command("check-config")
def check_config(file: Annotated[Path, typer.Argument(help="Config file to check.")]) -> None:
    """Validate FILE; print every problem with its key path and exit 2 if there are any."""
    try:
        loaded = load_config(file)
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
        report = verify_data_dir(loaded.broker.data_dir, session)
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
        result = prune_data_dir(loaded.broker.data_dir, seconds, dry_run=dry_run)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
