"""`hoop-broker check-config` and `serve` with good and bad configuration files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import HOOP_BROKER, REPO, free_port

GOOD = """
[broker]
listen = "127.0.0.1:2222"
data_dir = "data"

[oidc]
issuer = "https://idp.example.com"
client_id = "hoopctl"

[[targets]]
name = "web-1"
type = "ssh"
address = "10.0.0.5:22"
user = "deploy"
credential = "file:/etc/hoop/web-1.key"
allowed_groups = ["engineers"]
"""


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return subprocess.run(
        [HOOP_BROKER, "check-config", str(path)], capture_output=True, text=True, timeout=30
    )


def test_good_config_passes(tmp_path: Path) -> None:
    result = check(tmp_path, GOOD)
    assert result.returncode == 0, result.stderr
    assert "OK (1 targets" in result.stdout


def test_documented_example_config_passes(tmp_path: Path) -> None:
    """The full example in docs/configuration.md is a config that really loads."""
    text = (REPO / "docs" / "configuration.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    result = check(tmp_path, example)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("[broker]\nlisten = 2222\n", "broker.listen:"),
        ('[broker]\ncertificate_ttl = "8 hours"\n', "broker.certificate_ttl: not a duration"),
        ('[broker]\nlisen = "127.0.0.1:2222"\n', "broker.lisen: unknown key"),
        ('[oidc]\nclient_id = "x"\n', "oidc.issuer: required key is missing"),
        (
            '[oidc]\nissuer = "https://i"\nclient_id = "x"\nalgorithms = ["HS256"]\n',
            "oidc.algorithms",
        ),
        ('[oidc]\nissuer = "https://i"\nclient_id = "x"\nalgorithms = ["none"]\n', "not allowed"),
    ],
)
def test_each_problem_is_reported_with_its_key_path(
    tmp_path: Path, snippet: str, expected: str
) -> None:
    base = GOOD.replace('[broker]\nlisten = "127.0.0.1:2222"\ndata_dir = "data"\n', "")
    if snippet.startswith("[oidc]"):
        base = base.replace(
            '[oidc]\nissuer = "https://idp.example.com"\nclient_id = "hoopctl"\n', ""
        )
    result = check(tmp_path, snippet + base)
    assert result.returncode == 2
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    text = (
        GOOD
        + """
[[targets]]
name = "web-1"
type = "ssh"
address = "10.0.0.6"
user = 7
colour = "blue"
policy = "missing-policy"

[[targets]]
name = "db"
type = "postgres"
address = "127.0.0.1:5432"
user = "app"

[[targets]]
name = "x"
type = "telnet"
"""
    )
    result = check(tmp_path, text)
    assert result.returncode == 2
    err = result.stderr
    assert "targets[1].address: expected HOST:PORT" in err
    assert "targets[1].user:" in err
    assert "targets[1].colour: unknown key" in err
    assert "targets[1].name: duplicate target name 'web-1' (first defined at targets[0])" in err
    assert "targets[1].policy: no policy named 'missing-policy'" in err
    assert "targets[2].database: required key is missing" in err
    assert "targets[3]: unknown target type" in err
    assert "Traceback" not in err


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    result = check(tmp_path, GOOD + "\n[[targets]\n")
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr and "line" in result.stderr


def test_credential_must_be_a_reference_not_a_secret(tmp_path: Path) -> None:
    result = check(tmp_path, GOOD.replace('"file:/etc/hoop/web-1.key"', '"hunter2"'))
    assert result.returncode == 2
    assert "targets[0].credential: credential must be a reference" in result.stderr
    # The would-be secret is not echoed back.
    assert "hunter2" not in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [HOOP_BROKER, "check-config", str(tmp_path / "nope.toml")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "config file not found" in result.stderr


def test_serve_with_bad_config_starts_nothing(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "broker.toml"
    path.write_text(GOOD.replace("127.0.0.1:2222", f"127.0.0.1:{port}") + "\n[broker2]\n")
    result = subprocess.run(
        [HOOP_BROKER, "serve", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "broker2: unknown key" in result.stderr
    assert not (tmp_path / "data").exists()


def test_dev_flag_refuses_a_real_issuer(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(GOOD)
    result = subprocess.run(
        [HOOP_BROKER, "serve", "--dev", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--dev serves its own issuer" in result.stderr
    assert not (tmp_path / "data").exists()


def test_listen_port_in_use_is_one_line_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "broker.toml"
        path.write_text(GOOD.replace("127.0.0.1:2222", f"127.0.0.1:{port}"))
        result = subprocess.run(
            [HOOP_BROKER, "serve", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
