"""`hoopctl connect` to a local bash target through the broker, in a real terminal (pexpect)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from broker.recording import read_events
from tests.helpers import HOOPCTL, BrokerProcess, User, assert_one_line_error, give_to
from tests.terminal_helpers import (
    PROMPT,
    close_shell,
    local_target,
    open_shell,
    recording_of,
    run_line,
    start_terminal_broker,
)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    # One broker for the module: each test works in sessions of its own.
    targets = local_target() + local_target("dba-only", groups='["dba-leads"]')
    process = start_terminal_broker(tmp_path_factory.mktemp("local"), targets)
    yield process
    process.stop()


@pytest.fixture
def sandbox(target_dir: Path) -> Path:
    """A directory the target user owns: its victim could really be deleted by the target."""
    victim = target_dir / "victim"
    victim.mkdir()
    (victim / "data").write_text("precious")
    give_to(target_dir)
    return target_dir


def test_interactive_shell_runs_commands_and_exit_status_becomes_hoopctls(user: User) -> None:
    child = open_shell(user)
    assert "hello-from-target" in run_line(child, "echo hello-from-target")
    child.send("exit 7\r")
    child.expect(r"session \S+ ended")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 7


def test_denied_command_never_runs_and_names_the_rule(
    user: User, sandbox: Path, broker: BrokerProcess
) -> None:
    child = open_shell(user)
    child.send(f"rm -rf {sandbox}/victim\r")
    child.expect(r"denied by rule no-recursive-rm")
    child.expect(PROMPT)
    assert (sandbox / "victim" / "data").exists()
    # The session goes on.
    assert "still-here" in run_line(child, "echo still-here")
    close_shell(child)
    blocked = broker.audit_events("command.blocked")
    assert blocked and blocked[-1]["details"]["rule"] == "no-recursive-rm"
    assert blocked[-1]["details"]["command"] == f"rm -rf {sandbox}/victim"
    assert blocked[-1]["session"] == child.session_id


def test_a_clean_exit_after_a_denied_command_exits_0(user: User, sandbox: Path) -> None:
    # The screen grade throws the denied line away with a Ctrl-C to the shell; that status
    # must not become the session's.
    child = open_shell(user)
    child.send(f"rm -rf {sandbox}/victim\r")
    child.expect(r"denied by rule no-recursive-rm")
    child.expect(PROMPT)
    child.send("exit\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (sandbox / "victim" / "data").exists()


@pytest.mark.parametrize(
    "line",
    [
        "ls; rm -rf {v}; touch {p}",
        "ls && rm -rf {v} && touch {p}",
        "echo $(rm -rf {v}) && touch {p}",
        "echo `rm -rf {v}`; touch {p}",
        "sudo rm -rf {v}; touch {p}",
        "/bin/rm -rf {v}; touch {p}",
        "\\rm -rf {v}; touch {p}",
        "bash -c 'rm -rf {v}'; touch {p}",
        "true | xargs rm -rf {v}; touch {p}",
    ],
)
def test_denied_command_in_every_disguise(user: User, sandbox: Path, line: str) -> None:
    proof = sandbox / "proof"
    child = open_shell(user)
    child.send(line.format(v=sandbox / "victim", p=proof) + "\r")
    child.expect("denied by rule no-recursive-rm")
    child.expect(PROMPT)
    close_shell(child)
    assert (sandbox / "victim" / "data").exists()
    assert not proof.exists()


def test_tab_completed_command_is_judged_as_shown(user: User, sandbox: Path) -> None:
    child = open_shell(user)
    child.send(f"cd {sandbox}\r")
    child.expect(PROMPT)
    child.send("rm -rf vic\t")
    child.expect("victim/")
    child.send("\r")
    child.expect("denied by rule no-recursive-rm")
    child.expect(PROMPT)
    close_shell(child)
    assert (sandbox / "victim" / "data").exists()


def test_history_recalled_command_is_judged(user: User, sandbox: Path) -> None:
    child = open_shell(user)
    run_line(child, f"history -s 'rm -rf {sandbox}/victim'")
    child.send("\x1b[A")  # arrow up
    child.expect("rm -rf")
    child.send("\r")
    child.expect("denied by rule no-recursive-rm")
    child.expect(PROMPT)
    close_shell(child)
    assert (sandbox / "victim" / "data").exists()


def test_pasted_block_is_judged_line_by_line(user: User, sandbox: Path) -> None:
    child = open_shell(user)
    first, last = sandbox / "first", sandbox / "last"
    child.send(f"touch {first}\rrm -rf {sandbox}/victim\rtouch {last}\r")
    child.expect("denied by rule no-recursive-rm")
    deadline = time.monotonic() + 10
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    close_shell(child)
    assert first.exists() and last.exists()
    assert (sandbox / "victim" / "data").exists()


def test_ctrl_c_then_denied_command(user: User, sandbox: Path) -> None:
    child = open_shell(user)
    child.send("ls")
    child.sendcontrol("c")
    child.expect(PROMPT)
    child.send(f"rm -rf {sandbox}/victim\r")
    child.expect("denied by rule no-recursive-rm")
    close_shell(child)
    assert (sandbox / "victim" / "data").exists()


def test_review_without_approvals_does_not_run(user: User, broker: BrokerProcess) -> None:
    child = open_shell(user)
    child.send("reboot --help\r")
    child.expect("approval required from approvers")
    child.expect(PROMPT)
    close_shell(child)
    assert broker.audit_events("approval.requested")


def test_ctrl_c_reaches_a_running_program(user: User) -> None:
    child = open_shell(user)
    # The program prints once it runs, so it already holds the terminal's foreground when
    # ^C comes (bash's own printf would race the hand-over of the terminal to `sleep`).
    child.send("sh -c 'echo running; exec sleep 30'\r")
    child.expect("running\r\n")
    started = time.monotonic()
    child.sendcontrol("c")
    child.expect(PROMPT)
    assert time.monotonic() - started < 25  # `sleep 30` was interrupted, not waited for
    close_shell(child)


def test_one_off_command_with_pty(user: User) -> None:
    result = user.spawn("connect", "shell", "--", "bash", "-c", "tty; exit 5")
    result.expect("/dev/pts/")
    result.expect(pexpect.EOF)
    result.close()
    assert result.exitstatus == 5


def test_one_off_denied_command_exits_3(user: User, sandbox: Path) -> None:
    result = user.run("connect", "shell", "--", "rm", "-rf", str(sandbox / "victim"))
    assert result.returncode == 3
    assert "denied by rule no-recursive-rm" in result.stderr
    assert (sandbox / "victim" / "data").exists()


def test_user_not_in_allowed_groups_is_refused_and_audited(
    user: User, broker: BrokerProcess
) -> None:
    result = user.run("connect", "dba-only", "--", "true")
    assert result.returncode == 1
    assert "no target 'dba-only' is open to you" in result.stderr
    rejected = broker.audit_events("session.rejected")
    assert rejected and rejected[-1]["actor"] == "alice" and rejected[-1]["target"] == "dba-only"


def test_unknown_target_is_refused(user: User) -> None:
    result = user.run("connect", "nope", "--", "true")
    assert result.returncode == 1
    # The broker's refusal is shown as hoopctl's own one-line error.
    assert_one_line_error(result, "no target 'nope'")


def test_session_is_recorded_as_asciicast(user: User, broker: BrokerProcess) -> None:
    child = open_shell(user, "shell", "--reason", "INC-42 investigating")
    run_line(child, "echo recorded-output-marker")
    close_shell(child)
    header, events = read_events(recording_of(broker, child.session_id))
    assert header["version"] == 2
    assert header["hoop"]["user"] == "alice" and header["hoop"]["target"] == "shell"
    assert header["width"] == 200 and header["height"] == 40
    output = "".join(data for _, kind, data in events if kind == "o")
    typed = "".join(data for _, kind, data in events if kind == "i")
    assert "recorded-output-marker" in output
    assert "echo recorded-output-marker" in typed
    marks = [data for _, kind, data in events if kind == "m"]
    assert "command: echo recorded-output-marker" in marks
    starts = broker.audit_events("session.start")
    assert starts[-1]["details"]["reason"] == "INC-42 investigating"
    ends = broker.audit_events("session.end")
    assert ends[-1]["session"] == child.session_id and ends[-1]["details"]["exit_status"] == 0


def test_password_typed_without_echo_is_redacted(user: User, broker: BrokerProcess) -> None:
    child = open_shell(user)
    child.send("read -s -p 'Password: ' secret; echo got-${#secret}\r")
    child.expect("Password: ")
    child.send("hunter2-very-secret\r")
    child.expect("got-19")
    child.expect(PROMPT)
    close_shell(child)
    _, events = read_events(recording_of(broker, child.session_id))
    everything = json.dumps(events)
    assert "hunter2" not in everything
    assert "*" * 19 in "".join(data for _, kind, data in events if kind == "i")


def test_resize_reaches_the_target_and_the_recording(user: User, broker: BrokerProcess) -> None:
    child = open_shell(user)
    child.setwinsize(30, 100)
    time.sleep(0.3)
    child.send("tput cols\r")
    child.expect(r"\b100\r\n")
    child.expect(PROMPT)
    close_shell(child)
    _, events = read_events(recording_of(broker, child.session_id))
    assert ("r", "100x30") in [(kind, data) for _, kind, data in events]


def test_not_logged_in_connect_is_one_line_error(tmp_path: Path, broker: BrokerProcess) -> None:
    stranger = User(tmp_path / "stranger")
    result = stranger.run("connect", "shell", "--broker", broker.address)
    assert_one_line_error(result, "not")


def test_exec_runs_a_command_without_a_pty_keeping_stderr_apart(
    user: User, broker: BrokerProcess
) -> None:
    result = user.run("exec", "shell", "--", "sh", "-c", "tty; echo out; echo err >&2; exit 9")
    assert result.returncode == 9
    assert "not a tty" in result.stdout and "out" in result.stdout
    assert "err" in result.stderr and "err" not in result.stdout
    starts = broker.audit_events("session.start")
    assert starts[-1]["details"]["kind"] == "exec"


def test_exec_denied_command_exits_3_and_never_runs(user: User, sandbox: Path) -> None:
    result = user.run("exec", "shell", "--", "rm", "-rf", str(sandbox / "victim"))
    assert result.returncode == 3
    assert "denied by rule no-recursive-rm" in result.stderr
    assert (sandbox / "victim" / "data").exists()


def test_piped_input_is_judged_and_the_session_ends_with_it(user: User, sandbox: Path) -> None:
    """Input from a pipe runs as a script through the same guardrails; its end ends the shell."""
    proof = sandbox / "piped"
    script = f"echo piped-ok\ntouch {proof}\nrm -rf {sandbox}/victim\n"
    result = user.run("connect", "shell", input=script, timeout=60)
    assert "piped-ok\n" in result.stdout.replace("\r", ""), repr(result.stdout)
    assert proof.exists()
    assert (sandbox / "victim" / "data").exists()  # the denied line never ran
    assert "denied by rule" in result.stdout + result.stderr


def test_one_off_command_with_stdin_from_dev_null(user: User) -> None:
    result = subprocess.run(
        [HOOPCTL, "connect", "shell", "--", "echo", "inside"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=user.env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "inside" in result.stdout
