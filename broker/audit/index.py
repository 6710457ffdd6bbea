"""The full-text index of closed sessions: what was typed and what was shown, searchable.

Two kinds of lines go in, each with its session and its time offset (seconds since the
session started, the offset `hoopctl replay ID --at OFFSET` takes):

* ``command``: every command and SQL statement of the session, from its audit events
  (`command`, `query`, `command.blocked`, `query.blocked`), at the time of the recording's
  ``command: …`` / ``query: …`` mark when there is one, else at the time of the event.
* ``output``: the lines the target printed, rebuilt from the recording's ``o`` events: escape
  sequences removed, carriage returns, backspaces and erase-line applied, one entry per
  line at the time it took its final form (its last character shown): a command typed at a
  prompt that waited is found where it was typed, not where the prompt was drawn. Identical lines of one session are
  indexed once (their first time). A session contributes at most ``MAX_OUTPUT_LINES`` output
  lines of at most ``MAX_LINE_CHARS`` characters each, from its first ``MAX_INDEXED_OUTPUT``
  characters of output: a bulk export of millions of rows costs the index (and the broker's
  CPU, after the session) no more than a few MiB of it.

Only recordings (masked before they were written) and audit events are read, so a masked
value never reaches the index.

Sessions are indexed once they are no longer open (closed, interrupted, failed,
terminated) by :meth:`SessionIndex.catch_up`, which indexes every such session not yet
indexed. It runs before each search, and the broker runs it when a session ends and when
it starts (:func:`schedule_indexing`), so a search never waits for more than the sessions
that ended since the last one.

Storage: three tables of their own and one FTS5 table (``unicode61`` tokenizer: words,
case- and accent-insensitive) on the store's SQLite connection. Writing a session is
crash-safe: its ``session_index`` row is written first with ``complete = 0`` and set to 1
last; a row left incomplete (a crash in between) is purged and redone by the next catch-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
import time
import unicodedata
import weakref
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite

from broker.database import dialect, has_table
from broker.store import write_lock

if TYPE_CHECKING:
    from broker.store import Store

log = logging.getLogger("hoop.broker.index")

MAX_OUTPUT_LINES = 100_000
MAX_INDEXED_OUTPUT = 4 << 20  # characters of a session's output rebuilt into lines
MAX_LINE_CHARS = 1_000
INSERT_BATCH = 5_000
MAX_RESULTS = 1_000
PER_SESSION = 5  # matches shown per session, so that one session cannot fill the answer
MAX_SCANNED = 20_000  # matching lines looked at per search, newest first

COMMAND_EVENTS = ("command", "query", "command.blocked", "query.blocked")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS session_index (
    no INTEGER PRIMARY KEY,
    session TEXT NOT NULL UNIQUE,
    "user" TEXT NOT NULL,
    target TEXT NOT NULL,
    started_at REAL NOT NULL,
    indexed_at REAL NOT NULL,
    lines INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    note TEXT
);
CREATE TABLE IF NOT EXISTS session_lines (
    id INTEGER PRIMARY KEY,
    session_no INTEGER NOT NULL,
    kind TEXT NOT NULL,
    offset REAL NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS session_lines_session ON session_lines(session_no);
CREATE VIRTUAL TABLE IF NOT EXISTS session_text USING fts5(
    text, content='session_lines', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE INDEX IF NOT EXISTS audit_events_by_session ON audit_events(session);
"""


@dataclass(frozen=True)
class SearchMatch:
    session: str
    user: str
    target: str
    offset: float
    kind: str  # "command" | "output"
    line: str
    spans: list[tuple[int, int]]  # [start, end) of each highlighted part of LINE

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["spans"] = [list(span) for span in self.spans]
        return record


class SearchError(ValueError):
    """The search text cannot be searched for (no letters or digits)."""


# -- rebuilding output lines from a recording -------------------------------------------

# CSI (with its parameters and final byte), OSC / DCS / APC / PM (to BEL or ST), and the
# two- and three-byte escapes (charset selection, keypad modes, …).
_ESCAPE = re.compile(
    r"\x1b\[(?P<params>[0-?]*)[ -/]*(?P<final>[@-~])"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[()*+#%][ -~]"
    r"|\x1b[ -/]*[0-~]"
)
# An escape sequence cut off at the end of an event: kept for the next one.
_PARTIAL_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|[\]PX^_][^\x07\x1b]*\x1b?|[()*+#%]|[ -/]*)?$")
_CONTROL = re.compile(r"[\x00-\x07\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_BYTES = bytes([*range(0x00, 0x08), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])  # the same
_TEXT_OR_CONTROL = re.compile(r"[^\r\n\b\t]+|[\r\n\b\t]")


def _moves_cursor(text: bytes) -> bool:
    """Whether TEXT holds a carriage return, backspace or tab (no "\r\n" left in it)."""
    return b"\r" in text or b"\b" in text or b"\t" in text


class LineBuilder:
    """Turns terminal output into lines as a person would have read them on a line printer."""

    def __init__(self, *, max_lines: int = MAX_OUTPUT_LINES) -> None:
        self.lines: list[tuple[float, str]] = []
        self.truncated = False
        self._max_lines = max_lines
        self._seen: set[str] = set()
        self._chars: list[str] = []
        self._cursor = 0
        self._written: float | None = None
        self._carry = ""

    def feed(self, offset: float, data: str) -> None:
        if self.truncated:
            return  # no line can be added any more
        data = self._carry + data
        self._carry = ""
        partial = _PARTIAL_ESCAPE.search(data)
        if partial is not None:
            self._carry, data = data[partial.start() :], data[: partial.start()]
            if len(self._carry) > 4096:  # not an escape sequence after all: drop it
                self._carry = ""
        position = 0
        for match in _ESCAPE.finditer(data):
            if match.start() > position:
                self._text(offset, data[position : match.start()])
            self._escape(match.group("final"), match.group("params"))
            position = match.end()
        if position < len(data):
            self._text(offset, data[position:])

    def close(self) -> list[tuple[float, str]]:
        self._end_line()
        return self.lines

    def _escape(self, final: str | None, params: str | None) -> None:
        if final is None:
            return
        numbers = [int(p) if p.isdigit() else 0 for p in (params or "").split(";")]
        count = max(numbers[0], 1) if numbers else 1
        if final == "K":  # erase in line
            mode = numbers[0] if numbers else 0
            if mode == 0:
                del self._chars[self._cursor :]
            elif mode == 1:
                self._chars[: self._cursor] = [" "] * min(self._cursor, len(self._chars))
            else:
                self._chars.clear()
        elif final == "D":
            self._cursor = max(0, self._cursor - count)
        elif final == "C":
            self._cursor = min(MAX_LINE_CHARS, self._cursor + count)
        elif final == "G":
            self._cursor = min(MAX_LINE_CHARS, count - 1)
        elif final == "P":  # delete characters
            del self._chars[self._cursor : self._cursor + count]
        elif final in "HfABdJ":  # the cursor leaves the line, or the screen is cleared
            self._end_line()

    def _text(self, offset: float, text: str) -> None:
        # In UTF-8 bytes: the controls are ASCII and never inside a longer character, and
        # bytes' translate, replace and `in` are C loops where a regex over a bulk of output
        # (an export's CSV) took most of this method's time.
        raw = text.encode("utf-8", "surrogatepass").translate(None, _CONTROL_BYTES)
        # Output sent without a terminal is recorded with "\r\n" line ends, where "\r" only
        # moves the cursor to where the line ends anyway.
        plain = raw.replace(b"\r\n", b"\n") if b"\r\n" in raw else raw
        if not _moves_cursor(plain):
            lines = plain.decode("utf-8", "surrogatepass")
            # Plain lines (bulk output: a CSV export, a file): split at once, not piece by
            # piece; the same lines as below.
            *complete, rest = lines.split("\n")
            whole = 0
            if complete and (self._chars or self._cursor):  # ends a line an earlier event began
                if complete[0]:
                    self._write(offset, complete[0])
                self._end_line()
                whole = 1
            self._add_whole_lines(complete[whole:] if whole else complete, offset)
            if rest:
                self._write(offset, rest)
            return
        for piece in _TEXT_OR_CONTROL.findall(raw.decode("utf-8", "surrogatepass")):
            if piece == "\n":
                self._end_line()
            elif piece == "\r":
                self._cursor = 0
            elif piece == "\b":
                self._cursor = max(0, self._cursor - 1)
            elif piece == "\t":
                self._cursor = min(MAX_LINE_CHARS, (self._cursor // 8 + 1) * 8)
            else:
                self._write(offset, piece)

    def _write(self, offset: float, text: str) -> None:
        if text.strip():
            self._written = offset  # the line's time: when it was last written
        chars, cursor = self._chars, self._cursor
        room = MAX_LINE_CHARS - cursor
        if room <= 0:
            return
        text = text[:room]
        if cursor > len(chars):
            chars.extend(" " * (cursor - len(chars)))
        chars[cursor : cursor + len(text)] = text
        self._cursor = cursor + len(text)

    def _end_line(self) -> None:
        line = "".join(self._chars).strip()
        written = self._written
        self._chars = []
        self._cursor = 0
        self._written = None
        self._add_line(line, written)

    def _add_whole_lines(self, pieces: list[str], offset: float) -> None:
        """What _write and _end_line would make of each piece, a whole line written at OFFSET,
        in C-level steps over the lot rather than a call per line (an export's CSV)."""
        if not pieces or self.truncated:
            return
        if max(map(len, pieces)) > MAX_LINE_CHARS:
            pieces = [piece[:MAX_LINE_CHARS] for piece in pieces]
        found = dict.fromkeys(map(str.strip, pieces))  # the first of each, in order
        found.pop("", None)
        fresh = list(found)
        if not self._seen.isdisjoint(fresh):
            fresh = [line for line in fresh if line not in self._seen]
        room = self._max_lines - len(self.lines)
        if len(fresh) > room:
            del fresh[max(room, 0) :]
            self.truncated = True
        self._seen.update(fresh)
        self.lines.extend(zip(repeat(offset), fresh))

    def _add_line(self, line: str, written: float | None) -> None:
        if not line or written is None or line in self._seen:
            return
        if len(self.lines) >= self._max_lines:
            self.truncated = True
            return
        self._seen.add(line)
        self.lines.append((written, line))


@dataclass
class RecordingText:
    lines: list[tuple[float, str]]
    marks: list[tuple[float, str]]
    note: str | None = None


class RecordingTap:
    """A session's output lines and marks, gathered as its recording is written (set as the
    Recorder's tap), so that the index never reads the recording again after the session.
    The same caps as reading a recording: MAX_INDEXED_OUTPUT characters of output are turned
    into lines, marks are all kept."""

    def __init__(self) -> None:
        self._builder = LineBuilder()
        self._marks: list[tuple[float, str]] = []
        self._output_left = MAX_INDEXED_OUTPUT
        self.note: str | None = None

    def __call__(self, at: float, code: str, data: str) -> None:
        if code == "o" and self._output_left > 0:
            self._builder.feed(at, data[: self._output_left])
            self._output_left -= len(data)
            if self._output_left <= 0:
                self.note = f"only the first {MAX_INDEXED_OUTPUT >> 20} MiB of output are indexed"
        elif code == "m":
            self._marks.append((at, data))

    @property
    def wants_output(self) -> bool:
        return self._output_left > 0

    def text(self) -> RecordingText:
        lines = self._builder.close()
        note = self.note
        if self._builder.truncated:
            note = f"only the first {MAX_OUTPUT_LINES} distinct output lines are indexed"
        return RecordingText(lines=lines, marks=self._marks, note=note)


def read_recording_text(path: Path) -> RecordingText:
    """Output lines and marks of a recording; a damaged recording gives what precedes the damage.
    For a session whose lines were not gathered while it ran (RecordingTap): one a broker
    crash cut off, or one another process ended."""
    tap = RecordingTap()
    damage: str | None = None
    try:
        with path.open("rb") as file:
            for lineno, raw in enumerate(file, 1):
                if not tap.wants_output and b'"m"' not in raw:
                    continue  # past the output cap only marks are read (cheaply, as read_marks)
                try:
                    value = json.loads(raw)
                except ValueError:
                    if raw.endswith(b"\n") or lineno == 1:
                        damage = f"recording damaged at line {lineno}; indexed up to it"
                    break
                if lineno == 1:
                    continue
                if not (isinstance(value, list) and len(value) == 3):
                    damage = f"recording damaged at line {lineno}; indexed up to it"
                    break
                at, code, data = value
                if not isinstance(at, int | float) or not isinstance(data, str):
                    damage = f"recording damaged at line {lineno}; indexed up to it"
                    break
                tap(float(at), code, data)
    except OSError as exc:
        damage = f"recording unreadable: {exc.strerror or exc}"
    text = tap.text()
    if damage is not None and text.note is None:
        text.note = damage
    return text


def read_marks(path: Path) -> list[tuple[float, str]]:
    """The marks of a recording (time, label), up to any damage; cheap on output lines."""
    marks: list[tuple[float, str]] = []
    try:
        with path.open("rb") as file:
            for lineno, raw in enumerate(file, 1):
                if lineno == 1 or b'"m"' not in raw:
                    continue
                try:
                    at, code, data = json.loads(raw)
                except ValueError:
                    break
                if code == "m" and isinstance(at, int | float) and isinstance(data, str):
                    marks.append((float(at), data))
    except OSError:
        pass
    return marks


class MarkClock:
    """Where each command or statement sits in its recording: at its `command: …` /
    `query: …` mark when it has one (what `replay --commands` shows), else at its audit
    event's time since the session started. Marks are used once each, in order."""

    def __init__(self, started_at: float, marks: list[tuple[float, str]]) -> None:
        self.started_at = started_at
        self._unused: dict[str, list[float]] = {}
        for at, label in marks:
            for prefix in ("command: ", "query: "):
                if label.startswith(prefix):
                    self._unused.setdefault(label[len(prefix) :], []).append(at)

    def offset(self, text: str, event_time: float) -> float:
        times = self._unused.get(text)
        offset = times.pop(0) if times else max(0.0, event_time - self.started_at)
        return round(offset, 3)


def command_lines(
    started_at: float,
    events: Iterable[tuple[float, str, dict[str, Any]]],
    marks: list[tuple[float, str]],
) -> list[tuple[float, str]]:
    """(offset, text) of every command and statement, placed at its recording mark if it has one."""
    clock = MarkClock(started_at, marks)
    result = []
    for event_time, event_type, details in events:
        subject = "query" if event_type.startswith("query") else "command"
        text = details.get(subject)
        if not isinstance(text, str) or not text.strip():
            continue
        offset = clock.offset(text, event_time)
        result.append((offset, _CONTROL.sub(" ", text.replace("\n", " ")).strip()))
    return result


# -- the index ---------------------------------------------------------------------------


_WORD = re.compile(r"[^\W_]+")


def _fold(word: str) -> str:
    """A word as the unicode61 tokenizer compares it: case-folded, accents removed."""
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def fts_query(text: str, *, prefix: bool = True) -> str:
    """The FTS5 query for TEXT: its words as one phrase; with PREFIX, the last word also
    matches as the start of a longer word."""
    if not _WORD.search(text):
        raise SearchError("search for at least one letter or digit")
    return '"' + text.replace('"', '""') + '"' + ("*" if prefix else "")


def highlight_spans(line: str, text: str, *, prefix: bool) -> list[tuple[int, int]]:
    """[start, end) of each run of LINE's words that matches the words of TEXT, as FTS5 does."""
    wanted = [_fold(word) for word in _WORD.findall(text)]
    words = [(m.start(), m.end(), _fold(m.group())) for m in _WORD.finditer(line)]
    spans: list[tuple[int, int]] = []
    last = len(wanted) - 1
    index = 0
    while wanted and index + len(wanted) <= len(words):
        window = words[index : index + len(wanted)]
        if all(
            word == want or (prefix and n == last and word.startswith(want))
            for n, ((_, _, word), want) in enumerate(zip(window, wanted, strict=True))
        ):
            spans.append((window[0][0], window[-1][1]))
            index += len(wanted)
        else:
            index += 1
    return spans


class SessionIndex:
    """The index on one store connection; one per broker (see :func:`index_for`)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        # Sessions' text gathered while they ran (RecordingTap), until they are indexed.
        self._gathered: dict[str, RecordingText] = {}
        self._ready = False
        self._purged = False

    _schema = _SCHEMA
    _returning = ""
    _match_sql = (
        'SELECT s.session, s."user", s.target, s.started_at, l.kind, l."offset", l.text '
        "FROM session_text JOIN session_lines l ON l.id = session_text.rowid "
        "JOIN session_index s ON s.no = l.session_no "
        "JOIN sessions ON sessions.id = s.session "
        "WHERE session_text MATCH ?"
    )

    @staticmethod
    def query(text: str, *, prefix: bool = True) -> str:
        return fts_query(text, prefix=prefix)

    async def ensure_schema(self) -> None:
        if not self._ready:
            async with write_lock(self._db):
                if dialect(self._db) == "postgres":  # one node at a time makes the tables
                    await self._db.execute("BEGIN IMMEDIATE")
                await self._db.executescript(self._schema)
                await self._db.commit()
            self._ready = True

    async def _new_number(self, cursor: Any) -> int:
        """The session_index row's number that the INSERT made."""
        return int(cursor.lastrowid)

    async def _add_text(self, number: int) -> None:
        """Put session NUMBER's lines into the full-text index."""
        await self._db.execute(
            "INSERT INTO session_text(rowid, text) SELECT id, text FROM session_lines "
            "WHERE session_no = ?",
            (number,),
        )

    async def _drop_text(self, number: int) -> None:
        """Take session NUMBER's lines out of the full-text index (before they are deleted)."""
        await self._db.execute(
            "INSERT INTO session_text(session_text, rowid, text) "
            "SELECT 'delete', id, text FROM session_lines WHERE session_no = ?",
            (number,),
        )

    async def catch_up(self) -> int:
        """Index every session that has ended and is not indexed yet; return how many."""
        async with self._lock:
            await self.ensure_schema()
            if not self._purged:
                # Left by a crash, a failed write, or sessions removed from the store.
                await self._purge_incomplete_and_removed()
                self._purged = True
            async with self._db.execute(
                'SELECT id, "user", target, started_at, recording FROM sessions '
                "WHERE state != 'open' AND id NOT IN (SELECT session FROM session_index) "
                "ORDER BY started_at"
            ) as cursor:
                pending = await cursor.fetchall()
            for session_id, user, target, started_at, recording in pending:
                try:
                    await self._index_one(session_id, user, target, started_at, recording)
                except sqlite3.Error:
                    log.exception("indexing session %s failed", session_id)
                    self._purged = False  # its partial rows go before the next attempt
            return len(pending)

    async def _purge_incomplete_and_removed(self) -> None:
        async with self._db.execute(
            "SELECT no FROM session_index WHERE complete = 0 "
            "OR session NOT IN (SELECT id FROM sessions)"
        ) as cursor:
            stale = [row[0] for row in await cursor.fetchall()]
        if not stale:
            return
        async with write_lock(self._db), self._rolled_back_on_error():
            for number in stale:
                await self._drop_text(number)
                await self._db.execute("DELETE FROM session_lines WHERE session_no = ?", (number,))
                await self._db.execute("DELETE FROM session_index WHERE no = ?", (number,))
            await self._db.commit()

    @contextlib.asynccontextmanager
    async def _rolled_back_on_error(self) -> AsyncIterator[None]:
        """A write transaction that fails leaves nothing behind on the shared connection."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await self._db.rollback()
            raise

    async def _index_one(
        self, session_id: str, user: str, target: str, started_at: float, recording: str | None
    ) -> None:
        gathered = self._gathered.pop(session_id, None)
        if gathered is not None:
            text = gathered
        elif recording:
            text = await asyncio.to_thread(read_recording_text, Path(recording))
        else:
            text = RecordingText(lines=[], marks=[], note="no recording")
        async with self._db.execute(
            "SELECT time, type, event FROM audit_events WHERE session = ? AND type IN (?,?,?,?) "
            "ORDER BY id",
            (session_id, *COMMAND_EVENTS),
        ) as cursor:
            events = [
                (row[0], row[1], json.loads(row[2]).get("details") or {})
                for row in await cursor.fetchall()
            ]
        rows = [
            ("command", offset, line)
            for offset, line in command_lines(started_at, events, text.marks)
        ]
        rows += [("output", offset, line) for offset, line in text.lines]
        async with write_lock(self._db), self._rolled_back_on_error():
            cursor = await self._db.execute(
                'INSERT INTO session_index(session, "user", target, started_at, indexed_at, '  # noqa: S608
                "note) VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING" + self._returning,
                (session_id, user, target, started_at, time.time(), text.note),
            )
            if cursor.rowcount == 0:
                await self._db.commit()  # another process sharing the store (a worker) indexed it
                return
            number = await self._new_number(cursor)
            for start in range(0, len(rows), INSERT_BATCH):
                batch = rows[start : start + INSERT_BATCH]
                await self._db.executemany(
                    'INSERT INTO session_lines(session_no, kind, "offset", text) VALUES (?,?,?,?)',
                    [(number, kind, offset, line) for kind, offset, line in batch],
                )
            await self._add_text(number)
            await self._db.execute(
                "UPDATE session_index SET complete = 1, lines = ? WHERE no = ?", (len(rows), number)
            )
            await self._db.commit()

    def gathered(self, session_id: str, text: RecordingText) -> None:
        """TEXT was gathered while session SESSION_ID ran: the index takes it from here
        instead of reading the recording again."""
        self._gathered[session_id] = text

    async def search(
        self, text: str, *, user: str | None = None, limit: int = 50
    ) -> list[SearchMatch]:
        """Lines matching TEXT (of USER's sessions only, when given), newest sessions first.

        Whole words first; only when they give fewer than LIMIT matches, the last word also
        as a prefix (a prefix of a common word is the costly query, so it runs only then).
        """
        exact = self.query(text, prefix=False)
        limit = max(1, min(limit, MAX_RESULTS))
        await self.catch_up()
        prefix = False
        rows, exhausted = await self._matching(exact, user, limit)
        if len(rows) < limit and exhausted:
            prefix = True
            rows, _ = await self._matching(self.query(text), user, limit)
        started = {row[0]: row[3] for row in rows}
        matches = [
            SearchMatch(
                session=session,
                user=owner,
                target=target,
                offset=offset,
                kind=kind,
                line=line,
                spans=highlight_spans(line, text, prefix=prefix),
            )
            for session, owner, target, _, kind, offset, line in rows
        ]
        matches.sort(key=lambda m: (-started[m.session], m.session, m.offset, m.kind))
        return matches

    async def _matching(
        self, query: str, user: str | None, limit: int
    ) -> tuple[list[tuple[Any, ...]], bool]:
        """Up to LIMIT matching lines, newest first, at most PER_SESSION of each session;
        and whether every match was looked at."""
        sql = self._match_sql
        params: list[Any] = [query]
        if user is not None:
            sql += ' AND s."user" = ?'
            params.append(user)
        sql += " ORDER BY l.id DESC"
        kept: list[tuple[Any, ...]] = []
        per_session: dict[str, int] = {}
        scanned = 0
        async with self._db.execute(sql, params) as cursor:
            while len(kept) < limit:
                if scanned >= MAX_SCANNED:
                    return kept, False
                rows = await cursor.fetchmany(500)
                if not rows:
                    return kept, True
                scanned += len(rows)
                for row in rows:
                    # A word on every line of one session must not hide every other session.
                    session = row[0]
                    if per_session.get(session, 0) >= PER_SESSION or len(kept) >= limit:
                        continue
                    per_session[session] = per_session.get(session, 0) + 1
                    kept.append(row)
        return kept, False

    async def forget(self, session_ids: Iterable[str]) -> None:
        """Drop these sessions from the index; call it after removing them from the store
        (retention). Sessions removed without it never show in search results (a search
        joins the sessions table) and leave the index at the broker's next start."""
        await self.ensure_schema()
        async with self._lock:
            async with write_lock(self._db), self._rolled_back_on_error():
                for session_id in session_ids:
                    await self._db.execute(
                        "UPDATE session_index SET complete = 0 WHERE session = ?", (session_id,)
                    )
                await self._db.commit()
            await self._purge_incomplete_and_removed()


_SCHEMA_PG = """
CREATE TABLE IF NOT EXISTS session_index (
    no BIGSERIAL PRIMARY KEY,
    session TEXT NOT NULL UNIQUE,
    "user" TEXT NOT NULL,
    target TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    indexed_at DOUBLE PRECISION NOT NULL,
    lines INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    note TEXT
);
CREATE TABLE IF NOT EXISTS session_lines (
    id BIGSERIAL PRIMARY KEY,
    session_no BIGINT NOT NULL,
    kind TEXT NOT NULL,
    "offset" DOUBLE PRECISION NOT NULL,
    text TEXT NOT NULL,
    words tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED
);
CREATE INDEX IF NOT EXISTS session_lines_session ON session_lines(session_no);
CREATE INDEX IF NOT EXISTS session_lines_words ON session_lines USING gin(words);
CREATE INDEX IF NOT EXISTS audit_events_by_session ON audit_events(session);
"""


class PgSessionIndex(SessionIndex):
    """The index in a PostgreSQL store: PostgreSQL's own full-text search (a tsvector of
    each line, GIN-indexed, the 'simple' configuration: words, case-insensitive)."""

    _schema = _SCHEMA_PG
    _returning = " RETURNING no"
    _match_sql = (
        'SELECT s.session, s."user", s.target, s.started_at, l.kind, l."offset", l.text '
        "FROM session_lines l JOIN session_index s ON s.no = l.session_no "
        "JOIN sessions ON sessions.id = s.session "
        "WHERE l.words @@ to_tsquery('simple', ?)"
    )

    @staticmethod
    def query(text: str, *, prefix: bool = True) -> str:
        """TEXT's words as one phrase (each word followed by the next); with PREFIX, the last
        word also as the start of a longer one. Only letters and digits reach the query."""
        words = [_fold(word) for word in _WORD.findall(text)]
        if not words:
            raise SearchError("search for at least one letter or digit")
        return " <-> ".join(words) + (":*" if prefix else "")

    async def _new_number(self, cursor: Any) -> int:
        row = await cursor.fetchone()
        return int(row[0])

    async def _add_text(self, number: int) -> None:
        return None  # each line's words are a generated column

    async def _drop_text(self, number: int) -> None:
        return None


def drop_from_index(conn: sqlite3.Connection, session_ids: Iterable[str]) -> int:
    """Remove these sessions' lines from the index with a plain sqlite3 connection, inside
    the caller's transaction (the caller commits): for retention (`hoop-broker prune`), so
    that the text of a pruned session goes with its recording. Returns sessions removed."""
    if not has_table(conn, "session_index"):
        return 0
    postgres = dialect(conn) == "postgres"
    removed = 0
    for session_id in session_ids:
        row = conn.execute(
            "SELECT no FROM session_index WHERE session = ?", (session_id,)
        ).fetchone()
        if row is None:
            continue
        if not postgres:  # PostgreSQL's words go with their lines
            conn.execute(
                "INSERT INTO session_text(session_text, rowid, text) "
                "SELECT 'delete', id, text FROM session_lines WHERE session_no = ?",
                (row[0],),
            )
        conn.execute("DELETE FROM session_lines WHERE session_no = ?", (row[0],))
        conn.execute("DELETE FROM session_index WHERE no = ?", (row[0],))
        removed += 1
    return removed


_indexes: weakref.WeakKeyDictionary[aiosqlite.Connection, SessionIndex] = (
    weakref.WeakKeyDictionary()
)
_background: set[asyncio.Task[int]] = set()


def index_for(store: Store) -> SessionIndex:
    """The session index on STORE's connection (one per connection)."""
    db = store.db
    index = _indexes.get(db)
    if index is None:
        kind = PgSessionIndex if dialect(db) == "postgres" else SessionIndex
        index = _indexes[db] = kind(db)
    return index


async def index_closed_sessions(store: Store) -> int:
    """Index every ended session not indexed yet; return how many were indexed."""
    return await index_for(store).catch_up()


def schedule_indexing(store: Store) -> None:
    """Run :func:`index_closed_sessions` in the background (at session end, at broker start).

    Never raises; a failure is logged, and the next catch-up (before every search) retries.
    """

    async def run() -> int:
        try:
            return await index_closed_sessions(store)
        except Exception:
            log.exception("indexing ended sessions failed")
            return 0

    task = asyncio.get_running_loop().create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def stop_indexing() -> None:
    """Cancel the background indexing (a stopping broker, before its store closes): what it
    had not indexed yet is indexed by the next catch-up."""
    tasks = [task for task in _background if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=10)
