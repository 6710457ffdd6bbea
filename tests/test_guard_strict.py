"""The strict terminal guard, end to end, as an attacker at the keyboard would try it.

One broker and one real sshd for the module. Targets: `shell` (local, run as hoop-target)
and `web` (ssh) under a policy that denies `rm -r`/`rm -f` in any spelling and denies what it
cannot tell; `shell-lax` and `web-lax` allow what the policy cannot tell, to show that the
design (the broker owns the command line, the shell reads no terminal) stops an attack, not
the policy. Every attack proves on the target that nothing ran: a sentinel directory with a
file inside must still exist, and no command naming it was allowed in the audit log.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import secrets
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pexpect
import pyte
import pytest

from broker.recording import read_events
from tests.helpers import BrokerProcess, User, free_port, start_broker
from tests.sshd_harness import SshdServer, sshd_available, start_sshd
from tests.strict_helpers import (
    CTRL_C,
    DENIED,
    REFUSED,
    STRICT_PROMPT,
    TARGET_USER,
    UP,
    Sandbox,
    alive,
    allowed_commands,
    assert_survived,
    bracketed,
    close,
    ensure_target_user,
    guard_policy,
    helper_of,
    local_guard_target,
    open_strict,
    pids_running,
    quiet,
    resync,
    run_as_supported,
    run_line,
    session_events,
    ssh_guard_target,
    strict_config,
    verify_session,
    wait_session_end,
)

pytestmark = pytest.mark.skipif(not sshd_available(), reason="OpenSSH sshd is not installed")

LOCAL = run_as_supported()
_NO_LOCAL = pytest.mark.skipif(
    not LOCAL, reason="local targets have no run_as key yet (broker/config.py)"
)
TARGETS = [pytest.param("shell", marks=_NO_LOCAL), "web"]
LAX_TARGETS = [pytest.param("shell-lax", marks=_NO_LOCAL), "web-lax"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    if LOCAL:
        problem = ensure_target_user()
        if problem:
            pytest.fail(problem)
    box = Sandbox.create()
    yield box
    box.remove()


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, sshd: SshdServer, sandbox: Sandbox
) -> Iterator[BrokerProcess]:
    workdir = tmp_path_factory.mktemp("broker")
    targets = ssh_guard_target("web", sshd, "guard") + ssh_guard_target("web-lax", sshd, "lax")
    if LOCAL:
        targets += local_guard_target("shell", "guard") + local_guard_target("shell-lax", "lax")
    targets += guard_policy("guard", "deny") + guard_policy("lax", "allow")
    config = strict_config(
        workdir / "data", port=free_port(), dev_port=free_port(), targets=targets
    )
    process = start_broker(workdir, config)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def person(tmp_path_factory: pytest.TempPathFactory, broker: BrokerProcess) -> User:
    alice = User(tmp_path_factory.mktemp("alice"))
    result = alice.login(broker)
    assert result.returncode == 0, result.stderr
    return alice


@pytest.fixture
def session(person: User, request: pytest.FixtureRequest) -> Iterator[pexpect.spawn]:
    """One strict session on the test's target (its `target` parameter)."""
    child = open_strict(person, request.node.callspec.params["target"])
    yield child
    if child.isalive():
        child.terminate(force=True)


def _settle(broker: BrokerProcess, child: pexpect.spawn, sentinel: Path, **kw: object) -> None:
    """After an attack: back to a fresh prompt, a judged command runs, the sentinel is there,
    nothing naming it was allowed; the session ends normally."""
    resync(child)
    assert_survived(broker, child.session_id, sentinel, **kw)  # type: ignore[arg-type]
    assert close(child) == 0


# In a list of chunks: wait here until the input typed so far has been taken and a new prompt
# has begun (prompt_toolkit turns bracketed paste on at the start of each prompt, not at its
# redraws), so that what follows is typed at that prompt, not ahead while a command runs.
NEXT_PROMPT = "\x00next-prompt"


def _type(
    child: pexpect.spawn, chunks: list[str | float], sentinel: Path, pause: float = 0.05
) -> None:
    """Send each chunk ({S}: the sentinel) after a short pause; a number is a longer pause."""
    for chunk in chunks:
        if isinstance(chunk, float):
            time.sleep(chunk)
            continue
        if chunk == NEXT_PROMPT:
            child.expect_exact("\x1b[?2004h", timeout=20)
            continue
        child.send(chunk.format(S=sentinel))
        time.sleep(pause)


def _attack(
    sandbox: Sandbox,
    child: pexpect.spawn,
    label: str,
    chunks: list[str | float],
    *,
    refused: bool = True,
) -> Path:
    """Type one attack against a fresh sentinel; with REFUSED, the broker must say so."""
    sentinel = sandbox.sentinel(label)
    _typed_attack(child, sentinel, chunks, refused=refused)
    return sentinel


def _typed_attack(
    child: pexpect.spawn, sentinel: Path, chunks: list[str | float], *, refused: bool = True
) -> None:
    """Type one attack against SENTINEL; with REFUSED, the broker must say so."""
    _type(child, chunks, sentinel)
    if refused:
        child.expect(REFUSED, timeout=20)
        child.expect(STRICT_PROMPT, timeout=20)


def _variations(
    broker: BrokerProcess,
    sandbox: Sandbox,
    child: pexpect.spawn,
    label: str,
    variations: dict[str, list[str | float]],
    *,
    refused: set[str] | None = None,
    allowed: dict[str, list[str]] | None = None,
) -> None:
    """Each variation in turn in one session, a sentinel of its own each time; every one that
    is not refused (those in REFUSED, all when None), deleted its sentinel or got a command
    naming it allowed (but those in ALLOWED, harmless as run) is listed in one failure."""
    problems = []
    for name, chunks in variations.items():
        must_refuse = refused is None or name in refused
        sentinel = sandbox.sentinel(f"{label}-{name}")
        try:
            _typed_attack(child, sentinel, chunks, refused=must_refuse)
        except pexpect.TIMEOUT:
            problems.append(
                f"{name}: no refusal shown; the screen ended with {child.before[-600:]!r}"
            )
        resync(child, pause=0.05)
        if not sentinel.is_dir():
            problems.append(f"{name}: THE SENTINEL WAS DELETED")
        harmless = {a.format(S=sentinel) for a in (allowed or {}).get(name, [])}
        ran = [
            c
            for c in allowed_commands(broker, child.session_id)
            if str(sentinel) in c and c not in harmless
        ]
        if ran:
            problems.append(f"{name}: allowed to run {ran!r}")
    assert close(child) == 0
    assert not problems, "\n".join(problems)


# -- the session itself -------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_the_shell_runs_as_the_targets_user_and_carries_the_exit_status(
    broker: BrokerProcess, sshd: SshdServer, session: pexpect.spawn, target: str
) -> None:
    user = TARGET_USER if target == "shell" else sshd.user
    assert f"user={user}" in run_line(session, "echo user=$(id -un)")
    session.send("exit 4\r")
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 4
    _, events = read_events(broker.data_dir / "recordings" / f"{session.session_id}.cast")
    assert ("m", "command: echo user=$(id -un)") in [(kind, data) for _, kind, data in events]
    start = session_events(broker, session.session_id, "session.start")
    assert start and start[-1]["details"]["guard"] == "strict"


@pytest.mark.parametrize("target", TARGETS)
def test_exit_with_a_stopped_job_warns_once_then_leaves(
    session: pexpect.spawn, target: str
) -> None:
    """As in bash: the first `exit` says there are stopped jobs, the second one leaves."""
    session.send("sleep 31.5\r")
    time.sleep(0.5)
    session.send("\x1a")  # Ctrl-Z
    session.expect("Stopped")
    session.expect(STRICT_PROMPT)
    session.send("exit 3\r")
    session.expect("There are stopped jobs")
    session.expect(STRICT_PROMPT)
    session.send("exit 3\r")
    session.expect(pexpect.EOF, timeout=10)
    session.close()
    assert session.exitstatus == 3
    assert not pids_running("sleep", "31.5")


@pytest.mark.parametrize("target", TARGETS)
def test_a_clean_exit_after_a_denied_command_exits_0(
    session: pexpect.spawn, sandbox: Sandbox, target: str
) -> None:
    survivor = sandbox.sentinel("exit-after-deny")
    run_line(session, "true")
    shown = run_line(session, f"rm -rf {survivor.parent}")
    assert DENIED in shown
    session.send("exit\r")
    session.expect(pexpect.EOF, timeout=10)
    session.close()
    assert session.exitstatus == 0
    assert survivor.exists()


# -- 1. keys other than Enter ---------------------------------------------------------------
KEYS = {
    "ctrl-o": ["rm -rf {S}", "\x0f"],
    "ctrl-j": ["rm -rf {S}", "\n"],
    "ctrl-m": ["rm -rf {S}", "\r"],
    "esc-enter": ["rm -rf {S}", "\x1b\r"],
}
MORE_KEYS = {
    "cr-lf-in-one-write": ["rm -rf {S}\r\n"],
    "esc-ctrl-j": ["rm -rf {S}", "\x1b\n"],
    "ctrl-v-ctrl-j-inside": ["echo safe\x16\nrm -rf {S}", "\r"],
    "ctrl-v-ctrl-m-inside": ["echo safe\x16\rrm -rf {S}", "\r"],
    "ctrl-x-ctrl-e": ["rm -rf {S}", "\x18\x05"],
    "ctrl-x-ctrl-x-then-ctrl-o": ["rm -rf {S}", "\x18\x18", "\x0f"],
    "history-then-ctrl-o": ["rm -rf {S}\r", "echo one\r", UP + UP, "\x0f"],
    "ctrl-z-inside-then-enter": ["rm -rf {S}\x1a", "\r"],
    "ctrl-c-then-enter": ["rm -rf {S}", CTRL_C, "\r"],
    "ctrl-d-on-text-then-enter": ["rm -rf {S}", "\x04\x04", "\r"],
    "ctrl-u-ctrl-y-enter": ["rm -rf {S}", "\x15", "\x19", "\r"],
    "meta-hash": ["rm -rf {S}", "\x1b#"],
    "tab-then-enter": ["rm -rf {S}", "\t", "\r"],
}
NOT_ACCEPTED = {"ctrl-x-ctrl-e", "ctrl-c-then-enter", "meta-hash"}  # nothing to refuse


@pytest.mark.parametrize("keys", list(KEYS))
@pytest.mark.parametrize("target", TARGETS)
def test_keys_other_than_enter_submit_only_judged_input(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str, keys: str
) -> None:
    sentinel = _attack(sandbox, session, f"{target}-{keys}", KEYS[keys])
    _settle(broker, session, sentinel)


@pytest.mark.parametrize("target", TARGETS)
def test_more_keys_submit_only_judged_input(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    _variations(
        broker,
        sandbox,
        session,
        f"{target}-keys",
        MORE_KEYS,
        refused=set(MORE_KEYS) - NOT_ACCEPTED,
        allowed={"meta-hash": ["#rm -rf {S}"]},  # insert-comment: a comment runs
    )


BINDINGS = {
    "bind-x": "{bind}",
    "bind-x-and-enter-rebound": '{bind}; bind \'"\\C-m": "\\C-t"\'',
}


@pytest.mark.parametrize("editing", list(BINDINGS))
@pytest.mark.parametrize("target", LAX_TARGETS)
def test_shell_key_bindings_never_fire(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str, editing: str
) -> None:
    """bind -x is allowed to run on the lax target; its key does nothing, at the prompt or
    while a command runs (the shell has no line editor; keys then go to the job)."""
    sentinel = sandbox.sentinel(f"{target}-bind-{editing}")
    bind = f"bind -x '\"\\C-t\": rm -rf {sentinel}'"
    setup = BINDINGS[editing].format(bind=bind)
    session.send(setup + "\r")
    session.expect("\r\n")
    if session.expect([STRICT_PROMPT, pexpect.EOF]) == 1:
        # The shell died of it (see test_turning_line_editing_on_keeps_the_session): safe.
        assert_survived(broker, session.session_id, sentinel, allowed=[setup])
        return
    session.send("\x14")  # Ctrl-T at the broker's prompt: transposes, runs nothing
    time.sleep(0.2)
    session.send(CTRL_C)
    time.sleep(0.2)
    session.send("sleep 1\r")
    time.sleep(0.4)
    session.send("\x14\r\x14")  # the same keys while a job has the terminal
    time.sleep(1.2)
    _settle(broker, session, sentinel, allowed=[setup])


@pytest.mark.parametrize("target", LAX_TARGETS)
def test_turning_line_editing_on_gets_no_command_through(
    broker: BrokerProcess, session: pexpect.spawn, target: str
) -> None:
    """Allowed here (the example policy denies it): the shell still reads its commands only
    from the helper. bash 5.2 may crash on it (readline starts on a terminal it does not
    read from); then the session ends with that reason, sealed, and nothing else ran."""
    for line in ("set -o emacs", "set -o vi"):
        session.send(line + "\r")
        session.expect("\r\n")
        index = session.expect([STRICT_PROMPT, pexpect.EOF])
        if index == 1:
            session.close()
            _assert_sealed_end(broker, session.session_id, "shell ended")
            assert allowed_commands(broker, session.session_id)[-1] == line
            return
        resync(session, interrupt=False)
    assert close(session) == 0


# -- 2. output marks printed by a job -------------------------------------------------------
RUNNING_MARK_JOB = r"(sleep 1; printf '\033]133;C\007') &"
# More marks at once: a fake end-of-command and prompt drawn like the broker's own, C then
# A/B, and bracketed paste turned off by the target.
MARK_JOBS = (
    r"(sleep 0.5; printf '\033]133;D;0\007\033]133;A\007alice@web:~$\033]133;B\007\302\240') &",
    r"(sleep 0.3; printf '\033]133;C\007'; sleep 0.3; printf '\033]133;A\007$ \033]133;B\007') &",
    r"(sleep 0.6; printf '\033[?2004l\033]133;C\007\033]133;B\007') &",
)


@pytest.mark.parametrize("target", TARGETS)
def test_a_running_mark_printed_by_a_job_decides_nothing(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    sentinel = sandbox.sentinel(f"{target}-mark-C")
    run_line(session, RUNNING_MARK_JOB)
    time.sleep(2)
    session.send(f"rm -rf {sentinel}\r")
    session.expect(DENIED)
    session.expect(STRICT_PROMPT)
    _settle(broker, session, sentinel)


@pytest.mark.parametrize("target", TARGETS)
def test_fake_prompt_marks_printed_by_jobs_decide_nothing(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    sentinel = sandbox.sentinel(f"{target}-mark-fake")
    for job in MARK_JOBS:
        run_line(session, job)
    time.sleep(1.2)
    session.send(f"rm -rf {sentinel}\r")
    session.expect(DENIED)
    session.expect(STRICT_PROMPT)
    session.send(f"rm -rf {sentinel}\x0f")
    session.expect(DENIED)
    session.expect(STRICT_PROMPT)
    _settle(broker, session, sentinel)


@pytest.mark.parametrize("target", TARGETS)
def test_marks_printed_by_the_running_command_decide_nothing(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    """A foreground command draws a fake prompt and waits: what is typed then is raw input
    to that command, never a command line, and is discarded when the shell is back."""
    sentinel = sandbox.sentinel(f"{target}-mark-foreground")
    session.send(
        r"printf '\033]133;D;0\007\033]133;A\007$\033]133;B\007\302\240'; sleep 1.5" + "\r"
    )
    time.sleep(0.5)
    session.send(f"rm -rf {sentinel}\r")
    session.expect("discarded", timeout=20)
    session.expect(STRICT_PROMPT)
    time.sleep(0.5)
    _settle(broker, session, sentinel)


# -- 3. continuation lines ----------------------------------------------------------------
def _lines(*lines: str) -> list[str]:
    return [line + "\r" for line in lines]


CONTINUATIONS = {
    "heredoc": _lines("cat <<EOF", "$(rm -rf {S})", "EOF"),
    "single-quote": _lines("echo 'abc", "'; rm -rf {S}; echo '", "'"),
    "backslash": _lines("echo hi \\", "; rm -rf {S}"),
}
MORE_CONTINUATIONS = {
    "heredoc-backticks": _lines("cat <<EOF", "`rm -rf {S}`", "EOF"),
    "heredoc-command-on-first-line": _lines("cat <<EOF && rm -rf {S}", "x", "EOF"),
    "heredoc-dash-tabs-pasted": [bracketed("cat <<-EOF\n\t$(rm -rf {S})\n\tEOF"), "\r"],
    "two-heredocs": _lines("cat <<A; cat <<B", "a", "A", "$(rm -rf {S})", "B"),
    "heredoc-end-lookalike": _lines("cat <<EOF", "EOF ", "$(rm -rf {S})", "EOF"),
    "double-quote": _lines('echo "abc', '$(rm -rf {S})"'),
    "backslash-in-word": _lines("r\\", "m -rf {S}"),
    "backslash-twice": _lines("echo \\", "hi \\", "&& rm -rf {S}"),
    "if": _lines("if true; then", "rm -rf {S}", "fi"),
    "for": _lines("for d in {S}; do", 'rm -rf "$d"', "done"),
    "while": _lines("while true; do", "rm -rf {S}; break", "done"),
    "function": _lines("f() {{", "rm -rf {S}", "}}; f"),
    "brace-group": _lines("{{", "rm -rf {S}", "}}"),
    "subshell": _lines("(", "rm -rf {S}", ")"),
    "pipe": _lines("true |", "rm -rf {S}"),
    "and": _lines("true &&", "rm -rf {S}"),
    "or": _lines("false ||", "rm -rf {S}"),
    "case": _lines("case x in", "x) rm -rf {S};;", "esac"),
    "command-substitution": _lines("echo $(", "rm -rf {S}", ")"),
    "ctrl-o-on-second-line": ["cat <<EOF\r", "$(rm -rf {S})\x0f", "EOF\r"],
    "ctrl-j-lines": ["cat <<EOF\n", "$(rm -rf {S})\n", "EOF\n"],
}


@pytest.mark.parametrize("construct", list(CONTINUATIONS))
@pytest.mark.parametrize("target", TARGETS)
def test_continuation_lines_are_judged_with_the_whole_construct(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str, construct: str
) -> None:
    label = f"{target}-cont-{construct}"
    sentinel = _attack(sandbox, session, label, CONTINUATIONS[construct])
    _settle(broker, session, sentinel)


@pytest.mark.parametrize("target", TARGETS)
def test_more_continuations_are_judged_with_the_whole_construct(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    _variations(broker, sandbox, session, f"{target}-cont", MORE_CONTINUATIONS)


# On the lax targets an incomplete first line can be forced through (Esc-Enter accepts what
# is there) and runs on its own: the next input is a construct of its own, never its rest.
FORCED = {
    "heredoc": ["cat <<EOF\x1b\r", NEXT_PROMPT, "$(rm -rf {S})\r", "EOF\r"],
    "single-quote": ["echo 'abc\x1b\r", NEXT_PROMPT, "'; rm -rf {S}; echo '\r"],
    "backslash": ["echo hi \\\x1b\r", NEXT_PROMPT, "; rm -rf {S}\r"],
    "if": ["if true; then\x1b\r", NEXT_PROMPT, "rm -rf {S}\r", "fi\r"],
    "function": ["f() {{\x1b\r", NEXT_PROMPT, "rm -rf {S}\r", "}}\r"],
}


@pytest.mark.parametrize("target", LAX_TARGETS)
def test_a_forced_incomplete_input_never_joins_the_next_one(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    _variations(
        broker,
        sandbox,
        session,
        f"{target}-forced",
        FORCED,
        refused={"heredoc", "if", "function"},
        # Allowed as what they are on their own: a command named "; rm -rf S; echo " and a
        # syntax error. Neither removes anything.
        allowed={"single-quote": ["'; rm -rf {S}; echo '"], "backslash": ["; rm -rf {S}"]},
    )


# -- 4. editing a long, wrapped line ------------------------------------------------------
LONG = "echo " + "x" * 330
EDITS = {
    "ctrl-a-insert": [LONG, "\x01", "rm -rf {S}; ", "\r"],
}
MORE_EDITS = {
    "home-key-insert": [LONG, "\x1b[H", "rm -rf {S}; ", "\r"],
    "ctrl-e-append": [LONG, "\x01", "\x05", "; rm -rf {S}", "\r"],
    "kill-and-yank": ["rm -rf {S}", "\x01", "\x0b", LONG + "; ", "\x19", "\r"],
    "up-then-edit": [LONG + "\r", 0.5, UP, "\x01", "rm -rf {S}; ", "\r"],
    "word-moves": [LONG + " " + "y" * 250, "\x1bb", "\x1bb", "; rm -rf {S}; echo ", "\r"],
    "left-arrows": [LONG, "\x1b[D" * 200, "; rm -rf {S}; echo ", "\r"],
}


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("target", TARGETS)
def test_an_edited_wrapped_line_is_judged_as_a_whole(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str, edit: str
) -> None:
    sentinel = _attack(sandbox, session, f"{target}-edit-{edit}", EDITS[edit])
    _settle(broker, session, sentinel)


@pytest.mark.parametrize("target", TARGETS)
def test_more_edits_are_judged_as_a_whole(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    _variations(broker, sandbox, session, f"{target}-edit", MORE_EDITS)


# -- 5. programs that run their arguments -------------------------------------------------
WRAPPERS = {
    "taskset": "taskset 1 rm -rf {S}",
    "flock": "flock {D}/lock rm -rf {S}",
    "setpriv-reuid": "setpriv --reuid={uid} --regid={gid} --clear-groups rm -rf {S}",
    "setpriv-no-new-privs": "setpriv --no-new-privs rm -rf {S}",
    "unshare": "unshare rm -rf {S}",
    "script": "script -qc 'rm -rf {S}' /dev/null",
    "nice": "nice -n 1 rm -rf {S}",
    "env": "env rm -rf {S}",
}
MORE_WRAPPERS = [
    "env -i PATH=/usr/bin rm -rf {S}",
    "nohup rm -rf {S}",
    "timeout 5 rm -rf {S}",
    "stdbuf -o0 rm -rf {S}",
    "ionice -c3 rm -rf {S}",
    "setsid rm -rf {S}",
    "chrt -o 0 rm -rf {S}",
    "prlimit --nofile=256 rm -rf {S}",
    "strace -f -o /dev/null rm -rf {S}",
    "fakeroot rm -rf {S}",
    "ssh-agent rm -rf {S}",
    "echo {S} | xargs rm -rf",
    "xargs -a /dev/null -r rm -rf {S}",
    "timeout 3 watch -n 1 rm -rf {S}",
    "command rm -rf {S}",
    "builtin command rm -rf {S}",
    "time rm -rf {S}",
    "(exec rm -rf {S})",
    "nsenter -t 1 -m rm -rf {S}",
    "systemd-run --scope rm -rf {S}",
    "sg {group} -c 'rm -rf {S}'",
    "busybox rm -rf {S}",
    "sudo rm -rf {S}",
    "doas rm -rf {S}",
    "script -q -c 'rm -rf {S}' /dev/null",
    "script --command 'rm -rf {S}' /dev/null",
    "sh -c 'rm -rf {S}'",
    'bash -c "rm -rf {S}"',
    "eval 'rm -rf {S}'",
    "nice -n 1 timeout 5 env taskset 1 rm -rf {S}",
    "/usr/bin/rm -rf {S}",
    "\\rm -rf {S}",
    "'r'm -rf {S}",
    "rm -r -f {S}",
    "rm --recursive {S}",
    "rm -vfR {S}",
]


def _wrapper_line(template: str, folder: Path, target: str) -> str:
    """TEMPLATE with this target's user filled in; {S} (the sentinel) is left in."""
    local = target.startswith("shell")  # runs as TARGET_USER; ssh targets as this user
    uid = pwd.getpwnam(TARGET_USER).pw_uid if local else os.geteuid()
    gid = pwd.getpwnam(TARGET_USER).pw_gid if local else os.getegid()
    group = TARGET_USER if local else grp.getgrgid(os.getegid()).gr_name
    return template.format(S="{S}", D=folder, uid=uid, gid=gid, group=group)


@pytest.mark.parametrize("target", TARGETS)
def test_wrappers_are_unwrapped(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    """Programs that run their arguments (the issue's, then the rest of the wrapper table
    and other spellings of rm), in one session: every line is refused and its own sentinel
    survives; whatever gets through is listed by name."""
    folder = sandbox.folder(f"{target}-lock")
    lines = {
        t: [_wrapper_line(t, folder, target) + "\r"] for t in [*WRAPPERS.values(), *MORE_WRAPPERS]
    }
    _variations(broker, sandbox, session, f"{target}-wrap", lines)


# -- 6. typeahead ------------------------------------------------------------------------
READ_LEFTOVER = "read -t 1 -r x; printf 'left:%s:%s\\n' \"$x\" end"


def _typed_during_job(
    child: pexpect.spawn, keys: str, seconds: float = 2, after: float = 1.0
) -> None:
    """`sleep SECONDS`, KEYS typed while it runs, then: back at the prompt a second later,
    and nothing typed is left on the terminal for the next job either (a `read` there gets
    only its own line)."""
    child.send(f"sleep {seconds}\r")
    time.sleep(0.4)
    child.send(keys)
    time.sleep(seconds - 0.3)  # sleep ends
    quiet(child, idle=after)  # and AFTER seconds more
    child.send(READ_LEFTOVER + "\r")
    time.sleep(0.4)
    child.send("\r")  # raw to `read`: ends its line
    child.expect(r"left:([^\r\n:]*):end\r\n", timeout=20)
    leftover = child.match.group(1)
    child.expect(STRICT_PROMPT)
    assert leftover == "", f"left on the terminal for the next job: {leftover!r}"


@pytest.mark.parametrize("target", TARGETS)
def test_keys_typed_while_a_job_runs_never_become_a_command(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    sentinel = sandbox.sentinel(f"{target}-typeahead")
    _typed_during_job(session, f"rm -rf {sentinel}\r")
    assert sentinel.is_dir()
    _settle(broker, session, sentinel)


TYPEAHEAD = {
    "ctrl-j": "rm -rf {S}\n",
    "ctrl-o": "rm -rf {S}\x0f",
    "no-line-end": "rm -rf {S}",
    "two-lines": "echo a\rrm -rf {S}\r",
    "eof-after": "rm -rf {S}\r\x04",
}


@pytest.mark.parametrize("target", TARGETS)
def test_more_keys_typed_while_a_job_runs_never_become_a_command(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    problems = []
    sentinels = []
    for name, keys in TYPEAHEAD.items():
        sentinel = sandbox.sentinel(f"{target}-typeahead-{name}")
        sentinels.append(sentinel)
        try:
            _typed_during_job(session, keys.format(S=sentinel), seconds=1.0, after=0.5)
        except AssertionError as exc:
            problems.append(f"{name}: {exc}")
        if not sentinel.is_dir():
            problems.append(f"{name}: THE SENTINEL WAS DELETED")
    for sentinel in sentinels:
        assert_survived(broker, session.session_id, sentinel)
    assert close(session) == 0
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_keys_typed_across_the_end_of_a_job_are_judged_or_dropped(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    """Typing on while the job ends: what reaches the prompt is judged; nothing runs."""
    sentinel = sandbox.sentinel(f"{target}-typeahead-race")
    session.send("sleep 1\r")
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        session.send(f"rm -rf {sentinel}\r")
        time.sleep(0.04)
    time.sleep(1)
    _settle(broker, session, sentinel)


# -- 7. jobs that take or read the terminal ----------------------------------------------
STEAL = (
    'python3 -c "import os,signal,time; signal.signal(signal.SIGTTOU, signal.SIG_IGN); '
    'os.tcsetpgrp(0, os.getpgrp()); time.sleep(3)" &'
)
STEAL_AND_READ = (
    'python3 -c "import os,signal; signal.signal(signal.SIGTTOU, signal.SIG_IGN); '
    "signal.alarm(3); os.tcsetpgrp(0, os.getpgrp()); "
    "open('{D}/read', 'wb').write(os.read(0, 100))\" &"
)
TIOCSTI = (
    "python3 -c 'import fcntl,termios; "
    '[fcntl.ioctl(0, termios.TIOCSTI, bytes([c])) for c in b"rm -rf {S}\\n"]\''
)


@pytest.mark.parametrize("target", LAX_TARGETS)
def test_a_job_that_takes_the_terminal_gets_no_command_through(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    sentinel = sandbox.sentinel(f"{target}-tcsetpgrp")
    session.send(STEAL + "\r")
    time.sleep(0.5)
    session.send(f"rm -rf {sentinel}\r")
    session.expect(DENIED)
    time.sleep(3.5)  # the job ends, still holding the terminal
    assert_survived(broker, session.session_id, sentinel)
    # A builtin next (the shell gives itself the terminal back only after a foreground job).
    try:
        resync(session, interrupt=False, timeout=5)
    except pexpect.TIMEOUT:
        pytest.fail(
            "the session never came back to its prompt after a job that took the terminal "
            "ended (the next command was a shell builtin)"
        )
    _settle(broker, session, sentinel)


@pytest.mark.parametrize("target", LAX_TARGETS)
def test_a_job_that_takes_the_terminal_reads_no_typed_command(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    sentinel = sandbox.sentinel(f"{target}-tcsetpgrp-read")
    folder = sentinel.parent
    session.send(STEAL_AND_READ.format(D=folder) + "\r")
    time.sleep(0.7)
    session.send(f"rm -rf {sentinel}\r")
    session.expect(DENIED)
    session.expect(STRICT_PROMPT)
    time.sleep(3)  # the job gives up (alarm)
    # An external command: the shell takes the terminal back after it (see the test above).
    run_line(session, "/bin/true")
    read = folder / "read"
    assert not read.exists() or b"rm -rf" not in read.read_bytes()
    _settle(broker, session, sentinel)


@pytest.mark.parametrize("how", ["foreground", "background"])
@pytest.mark.parametrize("target", LAX_TARGETS)
def test_tiocsti_injection_never_reaches_the_shell(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str, how: str
) -> None:
    sentinel = sandbox.sentinel(f"{target}-tiocsti-{how}")
    inject = TIOCSTI.format(S=sentinel)
    if how == "background":
        inject = f"(sleep 0.5; {inject}) &"
    run_line(session, inject)
    time.sleep(1)
    quiet(session)  # the injected bytes echo above the prompt, which is then drawn again
    # A command that does not read its input, then one that does (it may see the bytes as
    # data, never as a command).
    run_line(session, "sleep 0.3")
    run_line(session, "timeout 0.5 cat > /dev/null", timeout=20)
    _settle(broker, session, sentinel, allowed=[inject])


READER_JOBS = (
    "cat &",
    "(trap '' TTIN; cat) &",
    "(sleep 0.3; read x) &",
    "(trap '' TTIN; read x) &",
)


@pytest.mark.parametrize("target", TARGETS)
def test_background_jobs_reading_the_terminal_get_no_command(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    """Jobs that read the terminal in the background (stopped by SIGTTIN, or ignoring it and
    getting EIO): a line typed then is the broker's, judged, and none of them sees it."""
    sentinel = sandbox.sentinel(f"{target}-bg-read")
    for job in READER_JOBS:
        run_line(session, job)
    time.sleep(0.5)
    quiet(session)  # "Stopped" may come above the prompt
    for keys in (f"rm -rf {sentinel}\r", f"rm -rf {sentinel}\n"):
        session.send(keys)
        session.expect(DENIED)
        session.expect(STRICT_PROMPT)
    run_line(session, "kill -9 %1 %2 %3 %4 2>/dev/null; true")
    for _ in range(10):  # bash lists a job killed while stopped until its next command
        if "Stopped" not in run_line(session, "jobs"):
            break
        time.sleep(0.1)
    _settle(broker, session, sentinel)


# -- 8. the shell's own input redirected ---------------------------------------------------
REDIRECTS = ["exec 0<&2", "exec 0</dev/tty", "exec 0<&1", "exec <&2 2>&1", "exec 0<>/dev/tty"]


@pytest.mark.parametrize("target", LAX_TARGETS)
def test_redirecting_the_shells_input_to_the_terminal_gets_no_command_through(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    """Each redirection in turn, then keys typed raw while a job runs: whether the shell's
    own input is given back when the command ends or the helper ends the session, nothing
    typed runs."""
    sentinels = []
    for redirect in REDIRECTS:
        sentinel = sandbox.sentinel(f"{target}-exec")
        sentinels.append(sentinel)
        session.send(redirect + "\r")
        session.expect("\r\n")
        if session.expect([STRICT_PROMPT, pexpect.EOF], timeout=10) == 1:
            end = wait_session_end(broker, session.session_id)
            assert "redirected" in str(end.get("reason")), end
            break
        session.send("sleep 0.8\r")
        time.sleep(0.3)
        session.send(f"rm -rf {sentinel}\r")
        time.sleep(0.8)
        try:
            resync(session, interrupt=False)
        except pexpect.EOF:
            end = wait_session_end(broker, session.session_id)
            assert "redirected" in str(end.get("reason")), end
            break
    for sentinel in sentinels:
        assert_survived(broker, session.session_id, sentinel)
    if session.isalive():
        assert close(session) == 0


# -- bad input and faults ------------------------------------------------------------------
def _assert_sealed_end(broker: BrokerProcess, session_id: str, *reason_parts: str) -> None:
    end = wait_session_end(broker, session_id)
    reason = str(end.get("reason") or "")
    assert reason, end
    for part in reason_parts:
        assert part in reason, end
    result = verify_session(broker, session_id)
    assert result.returncode == 0, result.stdout + result.stderr
    cast = broker.data_dir / "recordings" / f"{session_id}.cast"
    assert Path(f"{cast}.sig").exists()


@pytest.mark.parametrize("target", TARGETS)
def test_the_target_shell_dying_ends_the_session_sealed(
    broker: BrokerProcess, session: pexpect.spawn, target: str
) -> None:
    run_line(session, "echo before")
    session.send("kill -9 $$\r")
    session.expect(pexpect.EOF, timeout=15)
    session.close()
    assert session.exitstatus != 0
    _assert_sealed_end(broker, session.session_id, "signal 9")


def _job_processes(child: pexpect.spawn, seconds: str) -> tuple[int, int]:
    """Start `sleep SECONDS` (a unique number) in the session: its pid and its helper's."""
    child.send(f"sleep {seconds}\r")
    deadline = time.monotonic() + 5
    while not (found := pids_running("sleep", seconds)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(found) == 1, found
    (pid,) = found
    helper = helper_of(pid)
    assert helper is not None
    return pid, helper


@pytest.mark.parametrize("target", TARGETS)
def test_the_helper_killed_mid_session_ends_it_sealed(
    broker: BrokerProcess, session: pexpect.spawn, target: str
) -> None:
    job, helper = _job_processes(session, f"30.{secrets.randbelow(10**6)}")
    os.kill(helper, signal.SIGKILL)
    session.expect(pexpect.EOF, timeout=15)
    session.close()
    assert session.exitstatus != 0
    _assert_sealed_end(broker, session.session_id, "helper")
    deadline = time.monotonic() + 3
    while alive(job) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(job), "the session's job outlived its helper"


@pytest.mark.parametrize("target", TARGETS)
def test_a_dropped_client_ends_the_sessions_processes_on_the_target(
    broker: BrokerProcess, session: pexpect.spawn, target: str
) -> None:
    """hoopctl goes away mid-command: the broker hangs up, and the shell, its jobs and the
    helper on the target end (nothing of the session keeps running there)."""
    seconds = f"40.{secrets.randbelow(10**6)}"
    run_line(session, f"sleep {seconds} &")
    deadline = time.monotonic() + 5  # the forked job may not have exec'd sleep yet
    while not (started := pids_running("sleep", seconds)) and time.monotonic() < deadline:
        time.sleep(0.05)
    (background,) = started
    job, helper = _job_processes(session, f"30.{secrets.randbelow(10**6)}")
    session.terminate(force=True)
    try:
        end = wait_session_end(broker, session.session_id, timeout=6)
    except AssertionError:
        pytest.fail("the session did not end within 6 s of its client going away mid-command")
    assert end.get("reason"), end
    processes = {"the foreground job": job, "the background job": background, "the helper": helper}
    deadline = time.monotonic() + 8
    while any(alive(p) for p in processes.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [name for name, pid in processes.items() if alive(pid)]
    assert not left, f"still running on the target after the session ended: {', '.join(left)}"


@pytest.mark.parametrize("target", TARGETS)
def test_a_command_over_64_kib_is_refused_and_the_session_goes_on(
    broker: BrokerProcess, session: pexpect.spawn, target: str
) -> None:
    session.maxread = 65536
    session.send(bracketed("echo " + "a" * (66 * 1024)))
    time.sleep(0.5)
    session.send("\r")
    session.expect("64 KiB", timeout=20, searchwindowsize=4096)
    session.expect(STRICT_PROMPT, timeout=20, searchwindowsize=4096)
    assert not any(len(c) > 64 * 1024 for c in allowed_commands(broker, session.session_id))
    blocked = session_events(broker, session.session_id, "command.blocked")
    assert blocked and blocked[-1]["details"]["unknown"] is True
    resync(session, interrupt=False)
    assert close(session) == 0


@pytest.mark.parametrize("target", TARGETS)
def test_nul_bytes_and_invalid_utf8_leave_the_session_alive(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    sentinel = sandbox.sentinel(f"{target}-bytes")
    for raw in (
        b"echo nul\x00byte\r",
        b"echo bad-\xff\xfe-utf8\r",
        b"\x00\x00\x00\r",
        b"\xc3\r",
        b"echo \xed\xa0\x80 surrogate\r",
        b"printf '%s\\n' \xc3\xa9t\xc3\xa9\r",
    ):
        os.write(session.child_fd, raw)  # bytes as they are, not text pexpect would encode
        time.sleep(0.3)
        resync(session, pause=0.05)
    for raw in (
        f"rm -rf {sentinel}\x00\r".encode(),
        bracketed(f"rm -rf {sentinel}\x00x").encode() + b"\r",  # a NUL in the buffer
        f"rm -rf {sentinel}".encode() + b"\xff\r",
        b"rm -rf \xff" + str(sentinel).encode() + b"\r",
    ):
        os.write(session.child_fd, raw)
        session.expect(REFUSED)
        session.expect(STRICT_PROMPT)
    _settle(broker, session, sentinel)


@pytest.mark.parametrize("target", TARGETS)
def test_a_resize_mid_edit_keeps_the_line(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    session.send("printf 'resized-%s-%s\\n' ab")
    time.sleep(0.2)
    session.setwinsize(30, 90)
    time.sleep(0.3)
    session.send(" cd\r")
    session.expect("resized-ab-cd\r\n")
    session.expect(STRICT_PROMPT)
    # The shell sees the new size.
    assert "30 90" in run_line(session, "stty size")
    # And a denied line typed around a resize is still judged whole.
    sentinel = sandbox.sentinel(f"{target}-resize")
    session.send("rm -rf ")
    time.sleep(0.2)
    session.setwinsize(40, 200)
    time.sleep(0.3)
    session.send(f"{sentinel}\r")
    session.expect(DENIED)
    session.expect(STRICT_PROMPT)
    _settle(broker, session, sentinel)


def _type_keys(child: pexpect.spawn, keys: Iterable[str], gap: float = 0.05) -> None:
    """Each key on its own with a pause after it, as a person types. The broker shows a key
    typed at the end of a plain line before its line editor has handled it (and skips the
    redraw that would draw the same), broker.sessions.echo_ahead."""
    for key in keys:
        child.send(key)
        time.sleep(gap)


def _screen_line(shown: str, needle: str) -> str:
    """The line of a 200-column terminal, fed SHOWN, that holds NEEDLE ("" if none)."""
    screen = pyte.Screen(200, 24)
    pyte.Stream(screen).feed(shown)
    return next((line.rstrip() for line in screen.display if needle in line), "")


@pytest.mark.parametrize("target", TARGETS)
def test_keys_typed_one_at_a_time_show_and_run_as_edited(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    session.setwinsize(24, 200)
    time.sleep(0.2)
    resync(session, interrupt=False)
    token = secrets.token_hex(3)
    line = f"printf 'typed-%s\\n' {token}Z"
    prompt = str(session.after) + str(session.buffer)  # the prompt, as drawn so far
    _type_keys(session, f"printf 'typed-%s\\n' {token}X")
    _type_keys(session, ["\x7f", "Y", "\x08", "Z", "Q", "Q", "\x7f", "\x08"])
    shown = _screen_line(prompt + quiet(session), "typed-")
    assert shown.endswith(f"$\u00a0{line}") or shown.endswith(f"$ {line}"), shown
    session.send("\r")
    session.expect(f"typed-{token}Z\r\n")
    session.expect(STRICT_PROMPT)
    # A denied command typed one key at a time, a slip erased before Enter: judged as edited.
    sentinel = sandbox.sentinel(f"{target}-typed")
    _type_keys(session, f"rm -rf {sentinel}/x")
    _type_keys(session, ["\x7f", "\x7f", "\r"])
    session.expect(DENIED)
    session.expect(STRICT_PROMPT)
    session_id = session.session_id
    assert line in allowed_commands(broker, session_id)
    _settle(broker, session, sentinel)
    # The recording shows the line as it ran, just before its output.
    wait_session_end(broker, session_id)
    _, events = read_events(broker.data_dir / "recordings" / f"{session_id}.cast")
    output = [str(data) for _, kind, data in events if kind == "o"]
    # Keys at the end of the line were echoed ahead of the line editor: each alone (a key
    # that came while the last one was still being drawn is drawn by the editor instead).
    assert sum(1 for data in output if len(data) == 1 and data.isalnum()) >= 5
    assert "\x08\x1b[K" in output
    upto = next(i for i, data in enumerate(output) if f"typed-{token}Z\r\n" in data)
    recorded = _screen_line("".join(output[:upto]), "typed-")
    assert recorded.endswith(f"$\u00a0{line}") or recorded.endswith(f"$ {line}"), recorded


@pytest.mark.parametrize("target", TARGETS)
def test_a_pasted_script_with_one_denied_line_runs_none_of_it(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    sentinel = sandbox.sentinel(f"{target}-paste")
    folder = sandbox.folder(f"{target}-paste-out")
    lines = [f"touch {folder}/f{n}" for n in range(200)]
    lines[117] = f"rm -rf {sentinel}"
    session.send(bracketed("\n".join(lines) + "\n"))
    time.sleep(0.5)
    session.send("\r")
    session.expect(DENIED, timeout=20)
    session.expect(STRICT_PROMPT)
    assert list(folder.iterdir()) == []
    _settle(broker, session, sentinel)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("target", TARGETS)
def test_a_pasted_script_of_allowed_lines_runs_all_of_it(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    folder = sandbox.folder(f"{target}-paste-ok")
    lines = [f"touch {folder}/f{n}" for n in range(200)]
    session.send(bracketed("\n".join(lines) + "\n"))
    time.sleep(0.5)
    session.send("\r")
    session.expect(STRICT_PROMPT, timeout=30)
    resync(session, interrupt=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"f{n}" for n in range(200))
    assert close(session) == 0


# -- it still feels like a shell -----------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_up_arrow_recalls_the_previous_command(
    broker: BrokerProcess, session: pexpect.spawn, target: str
) -> None:
    token = secrets.token_hex(3)
    command = f"printf 'recall-%s\\n' {token}"
    assert f"recall-{token}" in run_line(session, command)
    run_line(session, "true")
    session.send(UP + UP)
    time.sleep(0.2)
    session.send("\r")
    session.expect(f"recall-{token}\r\n")
    session.expect(STRICT_PROMPT)
    assert allowed_commands(broker, session.session_id).count(command) == 2
    assert close(session) == 0


@pytest.mark.parametrize("target", TARGETS)
def test_ctrl_r_finds_an_older_command(
    broker: BrokerProcess, session: pexpect.spawn, target: str
) -> None:
    token = secrets.token_hex(3)
    older = f"printf 'older-%s\\n' {token}"
    run_line(session, older)
    run_line(session, f"printf 'newer-%s\\n' {token}")
    run_line(session, "true")
    session.send("\x12")  # Ctrl-R
    time.sleep(0.2)
    session.send(f"older-%s\\n' {token}")
    time.sleep(0.3)
    session.send("\r")  # ends the search with the line found
    time.sleep(0.2)
    session.send("\r")  # runs it
    session.expect(f"older-{token}\r\n")
    session.expect(STRICT_PROMPT)
    assert allowed_commands(broker, session.session_id).count(older) == 2
    assert close(session) == 0


@pytest.mark.parametrize("target", TARGETS)
def test_tab_completes_commands_and_paths_on_the_target(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    session.send("ech\t")
    time.sleep(0.5)
    session.send(" tab-ok\r")
    session.expect("tab-ok\r\n")
    session.expect(STRICT_PROMPT)
    assert "echo tab-ok" in allowed_commands(broker, session.session_id)
    folder = sandbox.folder(f"{target}-complete")
    unique = f"only-here-{secrets.token_hex(4)}"
    (folder / unique).mkdir()
    session.send(f"ls -d {folder}/only-h\t")
    time.sleep(0.5)
    session.send("\r")
    # ls prints what the completion made of the word (the prompt is redrawn while completing).
    session.expect(re.escape(f"{folder}/{unique}/") + "\r\n")
    session.expect(STRICT_PROMPT)
    assert f"ls -d {folder}/{unique}/" in allowed_commands(broker, session.session_id)
    assert close(session) == 0


@pytest.mark.parametrize("target", TARGETS)
def test_ctrl_c_stops_a_command_promptly(
    broker: BrokerProcess, session: pexpect.spawn, target: str
) -> None:
    session.send("sleep 30\r")
    time.sleep(0.5)
    started = time.monotonic()
    session.send(CTRL_C)
    session.expect(STRICT_PROMPT, timeout=25)
    assert time.monotonic() - started < 25  # `sleep 30` was interrupted, not waited for
    resync(session, interrupt=False)
    assert close(session) == 0


@pytest.mark.parametrize("target", TARGETS)
def test_ctrl_z_then_fg_then_ctrl_c(
    broker: BrokerProcess, session: pexpect.spawn, target: str
) -> None:
    session.send("sleep 30\r")
    time.sleep(0.5)
    session.send("\x1a")  # Ctrl-Z
    session.expect("Stopped", timeout=20)
    session.expect(STRICT_PROMPT, timeout=20)
    assert "sleep 30" in run_line(session, "jobs")
    session.send("fg\r")
    session.expect("sleep 30", timeout=20)
    time.sleep(0.5)
    started = time.monotonic()
    session.send(CTRL_C)
    session.expect(STRICT_PROMPT, timeout=20)
    assert time.monotonic() - started < 25  # `sleep 30` was interrupted, not waited for
    assert "sleep" not in run_line(session, "jobs")
    assert close(session) == 0


@pytest.mark.parametrize("target", TARGETS)
def test_vim_edits_and_saves_a_file(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    note = sandbox.folder(f"{target}-vim") / "note.txt"
    session.send(f"vim -N -u NONE {note}\r")
    session.expect(r"\x1b\[\d+;1H~", timeout=10)  # vim draws its empty lines
    time.sleep(0.5)
    session.send("ihello from vim")
    time.sleep(0.2)
    session.send("\x1b")
    time.sleep(0.2)
    session.send(":wq\r")
    session.expect("written", timeout=10)
    session.expect(STRICT_PROMPT, timeout=10)
    assert note.read_text() == "hello from vim\n"
    resync(session, interrupt=False)
    assert close(session) == 0


@pytest.mark.parametrize("target", TARGETS)
def test_top_starts_and_quits(broker: BrokerProcess, session: pexpect.spawn, target: str) -> None:
    session.send("top\r")
    session.expect("load average", timeout=10)
    time.sleep(0.3)
    session.send("q")
    session.expect(STRICT_PROMPT, timeout=10)
    resync(session, interrupt=False)
    assert close(session) == 0


@pytest.mark.parametrize("target", TARGETS)
def test_less_shows_a_file_and_quits(
    broker: BrokerProcess, sandbox: Sandbox, session: pexpect.spawn, target: str
) -> None:
    page = sandbox.folder(f"{target}-less") / "page.txt"
    page.write_text("".join(f"less-line-{n}\n" for n in range(1, 200)))
    session.send(f"less {page}\r")
    session.expect("less-line-1\r", timeout=10)
    session.expect("less-line-30", timeout=10)
    time.sleep(0.2)
    session.send(" ")  # next page
    session.expect("less-line-7", timeout=10)
    session.send("q")
    session.expect(STRICT_PROMPT, timeout=10)
    resync(session, interrupt=False)
    assert close(session) == 0


@pytest.mark.parametrize("target", TARGETS)
def test_a_ten_megabyte_burst_arrives_complete(
    broker: BrokerProcess, session: pexpect.spawn, target: str
) -> None:
    session.maxread = 65536  # read the burst in big chunks and search only its tail
    session.send("head -c 7500000 /dev/urandom | base64 -w 0; printf '\\n%s_%s\\n' BURST DONE\r")
    session.expect("\r\n", timeout=10)
    session.expect("BURST_DONE", timeout=120, searchwindowsize=4096)
    shown = re.sub(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[=>])", "", str(session.before))
    burst = max(shown.split(), key=len)
    assert len(burst) == 10_000_000
    session.expect(STRICT_PROMPT, timeout=30)
    resync(session, interrupt=False)
    assert close(session) == 0
