"""Terminal sessions under the strict guard: the broker owns the command line.

The broker runs the line editor itself (prompt_toolkit over the SSH channel, as the SQL shell
does: history per user and target, Ctrl-R, multi-line input, completion of commands and of
paths on the target). A whole construct (heredoc, open quote, continuation, compound
command, or a paste of many commands) is collected until it is complete, judged as one
unit, and exactly that text is sent to the target's shell through the session helper
(broker/protocols/shell_agent.py), which runs it as one unit. The shell reads its commands only
from the helper, never from the terminal its jobs share. Whether the shell waits for a
command is reported by the helper out of band (its status channel, the pty's foreground
process group), never read off the output. While a command runs, keystrokes go to the pty
raw, so full-screen programs work; nothing typed then can reach the shell as a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import shlex
import time
from collections.abc import Callable, Iterable
from typing import Any

import bashlex
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import History
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output

from broker.config import LocalTarget, SshTarget
from broker.credentials import CredentialError
from broker.policy.decision import Decision
from broker.policy.shell import decide_shell
from broker.protocols import terminal_unit
from broker.protocols.agent_link import AgentEvent, AgentLink, wait_started
from broker.protocols.base import TargetError
from broker.protocols.terminal import TerminalUnit
from broker.sessions.approvals import ReviewOutcome
from broker.sessions.base import SessionBase
from broker.sessions.echo_ahead import EchoAhead
from broker.sessions.prompt_channel import ChannelTerminal, lean_session, open_history

log = logging.getLogger("hoop.broker.session")

MAX_INPUT = 64 * 1024
_INCOMPLETE = ("unexpected EOF", "delimited by end-of-file")
_COMMAND_POSITION = re.compile(r"(^|[;&|(`\n]|\$\(|&&|\|\|)\s*$")


@functools.lru_cache(maxsize=256)
def input_complete(text: str) -> bool:
    """True when TEXT is a whole construct the shell would run; False while it is open (a
    heredoc without its end, an open quote, a trailing backslash or operator, a compound
    command without its end). Input that cannot be parsed at all counts as complete: it is
    then judged, and what the broker cannot parse is unknown."""
    if len(text) > MAX_INPUT or not text.strip():
        return True
    stripped = text.rstrip("\n")
    if stripped.endswith("\\") and not stripped.endswith("\\\\"):
        return False
    try:
        bashlex.parse(text)
    except Exception as exc:  # bashlex raises several kinds of error
        return not any(mark in str(exc) for mark in _INCOMPLETE)
    return True


class TargetCompleter(Completer):
    """Commands (the first word) and paths on the target, asked of the session helper."""

    def __init__(self, link: AgentLink) -> None:
        self._link = link

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        return []

    async def get_completions_async(  # type: ignore[override]
        self, document: Document, complete_event: CompleteEvent
    ):
        before = document.text_before_cursor
        word = re.split(r"[\s;&|()<>`'\"=]", before)[-1]
        head = before[: len(before) - len(word)]
        kind = "command" if _COMMAND_POSITION.search(head) and "/" not in word else "path"
        for match in await self._link.complete(kind, word):
            yield Completion(match, start_position=-len(word))


def line_editor(
    message: Callable[[], StyleAndTextTuples],
    completer: Completer,
    history: History,
    keys: Input,
    screen: Output,
) -> PromptSession[str]:
    """The guarded terminal's line editor: whole constructs (multi-line until complete),
    completion on Tab, history, Ctrl-R."""
    session: PromptSession[str] = PromptSession(
        message=message,
        multiline=Condition(lambda: not input_complete(session.default_buffer.text)),
        prompt_continuation=lambda width, line, wrap: [("", "> ".rjust(width))],
        completer=completer,
        complete_while_typing=False,
        history=history,
        enable_history_search=False,
        search_ignore_case=True,
        enable_open_in_editor=False,
        enable_suspend=False,
        mouse_support=False,
        input=keys,
        output=screen,
    )
    # Draw each keystroke at once: by default prompt_toolkit may hold a redraw back up to
    # 10 ms while the event loop is busy, which is most of a keystroke's echo time here.
    session.app.max_render_postpone_time = 0
    return session


class GuardedTerminalSession(SessionBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._target: SshTarget | LocalTarget = self._target  # type: ignore[assignment]
        self._unit: TerminalUnit[Any] = terminal_unit(self._target.type)
        self._term: ChannelTerminal | None = None
        self._link: AgentLink | None = None
        self._cwd = "~"
        self._echo = True
        self._ready = asyncio.Event()
        self._ended = asyncio.Event()
        self._last_rc = 0
        self._exit: dict[str, Any] | None = None
        self._early_notices: list[str] = []
        self._grant_ended: str | None = None
        self._shell_pid = 0

    # -- set-up ---------------------------------------------------------------------------
    async def run(self) -> int:
        argv = list(self._request.argv)
        command_text = shlex.join(argv) if argv else None
        started = time.time()
        if command_text is not None:
            decision = await self._judge(command_text)
            if decision.action != "allow":
                outcome = await self._held_before(command_text, decision)
                if not outcome.approved:
                    return outcome.exit_status
        term_type = self._process.get_terminal_type()
        cols, rows, *_ = self._process.get_terminal_size()
        cols, rows = cols or 80, rows or 24
        recorder = await self._start(
            kind="terminal",
            started=started,
            command=command_text,
            width=cols,
            height=rows,
            term=term_type or "xterm-256color",
            title=f"{self._ctx.user}@{self._target.name}",
            details={
                "command": command_text,
                "recording": f"{self.session_id}.cast",
                "guard": "strict",
            },
            note=" (guard: strict)",
            on_grant_warning=self._grant_warning,
            on_grant_end=self._grant_over,
        )
        if recorder is None:
            return 1
        status, state, reason = 1, "closed", None
        try:
            async with ChannelTerminal(
                self._process, recorder, term=term_type or "dumb", cols=cols, rows=rows
            ) as term:
                self._term = term
                try:
                    await self._open_target(term_type or "dumb", cols, rows)
                except (TargetError, CredentialError) as exc:
                    self._stderr(str(exc))
                    term.mark(f"error: {exc}")
                    state, reason = "failed", str(exc)
                    return status
                for notice in self._early_notices:
                    term.notice(notice)
                if self._grant_ended is not None:
                    term.end(self._grant_ended)
                pump = asyncio.create_task(self._pump())
                try:
                    if command_text is not None:
                        await self._audit_decision(
                            "command",
                            "command",
                            command_text,
                            Decision(action="allow", rule=None, reason="allowed"),
                        )
                        status = await self._one_off(command_text)
                    elif term_type is None:
                        status = await self._script()
                    else:
                        status = await self._interact()
                finally:
                    await self._close_target()
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pump
                if term.failure is not None:
                    state, status = "terminated", 1
                    reason = f"recording failed: {term.failure}"
                elif term.ended is not None:
                    state, status, reason = "terminated", 1, term.ended
                elif self._exit is not None:
                    reason = self._exit.get("reason")
                    if self._exit.get("unexpected"):
                        state = "failed"
            return status
        finally:
            await self._finish(state=state, status=status, reason=reason)

    async def _open_target(self, term: str, cols: int, rows: int) -> None:
        link = await self._unit.open_agent(self._target, term=term)
        self._link = link
        # LESSSECURE: less (and man, git … through it) cannot start shell commands.
        session_env = {"HOOP_TARGET": self._target.name, "LESSSECURE": "1"}
        link.hello(term=term, cols=cols, rows=rows, env=session_env)
        try:
            early, info = await wait_started(link, self._target.name)
        except TargetError:
            link.close()
            raise
        assert self._term is not None
        for event in early:
            if event.kind == "output":
                self._term.send_raw(event.data)
        self._cwd = str(info.get("cwd") or self._cwd)
        self._shell_pid = int(info.get("shell") or 0)
        self._term.on_resize = link.resize
        self._term.redact_input = lambda: not self._echo

    async def _close_target(self) -> None:
        if self._link is None:
            return
        if self._exit is None:
            self._link.hangup()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), 3)
        self._link.close()
        self._unit.end_session(self._shell_pid)

    # -- the helper's events --------------------------------------------------------------
    async def _pump(self) -> None:
        link, term = self._link, self._term
        assert link is not None and term is not None
        while True:
            event = await link.events.get()
            if event.kind == "output":
                term.send_raw(event.data)
                term.remember(event.data.decode("utf-8", "replace"))
                await term.drain()
            elif event.kind == "prompt":
                self._on_prompt(event)
            elif event.kind == "echo":
                self._echo = event.info.get("echo") is not False
            else:
                self._on_exit(event)
                return

    def _on_prompt(self, event: AgentEvent) -> None:
        self._cwd = str(event.info.get("cwd") or self._cwd)
        self._last_rc = int(event.info.get("rc") or 0)
        discarded = int(event.info.get("discarded") or 0)
        if discarded and self._term is not None:
            self._term.notice(
                f"{discarded} byte{'s' if discarded != 1 else ''} typed while the command ran "
                "were not read by it and are discarded; type them at the prompt"
            )
        self._ready.set()

    def _on_exit(self, event: AgentEvent) -> None:
        info = dict(event.info)
        if event.kind != "exit":
            info["unexpected"] = True
            info.setdefault("status", 255)
            # The helper died without hanging up: end its shell's session here.
            self._unit.end_session(self._shell_pid)
        elif "redirected" in str(info.get("reason", "")):
            info["unexpected"] = True
        self._exit = info
        self._ended.set()
        term = self._term
        assert term is not None
        if info.get("unexpected"):
            term.notice(str(info.get("reason", "the session ended")))
        term.mark(f"session end: {info.get('reason', '')}")
        self._ready.set()
        term.end_input()

    # -- running commands -----------------------------------------------------------------
    async def _run(self, text: str) -> int | None:
        """Send TEXT to the shell and pass keys raw until it is back at its prompt; the exit
        status, or None when the shell has ended."""
        link, term = self._link, self._term
        assert link is not None and term is not None
        self._ready.clear()
        term.raw_sink = link.keys
        # The client going away (or the session being ended) stops the wait: the target is
        # then hung up, whatever still runs there.
        term.on_interrupt = self._ready.set
        pending = term.take_pending()
        link.run(text)
        if pending:
            link.keys(pending)
        try:
            await self._ready.wait()
        finally:
            term.raw_sink = None
            term.on_interrupt = None
        if self._exit is not None or term.finished:
            return None
        return self._last_rc

    async def _one_off(self, command: str) -> int:
        assert self._term is not None
        self._term.mark(f"command: {command}")
        rc = await self._run(command)
        if rc is None:
            return int((self._exit or {}).get("status", 255))
        return rc

    async def _submit(self, text: str) -> int | None:
        """Judge one accepted input and run it if the policy (or an approver) allows."""
        if "\x00" in text:
            decision = self._unknown("the input holds a NUL byte")
        elif len(text.encode("utf-8", "surrogateescape")) > MAX_INPUT:
            decision = self._unknown(f"the input is longer than {MAX_INPUT // 1024} KiB")
        else:
            decision = await self._judge(text)
        approver: str | None = None
        standing: str | None = None
        if decision.action != "allow":
            outcome = await self._held(text, decision)
            if not outcome.approved:
                return self._last_rc
            approver, standing = outcome.approver, outcome.standing
        await self._audit_decision(
            "command", "command", text, decision, approver=approver, standing=standing
        )
        assert self._term is not None
        self._term.mark(f"command: {text}")
        return await self._run(text)

    async def _judge(self, text: str) -> Decision:
        try:
            return await asyncio.to_thread(decide_shell, self._policy, text)
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

    # -- the line editor ------------------------------------------------------------------
    def _prompt_message(self) -> StyleAndTextTuples:
        cwd = self._cwd.replace("\n", " ")
        # OSC 133 marks around the prompt give recordings and replay their command
        # boundaries; the broker draws them itself, and they decide nothing.
        return [
            ("[ZeroWidthEscape]", "\x1b]133;A\x07"),
            ("class:prompt", f"{self._ctx.user}@{self._target.name}"),
            ("", ":"),
            ("class:prompt.cwd", cwd),
            ("", "$"),
            # A trailing space is never drawn, and the mark before it would be lost with it:
            # a no-break space is drawn.
            ("[ZeroWidthEscape]", "\x1b]133;B\x07"),
            ("", "\u00a0"),
        ]

    def _prompt_session(self) -> PromptSession[str]:
        from broker.sessions.sql_shell import history_path

        term, link = self._term, self._link
        assert term is not None and link is not None
        session = line_editor(
            self._prompt_message,
            TargetCompleter(link),
            open_history(
                history_path(self._broker.data_dir, self._ctx.user, self._target.name),
                term.notice,
            ),
            term.input,
            term.output,
        )
        term.fast_echo = EchoAhead(session, lambda: term.cols)
        return lean_session(session)

    async def _interact(self) -> int:
        term = self._term
        assert term is not None
        session = self._prompt_session()
        while not term.finished and self._exit is None:
            try:
                text = await term.prompt(session)
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            if term.finished or self._exit is not None:
                break
            term.remember(f"$ {text}")
            if not text.strip():
                continue
            rc = await self._submit(text)
            if rc is None:
                break
        if self._exit is not None:
            return int(self._exit.get("status", 0))
        return 0 if term.failure is None else 1

    async def _script(self) -> int:
        """Input from a pipe or a file: each complete construct in turn, as if typed."""
        term = self._term
        assert term is not None
        buffer = ""
        while not term.finished and self._exit is None:
            key = await term.read_key()
            if not key:
                break
            buffer += key.decode("utf-8", "replace")
            if not buffer.endswith("\n"):
                continue
            if not input_complete(buffer):
                continue
            text, buffer = buffer.rstrip("\n"), ""
            if text.strip() and await self._submit(text) is None:
                break
        if buffer.strip() and self._exit is None:
            await self._submit(buffer)
        if self._exit is not None:
            return int(self._exit.get("status", 0))
        return self._last_rc

    # -- a command that waits for approval ------------------------------------------------
    async def _held(self, text: str, decision: Decision) -> ReviewOutcome:
        term = self._term
        assert term is not None

        def say(message: str) -> None:
            term.notice(message)
            term.mark(f"blocked: {message}")

        def inform(message: str) -> None:
            term.write(f"\x1b[1;33m[hoop]\x1b[0m {message}\n")

        task = asyncio.create_task(
            self._hold(
                text,
                decision,
                say=say,
                screen=tuple(term.recent),
                inform=inform,
                status=term.status,
                ask_reason=term.ask_line,
            )
        )
        term.on_interrupt = task.cancel
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            message = "not run: cancelled while waiting for approval"
            say(message)
            await self._audit_decision("command.blocked", "command", text, decision, note=message)
            return ReviewOutcome(approved=False, message=message)
        finally:
            term.on_interrupt = None

    async def _held_before(self, command: str, decision: Decision) -> ReviewOutcome:
        """A one-off command (`connect NAME -- CMD`) the policy did not simply allow."""
        return await self._hold(command, decision, say=self._stderr, in_session=False)

    # -- time-boxed access ----------------------------------------------------------------
    def _grant_warning(self, text: str) -> None:
        if self._term is None:
            self._early_notices.append(text)
        else:
            self._term.notice(text)

    def _grant_over(self, text: str) -> None:
        self._grant_ended = text
        if self._term is None:
            self._early_notices.append(text)
            return
        self._term.notice(text)
        self._term.end(text)
        if self._link is not None:
            self._link.hangup()
