"""`make demo` on a fresh directory: the broker up with its sample database, alice and bob
logged in, masked rows shown, and closing text whose commands work as printed."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import tomllib
from pathlib import Path

from broker.config import parse_config
from broker.defaults import DEV_CONFIG, dev_config_text
from tests.helpers import REPO, BrokerProcess, free_port

RAW_CARDS = ("4111111111111111", "5555555555554444", "4000 0566 5566 5556")


def as_person(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run hoopctl as the closing text says: in a shell that sourced the person's env file."""
    return subprocess.run(
        ["bash", "-c", 'source "$0" && hoopctl "$@"', str(env_file), *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(env_file.parent), "COLUMNS": "200"},
        timeout=60,
    )


def test_make_demo_shows_all_three_stories_with_two_users(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "HOOP_DEMO_DIR": str(demo),
        "HOOP_DEMO_SSH_PORT": str(free_port()),
        "HOOP_DEMO_DEV_PORT": str(free_port()),
        "HOOP_DEMO_EXIT": "1",
        "COLUMNS": "200",
    }
    # -o: the venv is there already; `make demo` must not reinstall it inside the test.
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out, err = result.stdout, result.stderr
    assert "Traceback" not in err
    # Two people logged in, bob through --dev-user.
    assert "Logged in" in err and "as alice" in err
    assert "Logging in as bob" in err and "as bob (groups: approvers, engineers, secops)" in err
    assert "dev-shell" in out and "demo-db" in out
    # The sample database, masked in the broker: card_number keeps its last 4 digits, card
    # numbers and emails inside free text are redacted.
    assert "Ada Lovelace" in out and "************1111" in out
    assert "[REDACTED:card]" in out and "[REDACTED:email]" in out
    assert not any(card in out for card in RAW_CARDS)
    assert "@example.com" not in out
    # The closing text: the commands of all three stories, for both people.
    for command in (
        f"source {demo}/alice.env",
        f"source {demo}/bob.env",
        "hoopctl connect demo-db",
        'hoopctl exec demo-db -c "DROP TABLE orders"',
        'hoopctl exec demo-db -c "DELETE FROM orders"',
        "hoopctl approve ",
        "hoopctl approvals",
        "hoopctl sessions ",
        "hoopctl sessions search DROP",
        "hoopctl replay SESSION_ID",
        "hoopctl login --dev-user NAME",
    ):
        assert command in out, command
    # The broker stopped with the demo; its audit trail has both logins.
    audit = [json.loads(line) for line in (demo / "audit.jsonl").read_text().splitlines()]
    logins = {e["actor"] for e in audit if e["type"] == "auth.login"}
    assert logins == {"alice", "bob"}
    # Nothing of the demo users leaks into the real home.
    assert not (tmp_path / "home" / ".config" / "hoopctl").exists()

    # The stories, typed as the closing text prints them, against the demo's broker again.
    broker = BrokerProcess(config_path=demo / "broker.toml", data_dir=demo / "broker-data")
    broker.start()
    try:
        alice, bob = demo / "alice.env", demo / "bob.env"
        drop = as_person(alice, "exec", "demo-db", "-c", "DROP TABLE orders")
        assert drop.returncode == 3, drop
        assert "denied by rule no-drop" in drop.stderr
        typo = as_person(alice, "exec", "demo-db", "--no-wait", "-c", "selec 1;")
        assert typo.returncode == 4, typo
        assert "cannot parse" in typo.stderr
        request_id = re.search(r"request (\S+) waits for approvers", typo.stderr).group(1)  # type: ignore[union-attr]
        pending = json.loads(as_person(bob, "approvals", "-o", "json").stdout)
        (record,) = [r for r in pending if r["id"] == request_id]
        assert "cannot parse" in record["cause"]
        found = as_person(bob, "sessions", "search", "DROP")
        assert found.returncode == 0, found.stderr
        assert "DROP TABLE orders" in found.stdout
    finally:
        broker.stop()
    assert stat.S_IMODE((demo / "broker-data").stat().st_mode) == 0o700


def test_embedded_dev_config_is_the_demo_config() -> None:
    """`hoop-broker serve --dev` without a config serves what examples/demo.toml describes."""
    example = (REPO / "examples" / "demo.toml").read_text()
    example = example.replace("@SSH_PORT@", "2222").replace("@DEV_PORT@", "2280")
    data_dir = Path("/var/lib/hoop-demo")
    demo = parse_config(example.replace("@DATA_DIR@", str(data_dir)), base_dir=REPO)
    embedded = parse_config(dev_config_text(data_dir), base_dir=REPO)
    assert embedded.targets == demo.targets
    assert embedded.policies == demo.policies
    assert embedded.audit == demo.audit
    assert embedded.dev is not None and demo.dev is not None
    assert embedded.dev.users == demo.dev.users
    assert "@DATA_DIR@" in tomllib.loads(DEV_CONFIG)["broker"]["data_dir"]
