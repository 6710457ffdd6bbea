"""prompt_toolkit on the far end of an SSH session channel, with every byte recorded.

The broker's SSH processes run in bytes mode without asyncssh's line editor: what the user
types arrives raw on the channel's stdin (resizes as TerminalSizeChanged exceptions), and
whatever is written to its stdout reaches the user's terminal as is. This module connects
that channel to prompt_toolkit without OS pipes or threads:

* ChannelInput is a prompt_toolkit Input fed from the channel: bytes are decoded and parsed
  into key presses (the VT100 parser prompt_toolkit uses for a real terminal).
* ChannelTerminal owns the channel for one session. It reads the channel in one task and
  routes keystrokes: to the prompt while one is shown; otherwise they are kept for the next
  prompt (type-ahead) or read one by one by the pager, and Ctrl-C goes to an interrupt
  handler (the shell cancels the running statement). Every byte written to the user goes
  through the session's recorder first, every byte read is recorded as input, every resize
  as a resize event. A strict recorder that fails ends the session: nothing more is shown.

prompt_toolkit is told not to touch process-wide state (SIGINT, the event loop's exception
handler). It does register a SIGWINCH handler while a prompt runs (in the main thread only);
output it would produce outside a running prompt is dropped here.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from itertools import count
from pathlib import Path
from typing import Any

import asyncssh
import prompt_toolkit.application.application as _pt_application
from prompt_toolkit.application.current import AppSession, create_app_session
from prompt_toolkit.data_structures import Size
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.input import typeahead as _typeahead
from prompt_toolkit.input.vt100_parser import Vt100Parser
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.shortcuts import PromptSession

from broker.recording import Recorder, RecordingError

SCREEN_CONTEXT = 20
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])"
)

log = logging.getLogger("hoop.broker.session")

CTRL_C = b"\x03"
READ_SIZE = 65536
# Keystrokes kept while no prompt is shown (type-ahead); more than this is dropped.
MAX_PENDING = 1 << 20
FLUSH_EVERY = 1.0
# At the end, how long the last output may wait for a client that does not read.
FINAL_DRAIN = 5.0
_BARE_LF = re.compile(r"(?<!\r)\n")
_ids = count(1)


@contextlib.contextmanager
def _no_winch_handler(handler: Callable[[], None]) -> Iterator[None]:
    yield


# A session learns its size from its SSH channel (ChannelTerminal.resize), never from SIGWINCH
# of the broker process. prompt_toolkit would install a process-wide handler at every prompt
# (and put the previous one back at its end, in whatever order the sessions' prompts end),
# which costs a few percent of the SQL shell's time per statement.
_pt_application.attach_winch_signal_handler = _no_winch_handler  # type: ignore[assignment]


def crlf(text: str) -> str:
    """Text for a terminal without output processing: every bare \\n becomes \\r\\n."""
    return _BARE_LF.sub("\r\n", text)


def one_key(data: bytes, parsed: list[KeyPress]) -> bool:
    """DATA, one byte read, made exactly one key press of itself (not a byte of an escape
    sequence, a paste or a multi-byte character), with none before it waiting: what may be
    echoed ahead of the prompt handling it (broker.sessions.echo_ahead)."""
    return len(data) == 1 and len(parsed) == 1 and parsed[0].data == chr(data[0])


def lean_session(session: PromptSession[str]) -> PromptSession[str]:
    """SESSION, drawing once per key: what every prompt the broker runs is set up with.

    - Its layout's windows are listed once instead of at every key and every redraw.
      prompt_toolkit walks the whole layout to find its windows for each key (to gather the
      key bindings) and each redraw; a PromptSession's layout never changes shape (its parts
      come and go by filters, which the walk ignores), so the list is kept while the layout's
      root stays the same. About a tenth of the CPU of each keystroke.
    - No validator or auto-suggestion task runs after each change. A PromptSession wraps
      both in dynamic objects that are always there, so each key started a task that found
      nothing to do and then asked for a second, identical redraw: half the CPU of a key.
      The broker's prompts have neither (a session that sets one keeps it).
    - No redraw once the prompt has its answer. Keys that arrive together with their Enter
      (a pasted or quickly typed line, every statement a script sends) asked for a redraw of
      the edited line, which ran just before prompt_toolkit's final redraw of the same line:
      a third of a prompt cycle drawn for nothing. The final redraw always follows an answer
      (Enter, Ctrl-C, Ctrl-D, or the input ending), and draws the line from the buffer."""
    if session.validator is None:
        session.validate_while_typing = False
    if session.auto_suggest is None:
        session.default_buffer.auto_suggest = None
    layout = session.layout
    walk = layout.find_all_windows
    found: list[tuple[object, list[Any]]] = []

    def find_all_windows() -> Iterator[Any]:
        if not found or found[0][0] is not layout.container:
            found[:] = [(layout.container, list(walk()))]
        yield from found[0][1]

    layout.find_all_windows = find_all_windows  # type: ignore[method-assign]
    app = session.app
    redraw = app._redraw

    def redraw_unless_answered(render_as_done: bool = False) -> None:
        if not render_as_done and app.future is not None and app.future.done():
            return
        redraw(render_as_done)

    app._redraw = redraw_unless_answered  # type: ignore[method-assign]
    return session


def open_history(path: Path, notice: Callable[[str], None]) -> History:
    """A user's prompt history kept at PATH (0700 folders, a 0600 file); in memory only, with
    a notice, when it cannot be kept there."""
    try:
        for directory in (path.parent.parent, path.parent):
            directory.mkdir(mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    except OSError as exc:
        notice(f"history is not kept for this session ({exc.strerror or exc})")
        return InMemoryHistory()
    return FileHistory(str(path))


class ChannelInput(Input):
    """A prompt_toolkit Input fed with the bytes that arrive on the SSH channel."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._keys: list[KeyPress] = []
        self._parser = Vt100Parser(self._keys.append)
        self._callbacks: list[Callable[[], None] | None] = []
        self._closed = False
        self._scheduled = False
        self._id = f"hoop-channel-{next(_ids)}"

    # -- feeding --------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[KeyPress]:
        """Parse DATA into key presses for the prompt; the ones it completed, when no key
        press parsed before is still waiting to be read (else an empty list)."""
        if self._closed or not data:
            return []
        waiting = len(self._keys)
        text = self._decoder.decode(data)
        if text:
            self._parser.feed(text)
        self._notify()
        return [] if waiting else list(self._keys)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._notify()

    def forget(self) -> None:
        """Drop what prompt_toolkit keeps for this input between prompts (its type-ahead)."""
        buffers = getattr(_typeahead, "_buffer", None)
        if isinstance(buffers, dict):
            buffers.pop(self._id, None)

    def _notify(self) -> None:
        if self._scheduled or not self._callbacks or self._callbacks[-1] is None:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._ready)

    def _ready(self) -> None:
        self._scheduled = False
        callback = self._callbacks[-1] if self._callbacks else None
        if callback is not None and (self._keys or self._closed):
            callback()

    # -- the Input interface --------------------------------------------------------------
    def fileno(self) -> int:
        raise NotImplementedError("a channel input has no file descriptor")

    def typeahead_hash(self) -> str:
        return self._id

    def read_keys(self) -> list[KeyPress]:
        keys, self._keys[:] = list(self._keys), []
        return keys

    def flush_keys(self) -> list[KeyPress]:
        self._parser.flush()
        return self.read_keys()

    @property
    def closed(self) -> bool:
        return self._closed

    def raw_mode(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def cooked_mode(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def attach(self, input_ready_callback: Callable[[], None]) -> AbstractContextManager[None]:
        return self._push(input_ready_callback)

    def detach(self) -> AbstractContextManager[None]:
        return self._push(None)

    @contextlib.contextmanager
    def _push(self, callback: Callable[[], None] | None) -> Iterator[None]:
        self._callbacks.append(callback)
        if callback is not None and (self._keys or self._closed):
            self._notify()
        try:
            yield
        finally:
            self._callbacks.pop()


class _PromptStdout:
    """The file prompt_toolkit's Vt100_Output writes to: the channel, only while a prompt runs."""

    encoding = "utf-8"

    def __init__(self, terminal: ChannelTerminal) -> None:
        self._terminal = terminal

    def write(self, data: str) -> None:
        if self._terminal.prompting:
            # Redraws of the line being edited are not "recent lines": the accepted line is
            # remembered once by the session, as it ran.
            self._terminal.write(data, remember=False)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


class ChannelTerminal:
    """The user's terminal at the other end of one SSH session channel (see module docstring)."""

    def __init__(
        self,
        process: asyncssh.SSHServerProcess[bytes],
        recorder: Recorder,
        *,
        term: str,
        cols: int,
        rows: int,
    ) -> None:
        self._process = process
        self._recorder = recorder
        self.term = term
        self.cols = cols
        self.rows = rows
        self.input = ChannelInput()
        self.output = Vt100_Output(_PromptStdout(self), self._size, term=term, enable_cpr=False)
        self.prompting = False
        self.input_ended = False
        self.client_gone = False
        self.ended: str | None = None
        self.failure: RecordingError | None = None
        # What the user last saw, as plain lines: context for approvers of a held statement.
        self.recent: deque[str] = deque(maxlen=SCREEN_CONTEXT)
        # Called (from the reader task) when Ctrl-C arrives while no prompt is shown.
        self.on_interrupt: Callable[[], None] | None = None
        # While set and no prompt is shown, keystrokes go to it as they arrive (a job on the
        # target has the terminal); REDACT_INPUT says when they are recorded as redacted.
        self.raw_sink: Callable[[bytes], None] | None = None
        self.redact_input: Callable[[], bool] = lambda: False
        self.on_resize: Callable[[int, int], None] | None = None
        # What to show at once for one key typed while a prompt is shown, before the prompt
        # handles it (None: the prompt's redraw shows it); see broker.sessions.echo_ahead.
        self.fast_echo: Callable[[bytes], bytes | None] | None = None
        self._above: list[bytes] = []
        self._above_task: asyncio.Task[None] | None = None
        self._pending = bytearray()
        self._input_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = ExitStack()
        self._app_session: AppSession | None = None
        self._warned = False

    # -- life cycle -----------------------------------------------------------------------
    async def __aenter__(self) -> ChannelTerminal:
        self._app_session = self._stack.enter_context(
            create_app_session(input=self.input, output=self.output)
        )
        self._tasks = [
            asyncio.create_task(self._read_loop()),
            asyncio.create_task(self._flush_loop()),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.input.close()
        self.input.forget()
        self._stack.close()
        self._record(lambda recorder: recorder.flush())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), FINAL_DRAIN)

    @property
    def finished(self) -> bool:
        """No more input will come, or the session must end (recording failed)."""
        return self.client_gone or self.failure is not None or self.ended is not None

    def _size(self) -> Size:
        return Size(rows=self.rows, columns=self.cols)

    # -- output ---------------------------------------------------------------------------
    def write(self, text: str, *, remember: bool = True) -> None:
        """Show TEXT (\\n becomes \\r\\n), recorded first: what cannot be recorded is not shown."""
        if text:
            self._send(crlf(text).encode("utf-8", "replace"))
            if remember:
                self.remember(text)

    def remember(self, text: str) -> None:
        """Keep TEXT's lines (escape sequences removed) among the recent ones."""
        for line in _ESCAPE_SEQUENCE.sub("", text).replace("\r", "").split("\n"):
            if line.strip():
                self.recent.append(line.rstrip())

    def _send(self, data: bytes, *, record: bool = True) -> None:
        if self.client_gone or (record and self.failure is not None):
            return
        if record and not self._record(lambda recorder: recorder.output(data)):
            return
        try:
            self._process.stdout.write(data)
        except (OSError, asyncssh.Error):
            self._gone()

    def send_raw(self, data: bytes) -> None:
        """Bytes from the target, recorded and shown as they are. While a prompt is on screen
        they are printed above it, and the prompt is drawn again below."""
        if not self.prompting:
            self._send(data)
            return
        self._above.append(data)
        if self._above_task is None or self._above_task.done():
            self._above_task = asyncio.create_task(self._print_above())

    async def _print_above(self) -> None:
        from prompt_toolkit.application import run_in_terminal

        while self._above:
            chunk = b"".join(self._above)
            self._above.clear()
            if not self.prompting:
                self._send(chunk)
                continue
            with contextlib.suppress(Exception):
                await run_in_terminal(lambda data=chunk: self._send(data), in_executor=False)

    def take_pending(self) -> bytes:
        """Keystrokes kept while no prompt was shown (type-ahead), removed."""
        data = bytes(self._pending)
        self._pending.clear()
        return data

    async def drain(self) -> None:
        if self.client_gone:
            return
        try:
            await self._process.stdout.drain()
        except (OSError, asyncssh.Error):
            self._gone()

    def notice(self, text: str) -> None:
        """A one-line message from the broker, in red like the terminal session's."""
        self.write(f"\x1b[1;31m[hoop]\x1b[0m {text}\n")

    def end(self, reason: str) -> None:
        """The broker ends the session (an access grant ran out): stop the prompt and any statement."""
        self.ended = reason
        self._stop_input()

    def end_input(self) -> None:
        """No more input is wanted (the target ended): a prompt on screen gives up."""
        self._stop_input(interrupt=False)
        self.input_ended = True

    def status(self, text: str | None) -> None:
        """One status line redrawn in place; None ends it with a newline."""
        self.write("\n" if text is None else f"\r\x1b[2K\x1b[1;33m[hoop]\x1b[0m {text}")

    def mark(self, label: str) -> None:
        self._record(lambda recorder: recorder.mark(label))

    def _record(self, action: Callable[[Recorder], None]) -> bool:
        if self.failure is not None:
            return False
        try:
            action(self._recorder)
        except RecordingError as exc:
            self._recording_failed(exc)
            return False
        return True

    def _recording_failed(self, exc: RecordingError) -> None:
        self.failure = exc
        log.error("session recording failed: %s", exc)
        self._send(
            b"\r\n\x1b[1;31m[hoop]\x1b[0m the session recording cannot be written; "
            b"this session is ended (strict recording)\r\n",
            record=False,
        )
        self._stop_input()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self._record(lambda recorder: recorder.flush())
            if self._recorder.failed is not None and not self._warned and self.failure is None:
                self._warned = True
                self._send(
                    f"\r\n\x1b[1;31m[hoop]\x1b[0m warning: recording stopped "
                    f"({self._recorder.failed}); best-effort mode goes on\r\n".encode(),
                    record=False,
                )

    # -- input ----------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        stdin = self._process.stdin
        while True:
            try:
                data = await stdin.read(READ_SIZE)
            except asyncssh.TerminalSizeChanged as change:
                self._resized(change.width, change.height)
                continue
            except asyncssh.SignalReceived as signal:
                if signal.signal == "INT":
                    self._deliver(CTRL_C)
                continue
            except asyncssh.BreakReceived:
                continue
            except (OSError, asyncssh.Error):
                self._gone()
                return
            if not data:
                self.input_ended = True
                self._stop_input(interrupt=False)
                return
            if not self._record_input(data):
                return
            self._deliver(data)

    def _record_input(self, data: bytes) -> bool:
        redact = not self.prompting and self.raw_sink is not None and self.redact_input()
        return self._record(lambda recorder: recorder.input(data, redact=redact))

    def _deliver(self, data: bytes) -> None:
        if self.prompting:
            parsed = self.input.feed(data)
            if self.fast_echo is not None and one_key(data, parsed):
                echo = self.fast_echo(data)
                if echo:
                    self._send(echo)
            return
        if self.raw_sink is not None:
            self.raw_sink(data)
            return
        if CTRL_C in data and self.on_interrupt is not None:
            # Type-ahead before a Ctrl-C is dropped with the statement it interrupts.
            self._pending[:] = data[data.rindex(CTRL_C) + 1 :]
            self.on_interrupt()
        elif len(self._pending) + len(data) <= MAX_PENDING:
            self._pending += data
        self._input_ready.set()

    def _resized(self, cols: int, rows: int) -> None:
        if cols <= 0 or rows <= 0:
            return
        self.cols, self.rows = cols, rows
        self._record(lambda recorder: recorder.resize(cols, rows))
        if self.on_resize is not None:
            self.on_resize(cols, rows)
        app = self._app_session.app if self._app_session is not None else None
        if self.prompting and app is not None:
            app._on_resize()

    def _gone(self) -> None:
        if not self.client_gone:
            self.client_gone = True
            self._stop_input()

    def _stop_input(self, *, interrupt: bool = True) -> None:
        if self.prompting:
            self.input.close()
        if interrupt and self.on_interrupt is not None:
            self.on_interrupt()
        self._input_ready.set()

    async def prompt(self, session: PromptSession[str], **kwargs: Any) -> str:
        """Run one prompt of SESSION on the channel; raises EOFError when input has ended."""
        if self.finished:
            raise EOFError
        self.prompting = True
        try:
            if self._pending:
                data = bytes(self._pending)
                self._pending.clear()
                self.input.feed(data)
            if self.input_ended:
                self.input.close()
            return await session.prompt_async(
                handle_sigint=False, set_exception_handler=False, **kwargs
            )
        finally:
            self.prompting = False
            await self.drain()

    async def ask_line(self, prompt: str) -> str | None:
        """One line typed after PROMPT (a reason for a held command), stripped; None when
        the user cancels (Ctrl-C, end of input) or types nothing."""
        try:
            answer = await self.prompt(lean_session(PromptSession()), message=f"{prompt} ")
        except (KeyboardInterrupt, EOFError):
            return None
        return answer.strip() or None

    async def read_key(self) -> bytes:
        """The next key typed while no prompt is shown (one byte; an escape sequence is dropped
        and returned as ESC); b"" when no more input will come."""
        while not self._pending:
            if self.input_ended or self.finished:
                return b""
            self._input_ready.clear()
            await self._input_ready.wait()
        key = bytes(self._pending[:1])
        if key == b"\x1b":
            self._pending.clear()
        else:
            del self._pending[:1]
        return key

    def discard_typeahead(self) -> None:
        self._pending.clear()
