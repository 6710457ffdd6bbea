"""The SQL shell (`hoopctl connect NAME` on a `postgres`, `mysql` or `sqlite` target).

The broker runs the shell itself: prompt-toolkit over the SSH channel (prompt_channel), with
highlighting, completion and a history per user and target. Each input is judged as a whole by
the target's SQL policy, exactly like `exec`; allowed statements run one by one on a single
connection held for the whole session (so transactions span inputs), rows come masked from
SqlSessionBase._query and are shown a screen at a time as rich tables. Ctrl-C while a
statement runs cancels it on the server. Everything shown is recorded.

Without a PTY (a script piped in over plain `ssh -T`), the input runs as `exec` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiomysql
import aiosqlite
import asyncssh
import psycopg
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import History
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.shortcuts import PromptSession
from psycopg.pq import TransactionStatus
from pymysql.constants import SERVER_STATUS
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from broker.config import Rule
from broker.credentials import CredentialError
from broker.masking.lineage import ColumnSource
from broker.policy.decision import Decision
from broker.policy.sql import rows_rule
from broker.policy.sql_session import SessionState
from broker.protocols import open_database
from broker.protocols.base import TargetError
from broker.protocols.sql import Relation, StatementError
from broker.recording import RecordingError
from broker.sessions.approvals import ReviewOutcome
from broker.sessions.budgets import BudgetMeter
from broker.sessions.formats import to_text
from broker.sessions.prompt_channel import ChannelTerminal, lean_session, open_history
from broker.sessions.rows_over import RowsOver
from broker.sessions.sql_base import QUERY_KINDS, MaskedResult, SqlSessionBase
from broker.sessions.sql_catalog import (
    COMPLETION_LIMIT,
    LIST_KINDS,
    BadName,
    Catalog,
    MetaCommand,
    SqlCompleter,
    continuation_mark,
    ends_in_meta,
    help_text,
    index_line,
    input_complete,
    listing_filter,
    parse_meta,
    split_name,
    switch,
)
from broker.sessions.sql_exec import SqlExec
from broker.sessions.sql_state import needs_check, reading_drift

# Lines a page leaves free: the table's header and rule, and the `-- more --` line.
PAGE_MARGIN = 4
CATALOG_TIMEOUT = 5.0
MORE = "-- more: space/enter next page, q stop --"
# After these statements the completion catalog is loaded again (outside a transaction).
CATALOG_CHANGES = frozenset(
    {"CREATE", "ALTER", "DROP", "RENAME", "COMMIT", "ROLLBACK", "END", "ATTACH", "DETACH"}
)
META_DECISION = Decision("allow", None, "backslash command: a fixed catalog query")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_AFFECTED = re.compile(r"(-?\d+) row\(s\) affected")
_MISSING: Any = object()


def clean(text: str) -> str:
    """Text from the database or the user, made safe for a terminal: control characters (an
    escape sequence could redraw the screen or retitle the window) are shown as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def one_line(text: str) -> str:
    return " ".join(clean(text).split())


def _safe_component(name: str) -> str:
    """A user or target name as one path component (no separators, never `.` or `..`)."""
    value = quote(name, safe="@+-_")
    return "%2E" + value[1:] if value.startswith(".") else value or "%00"


def _verb(kind: str) -> str:
    """The first word of a statement kind ("CREATE TABLE" -> "CREATE")."""
    words = kind.split()
    return words[0] if words else ""


def _plural(count: int) -> str:
    return f"({count} row{'s' if count != 1 else ''})"


class SqlShell(SqlSessionBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._term: ChannelTerminal | None = None
        self._conn: Any = None
        self._catalog = Catalog()
        # What earlier input changed that bears on judging later input (search_path, role).
        self._sql_state = SessionState()
        self._expanded = False
        self._timing = False
        self._cancel: asyncio.Task[None] | None = None
        self._session: PromptSession[str] | None = None
        # Grant notices that arrive before the terminal is open are shown once it is.
        self._early_notices: list[str] = []
        self._grant_ended: str | None = None

    # -- set-up ---------------------------------------------------------------------------
    def _stderr(self, text: str) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            self._process.stderr.write(f"[hoop] {text}\r\n".encode())

    async def run(self) -> int:
        if self._process.get_terminal_type() is None:
            # No PTY: a script. It runs as `exec` runs SQL: judged whole, then statement by
            # statement, output as a table.
            script = SqlExec(
                self._broker,
                self._ctx,
                self._process,
                self._target,
                self._policy,
                self._gate,
                self._request,
            )
            if hasattr(self, "grant"):  # the access grant the server found for this session
                script.grant = self.grant
            return await script.run()
        if self._request.argv:
            self._stderr(
                f"{self._target.name} is a database: it takes no command "
                f"(use hoopctl exec {self._target.name} -c SQL)"
            )
            return 2
        term_type = self._process.get_terminal_type() or "xterm-256color"
        cols, rows, *_ = self._process.get_terminal_size()
        cols, rows = cols or 80, rows or 24
        started = time.time()
        try:
            recorder = self._open_recording(
                width=cols,
                height=rows,
                started=started,
                term=term_type,
                command=None,
                title=f"{self._ctx.user}@{self._target.name} sql",
            )
        except RecordingError as exc:
            self._stderr(f"session refused: the recording cannot be written ({exc})")
            await self._audit("session.rejected", outcome="failure", reason=str(exc))
            return 1
        await self._begin(
            kind="sql",
            started=started,
            command=None,
            details={"recording": f"{self.session_id}.cast", "dialect": self.dialect},
            on_grant_warning=self._grant_warning,
            on_grant_end=self._grant_over,
        )
        self._stderr(f"session {self.session_id} started on {self._target.name}")
        status, state, reason = 1, "closed", None
        try:
            async with ChannelTerminal(
                self._process, recorder, term=term_type, cols=cols, rows=rows
            ) as term:
                self._term = term
                for notice in self._early_notices:
                    term.notice(clean(notice))
                if self._grant_ended is not None:
                    term.end(self._grant_ended)
                try:
                    self._conn = await open_database(self._target)
                except (TargetError, CredentialError) as exc:
                    self._stderr(str(exc))
                    term.mark(f"error: {exc}")
                    state = "failed"
                    return status
                try:
                    status = await self._interact()
                finally:
                    await self._settle_cancel()
                    await self._conn.close()
                if term.failure is not None:
                    state, status = "terminated", 1
                    reason = f"recording failed: {term.failure}"
                elif term.ended is not None:
                    state, status, reason = "terminated", 1, term.ended
            return status
        finally:
            await self._end(state=state, status=status, reason=reason)
            self._stderr(f"session {self.session_id} ended (exit {status})")

    def _history(self) -> History:
        """The user's history on this target: DATA_DIR/history/USER/TARGET (0700 dirs, 0600)."""
        assert self._term is not None
        path = history_path(self._broker.data_dir, self._ctx.user, self._target.name)
        return open_history(path, self._term.notice)

    def _prompt_session(self) -> PromptSession[str]:
        assert self._term is not None
        session: PromptSession[str] = PromptSession(
            message=self._prompt_message,
            multiline=Condition(
                lambda: not input_complete(session.default_buffer.text, self.dialect)
            ),
            prompt_continuation=self._continuation,
            lexer=PygmentsLexer(self.unit.lexer()),
            completer=SqlCompleter(self.dialect, lambda: self._catalog),
            complete_while_typing=False,
            history=self._history(),
            enable_history_search=False,
            search_ignore_case=True,
            enable_open_in_editor=False,
            enable_suspend=False,
            mouse_support=False,
            input=self._term.input,
            output=self._term.output,
        )
        return lean_session(session)

    # -- prompt ---------------------------------------------------------------------------
    def _transaction(self) -> str:
        """psql's %x: "*" inside a transaction, "!" in a failed one, "" otherwise."""
        raw = getattr(self._conn, "_conn", None)
        try:
            if isinstance(raw, psycopg.AsyncConnection):
                status = raw.info.transaction_status
                if status == TransactionStatus.INTRANS:
                    return "*"
                if status == TransactionStatus.INERROR:
                    return "!"
            elif isinstance(raw, aiomysql.Connection):
                if raw.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS:
                    return "*"
            elif isinstance(raw, aiosqlite.Connection) and raw.in_transaction:
                return "*"
        except Exception:  # the state is a hint in the prompt, never a reason to fail
            return ""
        return ""

    def _prompt_message(self) -> StyleAndTextTuples:
        return [("class:prompt", f"{self._target.name}={self._transaction()}> ")]

    def _continuation(self, width: int, line_number: int, wrap_count: int) -> StyleAndTextTuples:
        text = self._session.default_buffer.text if self._session is not None else ""
        before = "\n".join(text.split("\n")[:line_number]) + "\n"
        mark = continuation_mark(before, self.dialect)
        prompt = f"{self._target.name}{mark}{self._transaction()}> "
        return [("class:prompt.continuation", prompt.rjust(width))]

    async def _interact(self) -> int:
        term = self._term
        assert term is not None
        await self._refresh_catalog()
        session = self._session = self._prompt_session()
        term.write(
            f"SQL shell on {clean(self._target.name)} ({self.dialect}) through hoop. "
            "Type \\? for help, \\q to quit.\n"
        )
        carry = ""
        while not term.finished:
            try:
                text = await term.prompt(session, default=carry)
                term.remember(f"{self._target.name}=> {text}")
            except KeyboardInterrupt:
                carry = ""
                continue
            except EOFError:
                if not term.finished:
                    term.write("\n")
                break
            carry = ""
            if term.finished:
                break
            outcome = await self._dispatch(text)
            if outcome is None:
                break
            carry = outcome
            await term.drain()
        if not term.finished and self._transaction():
            term.notice("the open transaction is rolled back: the session ended without COMMIT")
        return 1 if term.failure is not None else 0

    async def _dispatch(self, text: str) -> str | None:
        """Handle one accepted input; None to quit, else the text for the next prompt."""
        stripped = text.strip()
        if not stripped:
            return ""
        if stripped.rstrip(";").strip().lower() in ("quit", "exit"):
            return None
        lines = text.rstrip().split("\n")
        if not ends_in_meta(text, self.dialect):
            await self._run_input(text)
            return ""
        carry = ""
        before = "\n".join(lines[:-1])
        if before.strip():
            if input_complete(before, self.dialect):
                await self._run_input(before)
            else:
                carry = before + "\n"
        command = parse_meta(lines[-1])
        if command.name == "q":
            return None
        await self._meta(command)
        return carry

    # -- SQL ------------------------------------------------------------------------------
    async def _run_input(self, text: str) -> None:
        decision, parsed = await self._decide_sql(text, self._sql_state)
        approver: str | None = None
        standing: str | None = None
        if decision.action != "allow":
            outcome = await self._held(text, decision, len(parsed.statements))
            if not outcome.approved:
                return
            approver, standing = outcome.approver, outcome.standing
        for statement in parsed.statements:
            ok = await self._run_statement(
                statement.text,
                statement.kind,
                list(statement.tables),
                decision,
                approver,
                standing,
                rows_rule(self._policy, statement, self.dialect),
            )
            if not ok or self._term is None or self._term.finished:
                break
            if needs_check(statement) and self._conn is not None:
                drift = await reading_drift(self._conn, self.dialect)
                if drift is not None:
                    message = f"session ended: {drift}; the broker cannot judge further input"
                    self._term.notice(clean(message))
                    self._term.end(message)
                    break

    async def _held(self, text: str, decision: Decision, statements: int) -> ReviewOutcome:
        """Deny, or wait for the approval gate (Ctrl-C gives up waiting)."""
        term = self._term
        assert term is not None

        def say(message: str) -> None:
            if decision.action == "deny" and statements > 1:
                message += "; nothing in this input was run"
            term.notice(clean(message))
            term.mark(f"blocked: {message}")

        def inform(message: str) -> None:
            term.write(f"\x1b[1;33m[hoop]\x1b[0m {clean(message)}\n")

        task = asyncio.create_task(
            self._hold(
                text,
                decision,
                say=say,
                subject="query",
                screen=tuple(term.recent),
                inform=inform,
                status=lambda line: term.status(None if line is None else clean(line)),
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
            await self._audit_decision("query.blocked", "query", text, decision, note=message)
            return ReviewOutcome(approved=False, message=message)
        finally:
            term.on_interrupt = None

    def _grant_warning(self, text: str) -> None:
        if self._term is None:
            self._early_notices.append(text)
        else:
            self._term.notice(clean(text))

    def _grant_over(self, text: str) -> None:
        self._grant_ended = text
        if self._term is None:
            self._early_notices.append(text)
        else:
            self._term.notice(clean(text))
            self._term.end(text)

    def _interrupt(self) -> None:
        """Ctrl-C while a statement runs: ask the server to cancel it."""
        if self._conn is not None and (self._cancel is None or self._cancel.done()):
            self._cancel = asyncio.create_task(self._conn.cancel())

    async def _settle_cancel(self) -> None:
        """Let a cancel in flight finish, so it cannot reach the next statement."""
        if self._cancel is not None:
            with contextlib.suppress(Exception):
                await self._cancel
            self._cancel = None

    async def _run_statement(
        self,
        text: str,
        kind: str,
        tables: list[str],
        decision: Decision,
        approver: str | None,
        standing: str | None = None,
        bulk: Rule | None = None,
    ) -> bool:
        """Run one statement and show its result; BULK is the rows_over rule over it."""
        term = self._term
        assert term is not None
        term.mark(f"query: {text}")
        started = time.monotonic()
        waited = 0.0
        rows = 0
        error: str | None = None
        masked: dict[str, int] = {}
        meter = BudgetMeter(self._limits)
        gate = RowsOver(None, ())
        term.on_interrupt = self._interrupt

        async def hold(held: Decision) -> ReviewOutcome:
            outcome = await self._held(text, held, 1)
            term.on_interrupt = self._interrupt
            return outcome

        try:
            result = await self._query(self._conn, text, kind)
            if result.columns:
                gate = RowsOver(
                    bulk, result.plan.masked_columns if result.plan else (), self.bulk.before(bulk)
                )
                source = await gate.admit(result.rows, hold)
                stopped = False
                if gate.withheld is None:
                    shown = meter.limit(source)
                    rows, stopped, waited = await self._show(result.columns, shown)
                if gate.rule is not None:
                    approved = gate.outcome is not None and gate.outcome.approved
                    self.bulk.sent(gate.rule, rows, approved=approved)
                cut = gate.cut or meter.cut
                if cut is not None or gate.withheld is not None:
                    await self._stop(result.rows)
                if cut is not None:
                    term.write(cut.marker("table"))
                masked = result.masked_counts()
                if gate.withheld is not None:
                    term.write("(no rows sent)\n")
                else:
                    term.write(
                        f"({rows} rows shown; stopped)\n" if stopped else _plural(rows) + "\n"
                    )
                if _verb(kind) not in QUERY_KINDS and result.status:
                    term.write(self._status(kind, result.status) + "\n")
            elif _verb(kind) in QUERY_KINDS:
                # A query with no rows whose driver could not tell its columns.
                term.write(_plural(0) + "\n")
            else:
                term.write(self._status(kind, result.status) + "\n")
        except StatementError as exc:
            error = one_line(str(exc))
            term.write(f"{error}\n")
        finally:
            term.on_interrupt = None
            await self._settle_cancel()
        if self._timing:
            term.write(f"Time: {(time.monotonic() - started - waited) * 1000:.3f} ms\n")
        await self._audit_query(
            text,
            kind,
            tables,
            decision,
            rows=rows,
            masked=masked,
            error=error,
            started=started + waited,
            approver=gate.approver or approver,
            standing=standing,
            truncated=(gate.cut or meter.cut).as_dict() if (gate.cut or meter.cut) else None,
            withheld=gate.withheld,
        )
        if _verb(kind) in CATALOG_CHANGES and not self._transaction():
            await self._refresh_catalog()
        return error is None

    def _status(self, kind: str, status: str) -> str:
        """The command tag psql shows (`UPDATE 3`, `CREATE TABLE`): the server's own where it
        reports one; otherwise made from the statement's kind and the affected-row count."""
        if self.unit.command_tags and status:
            return clean(status)
        word = _verb(kind)
        found = _AFFECTED.fullmatch(status or "")
        if found and word in ("INSERT", "UPDATE", "DELETE", "REPLACE") and int(found.group(1)) >= 0:
            return f"{word} {found.group(1)}"
        return clean(kind) or "OK"

    # -- results --------------------------------------------------------------------------
    def _console(self, out: io.StringIO) -> Console:
        assert self._term is not None
        return Console(
            file=out,
            width=self._term.cols,
            height=self._term.rows,
            force_terminal=True,
            force_interactive=False,
            color_system="256",
            no_color=False,
            highlight=False,
            markup=False,
            emoji=False,
            soft_wrap=False,
            legacy_windows=False,
        )

    def _page_size(self, columns: int) -> int:
        assert self._term is not None
        if self._expanded:
            return max(1, (self._term.rows - 2) // (columns + 1))
        return max(1, self._term.rows - PAGE_MARGIN)

    async def _show(
        self, columns: list[str], rows: AsyncIterator[tuple[Any, ...]], *, footer: bool = True
    ) -> tuple[int, bool, float]:
        """Show rows a screen at a time; returns (rows shown, stopped by the user, seconds spent
        waiting for a key). Only one screen of rows is held at a time."""
        term = self._term
        assert term is not None
        names = [clean(name) for name in columns]
        shown = 0
        widths: list[int] | None = None
        lookahead: Any = _MISSING
        waited = 0.0
        while True:
            size = self._page_size(len(columns))
            page: list[tuple[Any, ...]] = []
            if lookahead is not _MISSING:
                page.append(lookahead)
                lookahead = _MISSING
            done = False
            while len(page) < size:
                row = await anext(rows, _MISSING)
                if row is _MISSING:
                    done = True
                    break
                page.append(row)
            if not done:
                lookahead = await anext(rows, _MISSING)
                done = lookahead is _MISSING
            if page or shown == 0:
                # Rendering is CPU work that grows with the values (a cell may hold megabytes):
                # in a thread, so other sessions are not held up.
                text, widths = await asyncio.to_thread(self._render, names, page, shown, widths)
                term.write(text)
            shown += len(page)
            await term.drain()
            if done or term.finished:
                return shown, False, waited
            began = time.monotonic()
            go_on = await self._more()
            waited += time.monotonic() - began
            if not go_on:
                await self._stop(rows)
                return shown, True, waited

    async def _more(self) -> bool:
        """The pager's question; True for the next page."""
        term = self._term
        assert term is not None
        term.write(f"\x1b[7m{MORE}\x1b[0m")
        await term.drain()
        # Ctrl-C here is a key like q (the statement is stopped as for q), not a cancel.
        interrupt, term.on_interrupt = term.on_interrupt, None
        try:
            while True:
                key = await term.read_key()
                if key in (b" ", b"\r", b"\n"):
                    answer = True
                    break
                if key in (b"q", b"Q", b"\x03", b""):
                    answer = False
                    break
        finally:
            term.on_interrupt = interrupt
        term.write("\r\x1b[2K")
        return answer

    async def _stop(self, rows: AsyncIterator[tuple[Any, ...]]) -> None:
        """Stop a result part-way: cancel the statement on the server (unless that would abort
        the open transaction) and read what is still in flight, discarding it."""
        if not (self.unit.cancel_aborts_transaction and self._transaction()):
            await self._conn.cancel()
        with contextlib.suppress(StatementError):
            async for _ in rows:
                pass

    def _render(
        self,
        names: list[str],
        page: list[tuple[Any, ...]],
        before: int,
        widths: list[int] | None,
    ) -> tuple[str, list[int] | None]:
        """One page as text: a table (its header on the first page only) or expanded records."""
        cells = [[clean(to_text(value)) for value in row] for row in page]
        if self._expanded:
            return self._expanded_text(names, cells, before), widths
        return self._table_text(names, cells, header=before == 0, widths=widths)

    def _table_text(
        self,
        names: list[str],
        cells: list[list[str]],
        *,
        header: bool,
        widths: list[int] | None,
    ) -> tuple[str, list[int]]:
        assert self._term is not None
        table = Table(show_edge=False, header_style="bold", pad_edge=False, show_header=header)
        for index, name in enumerate(names):
            minimum = widths[index] if widths else None
            table.add_column(Text(name, overflow="fold"), min_width=minimum, overflow="fold")
        for row in cells:
            table.add_row(*(Text(value, overflow="fold") for value in row))
        out = io.StringIO()
        self._console(out).print(table)
        measured = []
        for index, name in enumerate(names):
            values = [name, *(row[index] for row in cells)]
            measured.append(max(cell_len(line) for value in values for line in value.split("\n")))
        if widths:
            measured = [max(a, b) for a, b in zip(measured, widths, strict=True)]
        limit = max(1, self._term.cols // max(1, len(names)))
        return out.getvalue(), [min(width, max(limit, 1)) for width in measured]

    def _expanded_text(self, names: list[str], cells: list[list[str]], before: int) -> str:
        assert self._term is not None
        label_width = max((cell_len(name) for name in names), default=0)
        lines: list[str] = []
        for number, row in enumerate(cells, before + 1):
            value_width = max(
                (cell_len(line) for value in row for line in value.split("\n")), default=0
            )
            label = f"-[ RECORD {number} ]"
            head = label + "-" * max(0, label_width + 1 - len(label))
            head += "+" + "-" * max(1, min(value_width + 1, self._term.cols - len(head) - 1))
            lines.append(f"\x1b[1m{head}\x1b[0m")
            for name, value in zip(names, row, strict=True):
                pad = " " * (label_width - cell_len(name))
                first, *rest = value.split("\n")
                lines.append(f"{name}{pad} | {first}")
                lines.extend(f"{' ' * label_width} | {line}" for line in rest)
        return "\n".join(lines) + ("\n" if lines else "")

    # -- catalog and backslash commands ---------------------------------------------------
    async def _refresh_catalog(self) -> None:
        """Table and column names for completion (given up after a few seconds)."""
        loop = asyncio.get_running_loop()
        timer = loop.call_later(CATALOG_TIMEOUT, self._interrupt)
        assert self._term is not None
        self._term.on_interrupt = self._interrupt
        try:
            result = await self._conn.execute(self.unit.completion_sql(COMPLETION_LIMIT))
            pairs = [(row[0], row[1]) async for row in result.rows]
            self._catalog = Catalog.from_pairs(pairs)
        except StatementError:
            pass
        finally:
            timer.cancel()
            self._term.on_interrupt = None
            await self._settle_cancel()

    async def _catalog_query(self, sql: str) -> MaskedResult:
        """A catalog query's rows, masked as SHOW output is: value detectors, and column rules
        matched by the output columns' own names (catalog rows carry no table data)."""
        try:
            result = await self._conn.execute(sql)
        except StatementError as exc:
            raise StatementError(self._masked_error(exc)) from None
        plan = self._masking().plan([ColumnSource(name, ()) for name in result.columns])

        async def rows() -> AsyncIterator[tuple[Any, ...]]:
            try:
                async for row in result.rows:
                    yield plan.apply(row) if plan.active else row
            except StatementError as exc:
                raise StatementError(self._masked_error(exc)) from None

        return MaskedResult(result.columns, rows(), result.status, plan)

    async def _meta(self, command: MetaCommand) -> None:
        term = self._term
        assert term is not None
        term.mark(f"query: {command.text}")
        started = time.monotonic()
        name = command.name.rstrip("+")
        rows = 0
        masked: dict[str, int] = {}
        tables: list[str] = []
        error: str | None = None
        waited = 0.0
        term.on_interrupt = self._interrupt
        try:
            if name == "?":
                term.write(help_text())
            elif name in ("x", "timing"):
                current = self._expanded if name == "x" else self._timing
                value = switch(command.arg, current)
                if value is None:
                    error = f"\\{name}: expected on or off, not {command.arg!r}"
                elif name == "x":
                    self._expanded = value
                    term.write(f"Expanded display is {'on' if value else 'off'}.\n")
                else:
                    self._timing = value
                    term.write(f"Timing is {'on' if value else 'off'}.\n")
            elif name in LIST_KINDS and not (name == "d" and command.arg):
                rows, masked, waited = await self._list(name, command.arg)
            elif name == "d":
                tables = [command.arg]
                rows, masked, waited, described = await self._describe(command.arg)
                if described:
                    tables = [described]
            else:
                error = f"invalid command \\{name or command.text[1:]}"
                term.write(f"{clean(error)}\nTry \\? for help.\n")
                error += " (try \\?)"
        except StatementError as exc:
            error = one_line(str(exc))
        except BadName as exc:
            error = f"\\{name}: {exc}"
        finally:
            term.on_interrupt = None
            await self._settle_cancel()
        if error and not error.startswith("invalid command"):
            term.write(f"{clean(error)}\n")
        await self._audit_query(
            command.text,
            "META",
            tables,
            META_DECISION,
            rows=rows,
            masked=masked,
            error=error,
            started=started + waited,
        )

    async def _list(self, name: str, pattern: str) -> tuple[int, dict[str, int], float]:
        assert self._term is not None
        result = await self._catalog_query(self.unit.relations_sql())
        keep = listing_filter(LIST_KINDS[name], pattern)

        async def kept() -> AsyncIterator[tuple[Any, ...]]:
            async for row in result.rows:
                if keep(str(row[1]), str(row[2])):
                    yield row

        self._term.write("List of relations\n")
        rows, stopped, waited = await self._show(result.columns, kept())
        if rows == 0 and not stopped:
            self._term.write("Did not find any relations.\n")
        else:
            self._term.write(_plural(rows) + "\n")
        return rows, result.masked_counts(), waited

    async def _describe(self, arg: str) -> tuple[int, dict[str, int], float, str | None]:
        term = self._term
        assert term is not None
        schema, name = split_name(arg, self.dialect)
        found = await self._conn.execute(self.unit.find_sql(schema, name))
        hits = [row async for row in found.rows]
        if not hits:
            term.write(f'Did not find any relation named "{clean(arg)}".\n')
            return 0, {}, 0.0, None
        hit = hits[0]
        relation = Relation(
            schema=str(hit[0]),
            name=str(hit[1]),
            kind=str(hit[2] or "relation"),
            oid=int(hit[3]) if len(hit) > 3 and hit[3] is not None else None,
        )
        term.write(clean(relation.title) + "\n")
        columns = await self._catalog_query(self.unit.columns_sql(relation))
        rows, _, waited = await self._show(columns.columns, columns.rows)
        masked = columns.masked_counts()
        if relation.kind in ("table", "partitioned table", "materialized view"):
            indexes = await self._catalog_query(self.unit.indexes_sql(relation))
            lines = [
                index_line(to_text(row[0]), row[1], row[2], to_text(row[3]))
                async for row in indexes.rows
            ]
            if lines:
                term.write("Indexes:\n" + "\n".join(clean(line) for line in lines) + "\n")
            for column, n in indexes.masked_counts().items():
                masked[column] = masked.get(column, 0) + n
        return rows, masked, waited, f"{relation.schema}.{relation.name}"


def history_path(data_dir: Path, user: str, target: str) -> Path:
    """Where the SQL shell keeps USER's history on TARGET."""
    return data_dir / "history" / _safe_component(user) / _safe_component(target)
