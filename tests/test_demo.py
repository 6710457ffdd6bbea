"""`make demo`'s script on a fresh directory: broker up, alice logged in, targets shown."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.helpers import REPO, free_port


def test_demo_starts_broker_logs_in_and_lists_targets(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "HOOP_DEMO_DIR": str(tmp_path / "demo"),
        "HOOP_DEMO_SSH_PORT": str(free_port()),
        "HOOP_DEMO_DEV_PORT": str(free_port()),
        "HOOP_DEMO_EXIT": "1",
        "COLUMNS": "200",
    }
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Logged in" in result.stderr and "alice" in result.stderr
    assert "dev-shell" in result.stdout and "demo-db" in result.stdout
    # The broker is stopped when the demo ends, and its audit trail has the login.
    audit = (tmp_path / "demo" / "audit.jsonl").read_text().splitlines()
    assert "auth.login" in [json.loads(line)["type"] for line in audit if line.startswith("{")]
    # Nothing of the demo user leaks into the real home.
    assert not (tmp_path / "home" / ".config" / "hoopctl").exists()
