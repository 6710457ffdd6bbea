"""What `pip install` builds: an editable install that prints no warnings, with both programs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.helpers import REPO


def test_the_editable_install_builds_without_a_warning(tmp_path: Path) -> None:
    # What `pip install -e .` asks the build backend for; its stderr is what pip shows.
    build = (
        "import sys; from hatchling.build import build_editable; print(build_editable(sys.argv[1]))"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", build, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    with zipfile.ZipFile(tmp_path / result.stdout.strip()) as wheel:
        names = wheel.namelist()
        (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
        scripts = wheel.read(entry_points).decode()
    assert any(name.endswith(".pth") for name in names)
    assert "hoopctl = hoopctl.entry:main" in scripts
    assert "hoop-broker = broker.cli:main" in scripts


def test_the_license_is_an_spdx_expression() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
