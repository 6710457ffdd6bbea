"""The committed shell completions match what hoopctl's Typer app generates, and they complete."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pexpect
import pytest

from tests.helpers import BIN, REPO, User
from tests.terminal_helpers import local_target, start_terminal_broker

COMPLETIONS = REPO / "completions"
GENERATOR = REPO / "scripts" / "gen_completions.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_completions", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


def shell_env(tmp_path: Path) -> dict[str, str]:
    """A shell whose PATH finds this venv's hoopctl first, with a throwaway home."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HOOP_", "_HOOPCTL_", "_TYPER_", "XDG_", "BASH_ENV", "ZDOTDIR"))
    }
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        HOME=str(home),
        ZDOTDIR=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        TERM="dumb",
    )
    return env


@pytest.mark.parametrize("shell", gen.SHELLS)
def test_committed_completion_matches_generated(shell: str) -> None:
    path = gen.target(shell)
    fresh = gen.generate(shell)
    assert path.exists(), f"{path.relative_to(REPO)} is missing: run `make completions`"
    assert path.read_text(encoding="utf-8") == fresh, (
        f"{path.relative_to(REPO)} is stale (differs from what hoopctl's Typer app generates): "
        "run `make completions`"
    )


def test_generated_scripts_are_portable() -> None:
    for shell in gen.SHELLS:
        text = gen.generate(shell)
        assert str(REPO) not in text and sys.prefix not in text, shell
        assert "hoopctl" in text and "_HOOPCTL_COMPLETE=complete_" in text, shell
    assert gen.generate("zsh").startswith("#compdef hoopctl\n")


def test_check_mode_names_stale_files_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "completions"
    shutil.copytree(COMPLETIONS, out)
    check = [sys.executable, str(GENERATOR), "--check", "--out-dir", str(out)]
    assert subprocess.run(check, capture_output=True, text=True).returncode == 0

    (out / "hoopctl.fish").write_text("# edited by hand\n")
    (out / "hoopctl.zsh").unlink()
    result = subprocess.run(check, capture_output=True, text=True)
    assert result.returncode == 1
    assert "hoopctl.fish" in result.stderr and "hoopctl.zsh" in result.stderr
    assert "hoopctl.bash" not in result.stderr
    assert "make completions" in result.stderr
    assert (out / "hoopctl.fish").read_text() == "# edited by hand\n"
    assert not (out / "hoopctl.zsh").exists()


def _bash_complete(tmp_path: Path, *words: str, env: dict[str, str] | None = None) -> list[str]:
    """Source the bash script and call its completion function as bash would on TAB."""
    quoted = " ".join(f"'{word}'" for word in words)
    script = (
        f"source '{COMPLETIONS / 'hoopctl.bash'}'\n"
        "complete -p hoopctl >/dev/null || exit 3\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
        '_hoopctl_completion hoopctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        env=env or shell_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completes_commands_and_options(tmp_path: Path) -> None:
    assert _bash_complete(tmp_path, "hoopctl", "lo") == ["login", "logout"]
    assert _bash_complete(tmp_path, "hoopctl", "ssh") == ["ssh-config"]
    assert "--no-browser" in _bash_complete(tmp_path, "hoopctl", "login", "--no")
    assert set(_bash_complete(tmp_path, "hoopctl", "whoami", "--output", "")) == {"table", "json"}


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_commands(tmp_path: Path) -> None:
    script = (
        f"source '{COMPLETIONS / 'hoopctl.fish'}'\n"
        "complete -C 'hoopctl lo'\n"
        "echo ---\n"
        "complete -C 'hoopctl whoami --output '\n"
    )
    result = subprocess.run(
        ["fish", "--no-config", "-c", script],
        env=shell_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    commands, _, values = result.stdout.partition("---\n")
    offered = [line.split("\t")[0] for line in commands.splitlines()]
    assert offered == ["login", "logout"], result.stdout
    assert "Log in with your identity provider" in commands
    assert {line.split("\t")[0] for line in values.splitlines()} == {"table", "json"}


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completes_commands_on_tab(tmp_path: Path) -> None:
    """Drive an interactive zsh: compinit, source the script, press TAB."""
    child = pexpect.spawn(
        "zsh",
        ["-f", "-i"],
        env=shell_env(tmp_path),
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=30,
        dimensions=(24, 200),
    )
    try:
        child.sendline(
            "PS1='READY> '; autoload -Uz compinit && compinit -u -D; "
            f"source '{COMPLETIONS / 'hoopctl.zsh'}'; print -r -- SOURCED${{_comps[hoopctl]}}"
        )
        child.expect("SOURCED_hoopctl_completion\r\n")
        child.expect("READY> ")
        # One TAB inserts the common prefix, a second lists both commands with their help.
        child.send("hoopctl lo\t")
        child.expect("hoopctl log")
        child.send("\t")
        child.expect(r"login\s+-- Log in with your identity provider")
        child.expect(r"logout\s+-- Remove the certificate")
        child.send("\x15")  # erase the line
        child.send("hoopctl whoa\t")
        child.expect("hoopctl whoami ")
        child.sendline("\x15exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_tab_offers_the_targets_sessions_and_requests_last_listed_even_with_the_broker_down(
    tmp_path: Path,
) -> None:
    broker = start_terminal_broker(
        tmp_path,
        local_target("shell")
        + local_target("staging-web")
        + local_target("prod-api", extra='access = "request"\naccess_approvers = ["approvers"]'),
    )
    alice = User(tmp_path / "alice")
    try:
        assert alice.login(broker).returncode == 0
        # Nothing listed yet: nothing offered (and no error on the screen).
        env = {**alice.env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        assert _bash_complete(tmp_path, "hoopctl", "connect", "", env=env) == []
        assert alice.run("targets").returncode == 0
        ran = alice.run("exec", "shell", "--", "echo", "hi")
        assert ran.returncode == 0, ran.stderr
        (session,) = [row["id"] for row in json.loads(alice.run("sessions", "-o", "json").stdout)]
        asked = alice.run("request", "prod-api", "--for", "30m", "--reason", "deploy")
        assert asked.returncode == 0, asked.stderr
        (request,) = [row["id"] for row in json.loads(alice.run("requests", "-o", "json").stdout)]
    finally:
        broker.stop()
    # The broker is gone: what TAB offers comes from the cache the listings wrote.
    offered = set(_bash_complete(tmp_path, "hoopctl", "connect", "", env=env))
    assert {"shell", "staging-web", "prod-api"} <= offered
    assert _bash_complete(tmp_path, "hoopctl", "exec", "st", env=env) == ["staging-web"]
    assert _bash_complete(tmp_path, "hoopctl", "replay", session[:9], env=env) == [session]
    assert _bash_complete(tmp_path, "hoopctl", "sessions", "show", "", env=env) == [session]
    assert _bash_complete(tmp_path, "hoopctl", "approve", request[:3], env=env) == [request]
    # Another broker's names are not offered.
    other = {**env, "HOOP_BROKER": "127.0.0.1:1"}
    assert _bash_complete(tmp_path, "hoopctl", "connect", "", env=other) == []


FAST_CASES = [
    ("connect",),
    ("connect", "st"),
    ("exec", "pr"),
    ("request", ""),
    ("replay", "2026"),
    ("sessions", "show", ""),
    ("approve", "a"),
    ("connect", "--re"),  # an option: Typer answers
    ("lo",),
    ("sessions", ""),
]


@pytest.mark.parametrize("words", FAST_CASES, ids=" ".join)
def test_the_fast_answer_to_a_tab_is_the_one_typer_gives(
    tmp_path: Path, words: tuple[str, ...]
) -> None:
    """hoopctl.fast_complete answers cached names before Typer loads; it must agree with it."""
    home = tmp_path / "home"
    cache = home / ".cache" / "hoopctl" / "completion.json"
    cache.parent.mkdir(parents=True)
    entry = {
        "targets": ["staging-web", "prod-api", "it's:odd$`name\"", "shell"],
        "sessions": ["20261206-0123456789ab", "20261205-ba9876543210"],
        "requests": ["a1b2c3d4e5", "ffeeddccbb"],
    }
    cache.write_text(json.dumps({"brokers": {"127.0.0.1:2222": entry}}))
    env = {**shell_env(tmp_path), "HOOP_BROKER": "127.0.0.1:2222"}
    line = "hoopctl " + " ".join(words)
    requests = {
        "bash": {"COMP_WORDS": line, "COMP_CWORD": str(len(words))},
        "zsh": {"_TYPER_COMPLETE_ARGS": line},
    }
    for shell, extra in requests.items():
        ask = {**env, **extra, "_HOOPCTL_COMPLETE": f"complete_{shell}"}
        fast = subprocess.run([BIN / "hoopctl"], env=ask, capture_output=True, text=True)
        full = subprocess.run(
            [BIN / "hoopctl"],
            env={**ask, "_HOOPCTL_FULL_COMPLETE": "1"},
            capture_output=True,
            text=True,
        )
        assert (fast.returncode, fast.stdout) == (full.returncode, full.stdout), (shell, words)
        assert fast.stderr == "" and full.stderr == ""
    if words[0] in ("connect", "exec") and not words[-1].startswith("-"):
        assert fast.stdout.strip() != "_files"  # names were offered, not files
