"""The house's shape (docs/architecture.md): floors that only look down, and a fast client."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import BIN, REPO

LINT_IMPORTS = BIN / "lint-imports"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(root / ".importlinter"), "--no-cache"],
        cwd=root,
        env={"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    # The check can fail: a copy where the store (a low floor) names the Broker, even only
    # for type checking, is refused.
    root = tmp_path / "copy"
    for name in ("broker", "hoopctl"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", root / ".importlinter")
    store = root / "broker" / "store.py"
    text = store.read_text()
    store.write_text(
        text.replace(
            "from __future__ import annotations\n",
            "from __future__ import annotations\n\nfrom typing import TYPE_CHECKING\n\n"
            "if TYPE_CHECKING:\n    from broker.app import Broker\n",
            1,
        )
    )
    result = _lint_imports(root)
    assert result.returncode == 1, result.stdout
    assert "broker.store is not allowed to import broker.app" in result.stdout


def _run_probe(probe: str) -> list[str]:
    """PROBE's output lines, run in a fresh interpreter from the repository root."""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_hoopctl_version_loads_nothing_that_talks_to_the_broker() -> None:
    probe = (
        "import sys\n"
        "sys.argv = ['hoopctl', '--version']\n"
        "from hoopctl.entry import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('asyncssh', 'authlib', 'joserfc', 'httpx2', 'pyte', 'keyring', 'asyncio')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    assert _run_probe(probe) == ["hoopctl 0.1.0", "[]"]


def test_commands_that_connect_load_no_oidc_client_until_a_renewal() -> None:
    # Only renewing an expired certificate talks to the identity provider; authlib and httpx
    # cost every command that connects a tenth of a second or more of start-up.
    probe = (
        "import sys\n"
        "import hoopctl.cli, hoopctl.session, hoopctl.exec_relay, hoopctl.transport\n"
        "hoopctl.commands.load()\n"
        "print(sorted(name for name in ('authlib', 'httpx2') if name in sys.modules))\n"
        "import asyncio\nfrom hoopctl.session import renew\n"
        "class Store:\n"
        "    address = 'broker.example:2222'\n"
        "    def refresh_token(self):\n        return 'r'\n"
        "class Profile:\n"
        "    token_endpoint = 'http://127.0.0.1:9/token'\n    client_id = 'hoopctl'\n"
        "try:\n    asyncio.run(renew(Store(), Profile()))\nexcept Exception as exc:\n"
        "    print(type(exc).__name__)\n"
        "print(sorted(name for name in ('authlib', 'httpx2') if name in sys.modules))\n"
    )
    assert _run_probe(probe) == ["[]", "LoginError", "['authlib', 'httpx2']"]


def test_a_command_line_is_parsed_without_pydantic(tmp_path: Path) -> None:
    # typer 0.29 imports pydantic and builds a validator for every parameter: 75 ms more on
    # every hoopctl command (bench/README.md), so typer is kept below it.
    probe = (
        "import os, sys\n"
        f"os.environ['HOME'] = {str(tmp_path)!r}\n"
        f"os.environ['XDG_CONFIG_HOME'] = {str(tmp_path / 'config')!r}\n"
        "sys.argv = ['hoopctl', 'exec', 'prod-db', '--output', 'csv', '-c', 'select 1']\n"
        "from hoopctl.cli import main\n"  # not entry.main, which leaves with os._exit
        "try:\n    main()\nexcept SystemExit as exc:\n    print('exit', exc.code)\n"
        "print('typer' in sys.modules, 'pydantic' in sys.modules)\n"
    )
    # The command ran (no broker is configured, so it stops there) and pydantic stayed out.
    assert _run_probe(probe) == ["exit 2", "True False"]


def test_a_command_line_loads_only_the_command_it_names() -> None:
    # Every command's module, and Typer building each one's parser, cost a named command
    # about 35-40 ms of start-up (bench/README.md).
    probe = (
        "import sys\n"
        "sys.argv = ['hoopctl', 'exec', '--help']\n"
        "from hoopctl.cli import main\n"  # not entry.main, which leaves with os._exit
        "try:\n    main(named='exec')\nexcept SystemExit as exc:\n    print('exit', exc.code)\n"
        "print(sorted(name for name in sys.modules if name.startswith('hoopctl.commands.')))\n"
    )
    lines = _run_probe(probe)
    assert "Usage: hoopctl exec" in " ".join(lines[0:3])
    assert lines[-2:] == ["exit 0", "['hoopctl.commands.exec']"]


def test_the_client_loads_asyncssh_without_x509() -> None:
    # hoopctl uses OpenSSH keys and certificates only; asyncssh's optional X.509 support
    # (cryptography's x509 package) cost every connecting command about 15-30 ms of start-up.
    probe = (
        "import sys\n"
        "import hoopctl.cli, hoopctl.credentials, hoopctl.exec_relay, hoopctl.session\n"
        "import hoopctl.transport, asyncssh\n"
        "hoopctl.commands.load()\n"
        "print(any(name.startswith('cryptography.x509') for name in sys.modules))\n"
        "from asyncssh.public_key import _x509_available\n"
        "print(_x509_available)\n"
    )
    assert _run_probe(probe) == ["False", "False"]


def test_commands_that_only_relay_bytes_load_no_rich() -> None:
    # `exec`, `connect` and `proxy` print nothing through rich (the broker renders tables);
    # rich costs every such command about 25 ms of start-up. Its consoles are made on first use.
    probe = (
        "import sys\n"
        "import hoopctl.cli, hoopctl.credentials, hoopctl.exec_relay, hoopctl.session\n"
        "import hoopctl.transport\n"
        "hoopctl.commands.load()\n"
        "print('rich' in sys.modules)\n"
        "from hoopctl.output import stderr\n"
        "stderr.print('shown', style='bold')\n"
        "print('rich' in sys.modules)\n"
    )
    assert _run_probe(probe) == ["False", "True"]
