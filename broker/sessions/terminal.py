"""Interactive terminal sessions (`ssh` and `local` targets): relay, record, and police the prompt.

Keystrokes flow to the target as they are typed, so completion, history and full-screen
programs work. Enter is held back while the shell is at a prompt: once the echo has settled,
the command line is read off the screen (a terminal emulator fed with the target's output)
and judged by the target's policy. Allowed: Enter goes through. Denied: the line is cancelled
on the target and a notice shown. Review: the approval gate decides.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import shlex
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh

from broker.config import LocalTarget, SshTarget
from broker.credentials import CredentialError
from broker.policy.decision import Decision
from broker.policy.shell import decide_shell
from broker.protocols import terminal_unit
from broker.protocols.base import TargetError
from broker.protocols.terminal import TerminalProcess, TerminalRequest, TerminalUnit
from broker.recording import Recorder, RecordingError
from broker.sessions.approvals import ReviewOutcome
from broker.sessions.base import SessionBase
from broker.sessions.screen import ScreenTracker, ShellState

log = logging.getLogger("hoop.broker.session")

ENTER_KEYS = (0x0D, 0x0A)
CTRL_C = b"\x03"
# Enter waits for the echo of what was typed before it; past this, the screen cannot be trusted.
ECHO_SETTLE_QUIET = 0.015
ECHO_SETTLE_MAX = 2.0
# After an allowed command, further pasted lines wait for the next prompt this long.
NEXT_PROMPT_WAIT = 2.0
# When the client's input ends, Ctrl-D waits this long at most for the shell's prompt.
END_INPUT_WAIT = 10.0
FLUSH_EVERY = 1.0
# A reason asked for in the terminal: this long to answer, this many characters at most.
REASON_TIMEOUT = 300.0
MAX_REASON = 500


def _escape_done(sequence: str) -> bool:
    """True once SEQUENCE (ESC and what followed) is a whole escape sequence (CSI, SS3, ESC x)."""
    if len(sequence) < 2:
        return False
    if len(sequence) == 2:
        return sequence[1] not in "[O"
    return sequence[-1].isalpha() or sequence[-1] == "~" or len(sequence) > 16


class TerminalSession(SessionBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._target: SshTarget | LocalTarget = self._target  # type: ignore[assignment]
        self._unit: TerminalUnit[Any] = terminal_unit(self._target.type)
        self._argv = self._request.argv
        self._terminal: TerminalProcess | None = None
        self._tracker: ScreenTracker | None = None
        self._last_output = 0.0
        self._last_input = 0.0
        self._prompt_seen = asyncio.Event()
        self._output_arrived = asyncio.Event()
        self._ending: str | None = None
        self._client_gone = False
        self._cancelled_at = -1  # prompts seen when the broker last cancelled a line
        # The last line the shell ran was a bare `exit` right after a line the broker threw
        # away with Ctrl-C: the shell then leaves with that Ctrl-C's 130, which is the
        # broker's doing, not the status of a command that ran.
        self._exit_after_cancel = False
        self._just_cancelled = False
        self._status_shown = False

    # -- set-up ---------------------------------------------------------------------------
    def _terminal_request(self) -> TerminalRequest:
        term = self._process.get_terminal_type() or "xterm-256color"
        cols, rows, *_ = self._process.get_terminal_size()
        return TerminalRequest(
            term=term,
            cols=cols or 80,
            rows=rows or 24,
            command=list(self._argv) or None,
            # An interactive shell always gets a PTY on the target (the guardrails read its
            # echo), even when the client's input is a pipe; a one-off command only with one.
            pty=self._process.get_terminal_type() is not None or not self._argv,
        )

    def _notice(self, text: str, colour: str = "1;31") -> None:
        """A one-line message from the broker on the user's terminal, recorded like any output."""
        data = f"\r\n\x1b[{colour}m[hoop]\x1b[0m {text}\r\n".encode()
        # Recorded and shown, but not fed to the screen emulator: the shell did not print it,
        # and the emulator must keep following what the shell believes is on screen.
        self._record(lambda recorder: recorder.output(data))
        self._send(data)

    # -- the session ----------------------------------------------------------------------
    async def run(self) -> int:
        request = self._terminal_request()
        command_text = shlex.join(self._argv) if self._argv else None
        started = time.time()
        if command_text is not None:
            decision = await self._judge(command_text)
            if decision.action != "allow":
                outcome = await self._held(command_text, decision)
                if not outcome.approved:
                    return outcome.exit_status
        recorder = await self._start(
            kind="terminal",
            started=started,
            command=command_text,
            width=request.cols,
            height=request.rows,
            term=request.term,
            title=f"{self._ctx.user}@{self._target.name}",
            details={
                "command": command_text,
                "recording": f"{self.session_id}.cast",
                "guard": "screen",
            },
            note=" (guard: screen, the weaker grade: commands are read off the screen)",
            on_grant_warning=self._notice,
            on_grant_end=self._grant_ended,
        )
        if recorder is None:
            return 1
        status = 255
        state = "closed"
        try:
            try:
                self._terminal = await self._unit.open_terminal(self._target, request)
            except (TargetError, CredentialError) as exc:
                self._stderr(str(exc))
                recorder.mark(f"error: {exc}")
                state, status = "failed", 1
                return status
            if self._ending:  # the access grant ended while the target was opening
                self._terminal.hangup()
            self._tracker = ScreenTracker(
                request.cols,
                request.rows,
                integration=self._terminal.shell_integration and not request.command,
                prompt_pattern=getattr(self._target, "prompt_pattern", None),
            )
            status = await self._relay()
            if status == 130 and self._exit_after_cancel:
                status = 0
            if self._ending:
                state = "terminated"
            return status
        finally:
            await self._finish(state=state, status=status, reason=self._ending)

    async def _relay(self) -> int:
        assert self._terminal is not None
        output = asyncio.create_task(self._output_loop())
        inputs = asyncio.create_task(self._input_loop())
        flusher = asyncio.create_task(self._flush_loop())
        await asyncio.wait({output, inputs}, return_when=asyncio.FIRST_COMPLETED)
        if not output.done():
            # The client went away (or the recording failed): hang up the target and drain it.
            self._terminal.hangup()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(output, 5)
        for task in (inputs, flusher, output):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(inputs, flusher, output, return_exceptions=True)
        try:
            return await asyncio.wait_for(self._terminal.wait(), 5)
        except TimeoutError:
            return 255

    async def _output_loop(self) -> None:
        assert self._terminal is not None
        while True:
            data = await self._terminal.read()
            if not data:
                return
            sent = self._send(data)
            self._on_output(data)
            if not sent:
                return
            with contextlib.suppress(OSError, asyncssh.Error):
                await self._process.stdout.drain()

    def _send(self, data: bytes) -> bool:
        if self._client_gone:
            return False
        try:
            self._process.stdout.write(data)
        except (OSError, asyncssh.Error):
            self._client_gone = True
            return False
        return True

    def _on_output(self, data: bytes) -> None:
        self._last_output = time.monotonic()
        self._output_arrived.set()
        assert self._tracker is not None
        prompts = self._tracker.prompts_seen
        self._tracker.feed(data)
        if self._tracker.prompts_seen != prompts:
            self._prompt_seen.set()
        self._record(lambda recorder: recorder.output(data))

    def _record(self, action: Callable[[Recorder], None]) -> None:
        assert self._recorder is not None
        try:
            action(self._recorder)
        except RecordingError as exc:
            self._recording_failed(exc)

    def _recording_failed(self, exc: RecordingError) -> None:
        if self._ending:
            return
        self._ending = f"recording failed: {exc}"
        log.error("session %s: %s", self.session_id, exc)
        # On the channel's stderr, like the session's end: output still queued for the client
        # when the target is hung up does not always reach it, and this line must.
        self._stderr(
            "the session recording cannot be written; this session is ended (strict recording)"
        )
        if self._terminal is not None:
            self._terminal.hangup()

    async def _flush_loop(self) -> None:
        assert self._recorder is not None
        warned = False
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self._record(lambda recorder: recorder.flush())
            if self._recorder.failed is not None and not warned and not self._ending:
                warned = True
                self._notice(
                    f"warning: recording stopped ({self._recorder.failed}); best-effort mode goes on"
                )

    async def _input_loop(self) -> None:
        stdin = self._process.stdin
        while not self._ending:
            try:
                data = await stdin.read(65536)
            except asyncssh.TerminalSizeChanged as change:
                self._resize(change.width, change.height)
                continue
            except (asyncssh.BreakReceived, asyncssh.SignalReceived):
                continue
            except (OSError, asyncssh.Error):
                self._client_gone = True  # the connection is gone
                return
            if not data:
                await self._client_input_ended()
                return
            await self._handle_input(data)

    async def _client_input_ended(self) -> None:
        """EOF from the client (its stdin was a pipe or a file that ran out): end the target's
        input as Ctrl-D would, and go on relaying its output until it exits or the client
        closes the channel."""
        assert self._terminal is not None and self._tracker is not None
        # A shell reading a command sees Ctrl-D only at its prompt: sent while a command runs,
        # the terminal's line discipline may drop it when the shell switches modes.
        # After a cancelled line the shell flushes its input on Ctrl-C: wait for its new prompt.
        tracker = self._tracker
        deadline = time.monotonic() + END_INPUT_WAIT
        while tracker.integration and time.monotonic() < deadline:
            if tracker.state is ShellState.PROMPT and tracker.prompts_seen > self._cancelled_at:
                break
            self._output_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._output_arrived.wait(), ECHO_SETTLE_MAX)
        self._record(lambda recorder: recorder.mark("input ended"))
        self._terminal.end_input()
        with contextlib.suppress(OSError, asyncssh.Error):
            await self._process.channel.wait_closed()
        self._client_gone = True

    def _resize(self, cols: int, rows: int) -> None:
        assert self._terminal is not None and self._tracker is not None
        if cols <= 0 or rows <= 0:
            return
        self._terminal.resize(cols, rows)
        self._tracker.resize(cols, rows)
        self._record(lambda recorder: recorder.resize(cols, rows))

    def _forward(self, data: bytes) -> None:
        if not data:
            return
        assert self._terminal is not None
        redact = self._input_is_secret()
        self._record(lambda recorder: recorder.input(data, redact=redact))
        self._last_input = time.monotonic()
        self._terminal.write(data)

    def _input_is_secret(self) -> bool:
        assert self._terminal is not None and self._tracker is not None
        if self._tracker.integration and self._tracker.state is ShellState.PROMPT:
            return False  # readline turns tty echo off at the prompt but echoes itself
        echo = self._terminal.echo_enabled()
        return echo is False or self._tracker.at_password_prompt()

    async def _handle_input(self, data: bytes) -> None:
        start = 0
        for index, byte in enumerate(data):
            if byte not in ENTER_KEYS:
                continue
            self._forward(data[start:index])
            start = index + 1
            submitted = await self._on_enter(data[index : index + 1])
            if submitted and start < len(data):
                # More pasted lines follow: let the shell come back to its prompt first (Ctrl-C
                # would also flush anything typed ahead of it).
                await self._wait_for_prompt()
        self._forward(data[start:])

    async def _wait_for_prompt(self) -> None:
        assert self._tracker is not None
        if not self._tracker.integration:
            await asyncio.sleep(0.2)
            return
        self._prompt_seen.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._prompt_seen.wait(), NEXT_PROMPT_WAIT)

    async def _settle(self) -> bool:
        """Wait for the echo of typed input, then for a moment of quiet; False if it never came."""
        deadline = time.monotonic() + ECHO_SETTLE_MAX
        while True:
            now = time.monotonic()
            echoed = self._last_output >= self._last_input
            if echoed:
                quiet = now - self._last_output
                if quiet >= ECHO_SETTLE_QUIET:
                    return True
                wait = ECHO_SETTLE_QUIET - quiet
            else:
                wait = deadline - now
            if now >= deadline:
                return echoed
            self._output_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._output_arrived.wait(), min(wait, deadline - now))

    async def _judge(self, line: str) -> Decision:
        # In a thread: a long or pathological line must not stall every other session.
        try:
            return await asyncio.to_thread(decide_shell, self._policy, line)
        except Exception as exc:  # fail closed: a policy error denies
            log.exception("policy error")
            return Decision(action="deny", rule=None, reason=f"policy error: {exc}")

    def _unknown(self, why: str) -> Decision:
        return Decision(
            action=self._policy.on_unknown,
            rule=None,
            reason=f"cannot tell the command with certainty: {why}",
            unknown=True,
        )

    async def _on_enter(self, key: bytes) -> bool:
        """Decide on one Enter; True if the shell got a command or a cancel (a new prompt follows)."""
        tracker = self._tracker
        assert tracker is not None
        if tracker.integration and tracker.state is ShellState.RUNNING:
            self._forward(key)  # input for the running program, not a shell command line
            return False
        if not await self._settle():
            line_text, decision = None, self._unknown("the terminal did not echo the input")
        else:
            line = tracker.command_line()
            line_text = line.text
            decision = (
                self._unknown(line.unknown) if line.text is None else await self._judge(line.text)
            )
        if line_text is not None and not line_text.strip():
            self._forward(key)
            return False
        shown = line_text if line_text is not None else "(unreadable command line)"
        if decision.action != "allow":
            allowed = await self._decide_held(shown, decision)
            if not allowed:
                self._cancel_line()
                self._just_cancelled = True
                return True
        else:
            await self._audit_decision("command", "command", shown, decision)
        self._exit_after_cancel = self._just_cancelled and shown.strip() == "exit"
        self._just_cancelled = False
        self._record(lambda recorder: recorder.mark(f"command: {shown}"))
        tracker.command_submitted()
        self._forward(key)
        return True

    async def _decide_held(self, command: str, decision: Decision) -> bool:
        """A command the policy did not simply allow: deny it, or wait here for approvers."""
        outcome = await self._held(command, decision)
        if outcome.approved:
            await self._audit_decision(
                "command",
                "command",
                command,
                decision,
                approver=outcome.approver,
                standing=outcome.standing,
            )
        return outcome.approved

    async def _held(self, command: str, decision: Decision) -> ReviewOutcome:
        in_session = self._recorder is not None
        screen = tuple(self._tracker.last_lines(20)) if self._tracker else ()
        # A one-off command (`connect NAME -- CMD`) is the session: its --reason counts.
        ask = self._ask_reason if in_session or not self._reason else None
        return await self._hold(
            command,
            decision,
            say=self._say,
            inform=self._inform,
            screen=screen,
            ask_reason=ask,
            status=self._status,
            watch_cancel=self._watch_ctrl_c,
            in_session=in_session,
        )

    def _say(self, text: str) -> None:
        if self._recorder is None:
            self._stderr(text)  # before the session started: a one-off command refused
        else:
            self._notice(text)
            self._record(lambda recorder: recorder.mark(f"blocked: {text}"))

    def _inform(self, text: str) -> None:
        if self._recorder is None:
            self._stderr(text)
        else:
            self._notice(text, colour="1;33")

    # -- while a command waits for approval -----------------------------------------------
    def _show(self, text: str) -> None:
        """Broker text on the user's terminal: recorded in a session, on stderr before one."""
        data = text.encode()
        if self._recorder is None:
            with contextlib.suppress(OSError, asyncssh.Error):
                self._process.stderr.write(data)
            return
        self._record(lambda recorder: recorder.output(data))
        self._send(data)

    def _status(self, text: str | None) -> None:
        """One status line, redrawn in place (None: the wait is over, leave the line)."""
        if text is None:
            if self._status_shown:
                self._status_shown = False
                self._show("\r\n")
            return
        self._status_shown = True
        self._show(f"\r\x1b[2K\x1b[1;33m[hoop]\x1b[0m {text}")

    async def _read_keys(self, seconds: float | None = None) -> bytes | None:
        """The user's next keystrokes while the session holds a command; None when they left."""
        while True:
            try:
                read = self._process.stdin.read(4096)
                data = await (read if seconds is None else asyncio.wait_for(read, seconds))
            except asyncssh.TerminalSizeChanged as change:
                if self._terminal is not None:
                    self._resize(change.width, change.height)
                continue
            except (asyncssh.BreakReceived, asyncssh.SignalReceived):
                return CTRL_C
            except (OSError, asyncssh.Error):
                data = b""
            if not data:
                self._client_gone = True
                return None
            return data

    async def _watch_ctrl_c(self) -> bool:
        """True when the user presses Ctrl-C, False when they leave; other keys are ignored."""
        while True:
            data = await self._read_keys()
            if data is None:
                return False
            if CTRL_C in data:
                return True

    async def _ask_reason(self, prompt: str) -> str | None:
        """A one-line prompt in the user's terminal, typed with the broker's own echo."""
        self._show(f"\r\n\x1b[1;33m[hoop]\x1b[0m {prompt}")
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        typed: list[str] = []
        escape = ""
        deadline = time.monotonic() + REASON_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            try:
                data = await self._read_keys(max(0.0, left))
            except TimeoutError:
                self._show(" (no answer)\r\n")
                return None
            if data is None:
                return None
            for char in decoder.decode(data):
                if escape:  # skip escape sequences (arrow keys and the like)
                    escape += char
                    if _escape_done(escape):
                        escape = ""
                    continue
                if char == "\x1b":
                    escape = char
                elif char == "\x03":
                    self._show("^C\r\n")
                    return None
                elif char in "\r\n":
                    self._show("\r\n")
                    return "".join(typed).strip()
                elif char in "\x7f\x08":
                    if typed:
                        typed.pop()
                        self._show("\b \b")
                elif char == "\x15":  # Ctrl-U
                    self._show("\b \b" * len(typed))
                    typed.clear()
                elif char.isprintable() and len(typed) < MAX_REASON:
                    typed.append(char)
                    self._show(char)

    # -- time-boxed access ----------------------------------------------------------------
    def _grant_ended(self, text: str) -> None:
        if self._ending:
            return
        self._ending = text
        self._notice(text)
        if self._terminal is not None:
            self._terminal.hangup()

    def _cancel_line(self) -> None:
        assert self._terminal is not None
        if self._tracker is not None:
            self._cancelled_at = self._tracker.prompts_seen
        self._record(lambda recorder: recorder.input(CTRL_C))
        self._terminal.write(CTRL_C)


Runner = Callable[[], Awaitable[int]]
