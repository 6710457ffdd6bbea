"""`hoop-broker`: run the broker daemon and check its configuration."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from broker.app import serve_forever
from broker.config import BrokerConfig, load_config, parse_config
from broker.defaults import DEV_CONFIG, default_dev_data_dir
from broker.errors import BrokerError, ConfigError

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
