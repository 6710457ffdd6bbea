from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    BIN,
    BrokerProcess,
    User,
    dev_config,
    ensure_os_users,
    free_port,
    make_target_dir,
    remove_target_dir,
    start_broker,
)


@pytest.fixture
def dev_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A real broker process in --dev mode whose issuer approves alice's logins at once."""
    broker = start_broker(
        tmp_path,
        dev_config(tmp_path / "broker-data", port=free_port(), dev_port=free_port()),
    )
    yield broker
    broker.stop()


@pytest.fixture
def manual_dev_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A --dev broker whose issuer waits for a person to approve each login."""
    broker = start_broker(
        tmp_path,
        dev_config(
            tmp_path / "manual-broker-data",
            port=free_port(),
            dev_port=free_port(),
            auto_approve=None,
        ),
        name="manual-broker",
    )
    yield broker
    broker.stop()


@pytest.fixture
def alice(tmp_path: Path) -> User:
    return User(tmp_path / "alice")


@pytest.fixture
def bob(tmp_path: Path) -> User:
    return User(tmp_path / "bob")


@pytest.fixture
def user(broker: BrokerProcess, alice: User) -> User:
    """Alice, logged in to the module's `broker`."""
    assert alice.login(broker).returncode == 0
    return alice


@pytest.fixture(scope="session", autouse=True)
def os_users() -> None:
    """The OS users local targets run as (run_as): created when missing and running as root.
    Otherwise scripts/install-system-deps.sh must have made them (check-config names the key)."""
    if os.geteuid() == 0:
        ensure_os_users()


@pytest.fixture
def target_dir() -> Iterator[Path]:
    """A fresh directory the target user (hoop-target) owns: files a local target must see."""
    path = make_target_dir()
    yield path
    remove_target_dir(path)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3-compatible server on loopback (moto's), for recordings in a bucket; one per run."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(endpoint, timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    yield endpoint
    server.send_signal(signal.SIGTERM)
    server.wait(10)
