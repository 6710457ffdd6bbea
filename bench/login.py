"""Login benchmark: certificate issuance at a real broker, `hoopctl login`, `hoopctl whoami`.

    cd /work/main && .venv/bin/python -m bench.login [--runs 20] [--max-seconds 120]

Starts `hoop-broker serve --dev` on free loopback ports (its dev issuer auto-approves alice),
then measures in rounds, one sample of every metric per round, until --runs rounds are done or
--max-seconds have gone by. One untimed warm-up login comes first. Prints figures only.

In-process metrics drive the hoop-api subsystem with hoopctl's own transport (asyncssh), as a
separate user whose HOME, XDG dirs and keyring file are set in this process before hoopctl is
imported; subprocess metrics run the real console script as another user (tests.helpers.User).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import HOOPCTL, BrokerProcess, User, dev_config, free_port, start_broker

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

# Metric names, in the order they are printed.
ISSUER = "dev issuer device flow (2 HTTP requests)"
EXCHANGE = "auth.exchange round trip (open channel)"
CONNECT_EXCHANGE = "connect + auth.exchange (session.exchange)"
WHOAMI_CALL = "whoami API call (open connection)"
CONNECT_WHOAMI = "connect + whoami (session.connect_api)"
STARTUP = "hoopctl --version (start-up only)"
CLI_LOGIN = "hoopctl login (subprocess)"
CLI_WHOAMI = "hoopctl whoami (subprocess)"
METRICS = (ISSUER, EXCHANGE, CONNECT_EXCHANGE, WHOAMI_CALL, CONNECT_WHOAMI)
CLI_METRICS = (STARTUP, CLI_LOGIN, CLI_WHOAMI)


def isolate(home: Path) -> None:
    """Give this process its own hoopctl user: HOME, XDG dirs and a plaintext keyring file."""
    for key in [key for key in os.environ if key.startswith(("HOOP_", "XDG_"))]:
        del os.environ[key]
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        PYTHON_KEYRING_BACKEND="keyrings.alt.file.PlaintextKeyring",
    )


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(math.ceil(0.9 * len(ordered)) - 1, 0)]


class Timings:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {name: [] for name in METRICS + CLI_METRICS}

    async def time(self, name: str, work: Callable[[], Awaitable[Any]]) -> Any:
        start = time.perf_counter()
        result = await work()
        self.samples[name].append(time.perf_counter() - start)
        return result

    def table(self) -> str:
        width = max(len(name) for name in self.samples)
        lines = [
            f"{'metric':<{width}}  {'median':>9}  {'p90':>9}  {'min':>9}  {'runs':>4}",
            f"{'-' * width}  {'-' * 9}  {'-' * 9}  {'-' * 9}  {'-' * 4}",
        ]
        for name, values in self.samples.items():
            if not values:
                continue
            lines.append(
                f"{name:<{width}}  {statistics.median(values) * 1000:>6.1f} ms"
                f"  {p90(values) * 1000:>6.1f} ms  {min(values) * 1000:>6.1f} ms"
                f"  {len(values):>4}"
            )
        return "\n".join(lines)


def run_cli(user: User, *args: str) -> subprocess.CompletedProcess[str]:
    result = user.run(*args)
    if result.returncode != 0:
        raise SystemExit(f"bench: hoopctl {' '.join(args)} failed:\n{result.stderr}")
    return result


async def bench(runs: int, max_seconds: float, workdir: Path) -> Timings:
    isolate(workdir / "inprocess-user")
    # Imported only now, so hoopctl and keyring see this process's isolated user.
    import asyncssh

    from hoopctl.address import BrokerAddress
    from hoopctl.credentials import CredentialStore
    from hoopctl.hostkeys import pin
    from hoopctl.session import connect_api, exchange, profile_from
    from hoopctl.transport import ApiClient, open_connection

    broker: BrokerProcess = start_broker(
        workdir, dev_config(workdir / "broker-data", port=free_port(), dev_port=free_port())
    )
    try:
        assert broker.dev_issuer is not None
        address = BrokerAddress.parse(broker.address)
        # known_hosts pinned to the key the broker wrote, not to whatever answers on the port.
        pin(address, asyncssh.read_public_key(broker.data_dir / "host_key.pub"))
        conn = await open_connection(address)
        async with ApiClient(conn) as api:
            config: dict[str, Any] = await api.call("auth.config")
        http = httpx.AsyncClient(timeout=10)

        async def id_token() -> str:
            form = {"client_id": config["client_id"], "scope": " ".join(config["scopes"])}
            code = (await http.post(f"{broker.dev_issuer}/device/code", data=form)).json()
            token = await http.post(
                f"{broker.dev_issuer}/token",
                data={
                    "grant_type": DEVICE_GRANT,
                    "device_code": code["device_code"],
                    "client_id": config["client_id"],
                },
            )
            return str(token.json()["id_token"])

        def new_key() -> asyncssh.SSHKey:
            return asyncssh.generate_private_key("ssh-ed25519", comment="hoop bench")

        # Warm-up (untimed): log the in-process user in, which also warms the broker's
        # token validator, and log the subprocess user in once (pins the host key).
        key = new_key()
        result = await exchange(address, await id_token(), key)
        profile = profile_from(
            address, result, issuer=config["issuer"], client_id=config["client_id"],
            token_endpoint=None,
        )  # fmt: skip
        CredentialStore(address).save(profile, key, None)
        cli_user = User(workdir / "cli-user")
        await asyncio.to_thread(run_cli, cli_user, *_login_args(broker))
        authed, _ = await connect_api(address)

        timings = Timings()
        deadline = time.monotonic() + max_seconds
        try:
            for done in range(runs):
                if done and time.monotonic() >= deadline:
                    print(f"bench: time budget of {max_seconds:g} s spent after {done} rounds")
                    break
                token = await timings.time(ISSUER, id_token)

                key = new_key()
                conn = await open_connection(address)
                async with ApiClient(conn) as api:
                    await api.call("auth.config")  # opens the hoop-api channel: not timed
                    params = {"id_token": token, "public_key": key.export_public_key().decode()}
                    issued = await timings.time(
                        EXCHANGE, lambda api=api, params=params: api.call("auth.exchange", params)
                    )
                if issued["user"] != "alice":
                    raise SystemExit(f"bench: unexpected auth.exchange result {issued}")

                token, key = await id_token(), new_key()
                await timings.time(
                    CONNECT_EXCHANGE, lambda token=token, key=key: exchange(address, token, key)
                )

                await timings.time(WHOAMI_CALL, lambda: authed.call("whoami"))

                async def connect_whoami() -> Any:
                    api, _ = await connect_api(address)
                    async with api:
                        return await api.call("whoami")

                await timings.time(CONNECT_WHOAMI, connect_whoami)

                for name, args in (
                    (STARTUP, ("--version",)),
                    (CLI_LOGIN, _login_args(broker)),
                    (CLI_WHOAMI, ("whoami",)),
                ):
                    await timings.time(
                        name, lambda args=args: asyncio.to_thread(run_cli, cli_user, *args)
                    )
        finally:
            await authed.close()
            await http.aclose()
        return timings
    finally:
        broker.stop()


def _login_args(broker: BrokerProcess) -> tuple[str, ...]:
    return (
        "login",
        "--broker",
        broker.address,
        "--accept-host-key",
        broker.host_fingerprint,
        "--no-browser",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.login", description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="rounds to measure (default 20)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120,
        help="stop starting new rounds after this long (default 120)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    print(
        f"hoopctl login benchmark: {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {HOOPCTL}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="hoop-bench-") as tmp:
        started = time.monotonic()
        timings = asyncio.run(bench(args.runs, args.max_seconds, Path(tmp)))
        elapsed = time.monotonic() - started
    print(timings.table())
    print(f"({elapsed:.1f} s in all, with broker start-up and one warm-up login)")
    print(
        "hoopctl login includes the device flow's wait of one poll interval (1 s at the dev "
        "issuer) before its first token request; the subprocess rows include Python start-up."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
