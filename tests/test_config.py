"""`hoop-broker check-config` and `serve` with good and bad configuration files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import HOOP_BROKER, HOOPCTL, REPO, free_port

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
# Without it, unknown input would go to review that nobody can decide (review_problems).
access_approvers = ["leads"]
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
        # Discovery and keys over clear text to a host on the network: anyone on the path
        # could hand the broker their own signing keys.
        ('[oidc]\nissuer = "http://idp.example.com"\nclient_id = "x"\n', "oidc.issuer: "),
        ('[oidc]\nissuer = "http://10.0.0.7:8080/realm"\nclient_id = "x"\n', "must use https"),
        ('[oidc]\nissuer = "http://127.0.0.1.nip.io"\nclient_id = "x"\n', "must use https"),
        (
            '[oidc]\nissuer = "https://i"\nclient_id = "x"\nagent_clients = "ci"\n',
            "oidc.agent_clients",
        ),
        (
            '[oidc]\nissuer = "https://i"\nclient_id = "x"\nagent_clients = [""]\n',
            "oidc.agent_clients",
        ),
        ('[oidc]\nissuer = "https://i"\nclient_id = "x"\nagent_claim = ""\n', "oidc.agent_claim"),
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
    assert "targets[web-1].address: expected HOST:PORT" in err
    assert "targets[web-1].user: must be text in quotes" in err
    assert "targets[web-1].colour: unknown key" in err
    assert "targets[1].name: duplicate target name 'web-1' (first defined at targets[0])" in err
    assert "targets[web-1].policy: no policy named 'missing-policy'" in err
    assert "targets[db].database: required key is missing" in err
    assert "targets[x]: unknown target type 'telnet'" in err
    assert "Traceback" not in err


UNKNOWN_REVIEW = """
[broker]
listen = "127.0.0.1:{port}"
data_dir = "data"

[oidc]
issuer = "https://idp.example.com"
client_id = "hoopctl"

[[targets]]
name = "prod-db"
type = "sqlite"
path = "/srv/prod.sqlite3"
allowed_groups = ["dba"]
policy = "sql"

[[targets]]
name = "cache-db"
type = "sqlite"
path = "/srv/cache.sqlite3"
allowed_groups = ["dba"]

[policies.sql]
{policy}
"""


def test_unknown_input_that_nobody_can_approve_names_the_key_to_set(tmp_path: Path) -> None:
    """on_unknown = "review" (the default) where no approver group can decide: exit 2, and
    the key that fixes it, for the policy and for the target without a policy."""
    result = check(tmp_path, UNKNOWN_REVIEW.format(port=2222, policy='default = "allow"'))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert len(problems) == 2, result.stderr
    assert problems[0].startswith(
        "targets[cache-db].policy: missing: target cache-db has no policy"
    )
    assert 'unknown_approvers = ["GROUP"]' in problems[0]
    assert problems[1].startswith("policies.sql.unknown_approvers: missing:")
    assert "on target prod-db" in problems[1] and 'on_unknown = "deny"' in problems[1]


@pytest.mark.parametrize(
    "policy",
    [
        'unknown_approvers = ["dba-leads"]',
        'on_unknown = "deny"',
        'on_unknown = "allow"',
    ],
)
def test_unknown_input_with_approvers_or_without_review_passes(tmp_path: Path, policy: str) -> None:
    text = UNKNOWN_REVIEW.format(port=2222, policy=policy)
    # The target without a policy: its access_approvers decide its unknown input.
    text = text.replace(
        'path = "/srv/cache.sqlite3"\n', 'path = "/srv/cache.sqlite3"\naccess_approvers = ["x"]\n'
    )
    result = check(tmp_path, text)
    assert result.returncode == 0, result.stderr


def test_serve_warns_of_unknown_input_nobody_can_approve_but_starts(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(UNKNOWN_REVIEW.format(port=free_port(), policy='default = "allow"'))
    process = subprocess.Popen(
        [HOOP_BROKER, "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        lines = [process.stderr.readline() for _ in range(3)]
    finally:
        process.terminate()
        process.wait(10)
    assert lines[0].startswith("hoop-broker: warning: targets[cache-db].policy: missing"), lines
    assert lines[1].startswith("hoop-broker: warning: policies.sql.unknown_approvers"), lines
    assert "listening on" in lines[2], lines


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    result = check(tmp_path, GOOD + "\n[[targets]\n")
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr and "line" in result.stderr
    assert result.stderr.count("Expected") == 1, result.stderr  # said once


def test_config_errors_suggest_close_matches_in_our_own_words(tmp_path: Path) -> None:
    text = GOOD.replace('listen = "127.0.0.1:2222"', 'lisen = "127.0.0.1:2222"').replace(
        'type = "ssh"', 'type = "shh"'
    )
    result = check(tmp_path, text + '\n[policies.p]\non_unknown = "reveiw"\n')
    assert result.returncode == 2
    assert "broker.lisen: unknown key; did you mean listen?" in result.stderr
    assert "targets[web-1]: unknown target type 'shh'" in result.stderr
    assert "did you mean ssh?" in result.stderr
    assert "policies.p.on_unknown: must be one of allow, deny or review" in result.stderr
    assert "Input should" not in result.stderr


def test_credential_must_be_a_reference_not_a_secret(tmp_path: Path) -> None:
    result = check(tmp_path, GOOD.replace('"file:/etc/hoop/web-1.key"', '"hunter2"'))
    assert result.returncode == 2
    assert "targets[web-1].credential: credential must be a reference" in result.stderr
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


def test_terminal_targets_take_a_guard_grade(tmp_path: Path) -> None:
    """`guard` is "strict" (the default) or "screen" on ssh and local targets alike."""
    assert check(tmp_path, GOOD + 'guard = "screen"\n').returncode == 0
    result = check(tmp_path, GOOD + 'guard = "lenient"\n')
    assert result.returncode == 2
    assert "targets[web-1].guard:" in result.stderr and "strict" in result.stderr


def test_local_target_needs_run_as(tmp_path: Path) -> None:
    local = '\n[[targets]]\nname = "box"\ntype = "local"\n'
    result = check(tmp_path, GOOD + local)
    assert result.returncode == 2
    assert "targets[box].run_as: required key is missing" in result.stderr
    fixed = GOOD + local + 'run_as = "hoop-target"\naccess_approvers = ["leads"]\n'
    assert check(tmp_path, fixed).returncode == 0


@pytest.mark.parametrize(
    "issuer", ["http://127.0.0.1:9000", "http://localhost:8080/realms/x", "http://[::1]:9000"]
)
def test_plain_http_issuer_is_accepted_on_loopback_only(tmp_path: Path, issuer: str) -> None:
    result = check(tmp_path, GOOD.replace("https://idp.example.com", issuer))
    assert result.returncode == 0, result.stderr


def test_hoopctl_version_prints_nothing_on_stderr() -> None:
    """Dependencies' import-time warnings (cryptography's DSA deprecation) stay off stderr."""
    result = subprocess.run([HOOPCTL, "--version"], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, "")


def test_default_scopes_ask_for_the_groups_claim() -> None:
    from broker.config import OidcSection

    section = OidcSection(issuer="https://idp.example.com", client_id="x")
    assert section.groups_claim in section.scopes


def test_hoop_broker_version_and_short_help() -> None:
    from broker import __version__

    version = subprocess.run([HOOP_BROKER, "--version"], capture_output=True, text=True, timeout=30)
    assert (version.returncode, version.stdout.strip()) == (0, f"hoop-broker {__version__}")
    assert version.stderr == "", "library warnings leak onto stderr"
    short = subprocess.run([HOOP_BROKER, "-h"], capture_output=True, text=True, timeout=30)
    assert short.returncode == 0, short.stderr
    assert "serve" in short.stdout and "check-config" in short.stdout


def test_version_is_answered_before_the_command_line_is_built() -> None:
    """`hoopctl --version` (the start-up everyone pays) imports neither typer nor rich."""
    import sys as _sys

    probe = (
        "import sys, runpy; sys.argv = ['hoopctl', '--version']\n"
        "from hoopctl.entry import main; main()\n"
        "print('typer' in sys.modules, 'rich' in sys.modules)"
    )
    result = subprocess.run(
        [_sys.executable, "-c", probe], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"hoopctl {__import__('hoopctl').__version__}",
        "False False",
    ]
