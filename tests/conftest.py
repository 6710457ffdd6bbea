from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import BrokerProcess, User, dev_config, free_port, start_broker


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
