"""Shared set-up for replay tests: real recordings made through a broker, synthetic ones,
a tmux terminal to play them in, and the screen a recording shows at a given time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pexpect
import pyte

from tests.helpers import REPO, User
from tests.terminal_helpers import PROMPT, local_target, open_shell, run_line, start_terminal_broker

PYTHON = sys.executable
FULLSCREEN_ON = "printf '\\033[?1049h\\033[H\\033[2JFULLSCREEN-VIEW\\n'; sleep 1.5"


def record_real_session(workdir: Path) -> Path:
    """Run a shell session through a real broker (local bash target, pexpect terminal of
    200x40) and return a copy of its recording. The session types, in order:
    ``echo hello-replay``, a red ``printf``, ``seq 1 60; sleep 2`` (scrolls, then a quiet
    screen for 2 s), a denied ``rm -rf``, a full-screen episode on the alternate screen
    (quiet for 1.5 s), and ``echo after-fullscreen``."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = start_terminal_broker(workdir, local_target())
    try:
        user = User(workdir / "alice")
        assert user.login(broker).returncode == 0
        child = open_shell(user)
        assert "hello-replay" in run_line(child, "echo hello-replay")
        run_line(child, "printf '\\033[31mred-text\\033[0m\\n'")
        run_line(child, "seq 1 60; sleep 2")
        child.send("rm -rf /tmp/hoop-replay-nothing\r")
        child.expect("denied by rule no-recursive-rm")
        child.expect(PROMPT)
        child.send(FULLSCREEN_ON + "; printf '\\033[?1049l'\r")
        child.expect("FULLSCREEN-VIEW")
        child.expect(PROMPT)
        run_line(child, "echo after-fullscreen")
        child.send("exit\r")
        child.expect(pexpect.EOF)
        child.close()
        source = broker.data_dir / "recordings" / f"{child.session_id}.cast"
    finally:
        broker.stop()
    target = workdir / "real.cast"
    shutil.copyfile(source, target)
    return target


def record_with_asciinema(path: Path, command: str) -> Path:
    """A recording made by asciinema itself (`asciinema rec`), not by the broker."""
    subprocess.run(
        ["asciinema", "rec", "--quiet", "--command", command, str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    return path


def write_cast(
    path: Path,
    events: Iterable[tuple[float, str, str]],
    *,
    width: int = 80,
    height: int = 24,
    tail: str = "",
) -> Path:
    """An asciicast v2 file with these events; ``tail`` is appended raw (for damage)."""
    lines = [json.dumps({"version": 2, "width": width, "height": height})]
    lines += [json.dumps([time, code, data]) for time, code, data in events]
    path.write_text("\n".join(lines) + "\n" + tail, encoding="utf-8")
    return path


def events_of(path: Path) -> list[tuple[float, str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [tuple(json.loads(line)) for line in lines[1:] if line.strip()]  # type: ignore[misc]


def expected_screen(path: Path, time: float) -> list[str]:
    """The screen at ``time`` by plain pyte fed from the very start (no index, no keyframes):
    what the player's rebuilt screen is checked against."""
    header = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    screen = pyte.Screen(header["width"], header["height"])
    stream = pyte.Stream(screen)
    for at, code, data in events_of(path):
        if at > time:
            break
        if code == "o":
            stream.feed(data)
        elif code == "r":
            cols, rows = (int(part) for part in data.split("x"))
            screen.resize(rows, cols)
    return [line.rstrip() for line in screen.display]


def event_time(path: Path, needle: str, code: str = "o") -> float:
    """The time of the first event of ``code`` whose data contains ``needle``."""
    for at, kind, data in events_of(path):
        if kind == code and needle in data:
            return at
    raise AssertionError(f"no {code} event with {needle!r} in {path}")


class Tmux:
    """A private tmux server with one window running a command: a real terminal whose
    screen the test reads (``capture-pane``) and types into (``send-keys``)."""

    def __init__(
        self,
        workdir: Path,
        command: list[str],
        *,
        width: int,
        height: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.socket = workdir / f"tmux-{time.monotonic_ns()}.sock"
        exports = " ".join(f"{key}={_quote(value)}" for key, value in (env or {}).items())
        line = " ".join(_quote(part) for part in command)
        shell = f"cd {_quote(str(REPO))} && {exports} {line}; echo EXIT=$?; sleep 600"
        self._tmux("new-session", "-d", "-x", str(width), "-y", str(height), "-s", "replay", shell)

    def _tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return result.stdout

    def screen(self, *, attributes: bool = False) -> list[str]:
        """The lines of the screen (with ``attributes``: with their SGR sequences)."""
        args = ["capture-pane", "-p", "-t", "replay"] + (["-e"] if attributes else [])
        return [line.rstrip() for line in self._tmux(*args).split("\n")][:-1]

    def state(self) -> tuple[int, int, bool]:
        """Cursor column, cursor row, and whether the alternate screen is on."""
        x, y, alt = self._tmux(
            "display-message", "-p", "-t", "replay", "#{cursor_x} #{cursor_y} #{alternate_on}"
        ).split()
        return int(x), int(y), alt == "1"

    def wait_for(self, text: str, timeout: float = 20.0) -> list[str]:
        """The screen once ``text`` is on it (polled; fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if any(text in line for line in screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never showed; the screen:\n" + "\n".join(screen))
            time.sleep(0.05)

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "replay", *keys)

    def exit_status(self, timeout: float = 20.0) -> int:
        screen = self.wait_for("EXIT=", timeout)
        line = next(line for line in screen if "EXIT=" in line)
        return int(line.split("EXIT=")[1].split()[0])

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=20
        )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def output_until(path: Path, time: float, target: Path) -> Path:
    """Every output byte of the recording up to ``time``, as one file (for ``cat``)."""
    data = "".join(data for at, code, data in events_of(path) if code == "o" and at <= time)
    target.write_bytes(data.encode("utf-8", "replace"))
    return target


def reference_terminal(
    workdir: Path, raw: Path, *, width: int, height: int, finished: bool = False
) -> Tmux:
    """A tmux window that was sent ``raw`` as it is (no output processing), from a clean
    screen: the real terminal the player's rebuilt screen must equal. ``finished``: then
    also what the player writes when it ends (a new line) and the ``EXIT=0`` line."""
    end = "printf '\\r\\n'; stty opost; echo EXIT=0; " if finished else ""
    script = f"stty -opost; printf '\\033[H\\033[2J'; cat {_quote(str(raw))}; {end}sleep 600"
    return Tmux(workdir, ["sh", "-c", script], width=width, height=height)


def replay_command(*args: str) -> list[str]:
    return [PYTHON, "-m", "hoopctl.replay", *args]


def spawn_replay(
    *args: str, env: dict[str, str] | None = None, width: int = 80, height: int = 24
) -> pexpect.spawn:
    """``python -m hoopctl.replay ARGS`` in a pexpect terminal (stderr shares the terminal)."""
    return pexpect.spawn(
        PYTHON,
        ["-m", "hoopctl.replay", *args],
        cwd=str(REPO),
        env=env,
        encoding="utf-8",
        timeout=20,
        dimensions=(height, width),
    )
