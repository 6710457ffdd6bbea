"""`hoopctl approve` without an ID: the live approval queue, a full-screen terminal application.

The queue follows `approvals.watch` (a snapshot, then a push for every new or changed request)
and shows the pending requests the user may decide, plus the user's own pending requests
(marked "yours": only someone else may decide them). Keys: up/down select, `a` approve, `d`
deny (each asks for an optional comment), Enter details, `q` quit. A new request rings the
terminal bell. Every requester-controlled string goes through hoopctl.escape: control
characters and escape sequences are shown as visible text, set apart in reverse video.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import (
    BufferControl,
    ConditionalContainer,
    FormattedTextControl,
    HSplit,
    Layout,
    ScrollOffsets,
    VSplit,
    Window,
)
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import get_cwidth

from broker.durations import format_duration
from hoopctl.address import BrokerAddress
from hoopctl.approval_requests import (
    ApprovalRequest,
    clock,
    describe_decision,
    local_time,
)
from hoopctl.errors import ApiCallError, HoopError
from hoopctl.escape import escape, escape_parts, has_hidden
from hoopctl.session import connect_api
from hoopctl.transport import ApiClient

# How often the user's own pending requests are re-read (they are not on the watch stream).
OWN_REFRESH = 5.0
# A request past its expiry that the broker has not reported yet leaves the queue after this.
EXPIRED_GRACE = 10.0
RECONNECT_MAX = 15.0

STYLE = Style.from_dict(
    {
        "title": "reverse bold",
        "selected": "reverse",
        "dim": "fg:ansibrightblack",
        "escape": "bg:ansiyellow fg:ansiblack",
        "warning": "fg:ansired bold",
        "yours": "fg:ansicyan",
        "label": "bold",
        "status": "reverse",
        "status.error": "reverse fg:ansired bold",
        "hints": "fg:ansibrightblack",
        "prompt": "bold",
    }
)

Fragments = StyleAndTextTuples


# ---------------------------------------------------------------------------
# State: what the queue shows; no terminal here, so it can be tested alone
# ---------------------------------------------------------------------------


@dataclass
class QueueState:
    me: str
    requests: dict[str, ApprovalRequest] = field(default_factory=dict)  # from the watch
    own: dict[str, ApprovalRequest] = field(default_factory=dict)  # own pending ones
    selected_id: str | None = None
    details: bool = False
    detail_top: int = 0
    prompt: tuple[str, str] | None = None  # (verb, request id) while asking for a comment
    status: str = ""
    status_error: bool = False
    connected: bool = False
    moved: bool = False  # the user chose a row; until then the first row is selected

    # -- events from the broker -------------------------------------------------------------

    def snapshot(self, records: list[Any]) -> None:
        self.requests = {}
        for record in records:
            if isinstance(record, dict):
                self._put(ApprovalRequest.from_record(record))
        self._keep_selection()

    def apply(self, event: dict[str, Any]) -> ApprovalRequest | None:
        """Apply one watch event; return the request when it is new and the user may decide it."""
        kind = event.get("type")
        if kind == "snapshot":
            self.snapshot(list(event.get("requests") or []))
            return None
        record = event.get("request")
        if kind not in ("requested", "updated") or not isinstance(record, dict):
            return None
        request = ApprovalRequest.from_record(record)
        known = request.id in self.requests or request.id in self.own
        self.update(request)
        if kind == "requested" and not known and request.pending and request.requester != self.me:
            return request
        return None

    def update(self, request: ApprovalRequest) -> None:
        """A request changed (from the watch, a decision or a refresh)."""
        if not request.pending:
            was_shown = request.id in self.requests or request.id in self.own
            self.requests.pop(request.id, None)
            self.own.pop(request.id, None)
            if was_shown and request.decision_by(self.me) is None:
                by = request.outcome(str)
                self.info(f"{request.id} is {request.state}" + (f" ({by})" if by else ""))
        else:
            self._put(request)
        self._keep_selection()

    def set_own(self, records: list[Any]) -> None:
        own = [ApprovalRequest.from_record(r) for r in records if isinstance(r, dict)]
        self.own = {r.id: r for r in own if r.pending and r.requester == self.me}
        self._keep_selection()

    def _put(self, request: ApprovalRequest) -> None:
        if request.requester == self.me:
            self.own[request.id] = request
            self.requests.pop(request.id, None)
        else:
            self.requests[request.id] = request

    # -- what is shown ---------------------------------------------------------------------

    def rows(self, now: float | None = None) -> list[ApprovalRequest]:
        """Pending requests, the one expiring first on top; own requests after the others."""
        now = time.time() if now is None else now
        shown = []
        for request in [*self.requests.values(), *self.own.values()]:
            left = request.left(now)
            if request.pending and (left is None or left > -EXPIRED_GRACE):
                shown.append(request)
        return sorted(
            shown,
            key=lambda r: (
                r.requester == self.me,
                r.expires_at if r.expires_at is not None else float("inf"),
                r.created_at or 0,
                r.id,
            ),
        )

    def selected(self, now: float | None = None) -> ApprovalRequest | None:
        rows = self.rows(now)
        for request in rows:
            if request.id == self.selected_id:
                return request
        return rows[0] if rows else None

    def _keep_selection(self) -> None:
        if not self.moved:
            self.selected_id = None
        chosen = self.selected()
        self.selected_id = chosen.id if chosen else None

    def move(self, step: int) -> None:
        rows = self.rows()
        if not rows:
            self.selected_id = None
            return
        ids = [request.id for request in rows]
        index = ids.index(self.selected_id) if self.selected_id in ids else 0
        self.selected_id = ids[max(0, min(len(ids) - 1, index + step))]
        self.moved = True
        self.detail_top = 0

    def info(self, text: str) -> None:
        self.status, self.status_error = text, False

    def error(self, text: str) -> None:
        self.status, self.status_error = text, True


# ---------------------------------------------------------------------------
# Rendering (pure: state and time in, formatted text out)
# ---------------------------------------------------------------------------


def escaped(text: str, style: str = "") -> Fragments:
    """TEXT escaped, with the escapes set apart."""
    return [
        (f"{style} class:escape" if is_escape else style, piece)
        for piece, is_escape in escape_parts(text, set_apart=True)
    ]


def fit(fragments: Fragments, width: int) -> Fragments:
    """FRAGMENTS cut to WIDTH columns; what is cut is said, never silently dropped."""
    total = sum(get_cwidth(text) for _, text, *_ in fragments)
    if total <= width:
        return fragments
    marker_room = len(f" … (+{total} more, Enter shows all)")
    room = max(width - marker_room, 8)
    kept: Fragments = []
    used = 0
    for style, text, *_ in fragments:
        if used >= room:
            break
        piece = ""
        for char in text:
            w = get_cwidth(char)
            if used + w > room:
                break
            piece += char
            used += w
        if piece:
            kept.append((style, piece))
        if len(piece) < len(text):
            break
    kept.append(("class:warning", f" … (+{total - used} more, Enter shows all)"))
    return kept


def _left_text(request: ApprovalRequest, now: float) -> str:
    left = request.left(now)
    if left is None:
        return ""
    return f"{clock(left)} left" if left > 0 else "expired"


def row_fragments(
    request: ApprovalRequest, me: str, now: float, width: int, selected: bool
) -> Fragments:
    """One request as three lines: who, where and how long; what; rule, approvers and reason."""
    marker = "▶ " if selected else "  "
    style = "class:selected" if selected else ""
    age = request.age(now)
    head: Fragments = [
        (style, marker),
        *escaped(request.id, style),
        (style, "  "),
        *escaped(request.requester_label, style),
        (style, " → "),
        *escaped(request.target, style),
        (style, f"  {_left_text(request, now)}"),
    ]
    if age is not None:
        head.append((style, f" (age {format_duration(age)})"))
    if request.approvals_needed > 1:
        head.append((style, f"  {request.approvals}/{request.approvals_needed} approvals"))
    if request.requester == me:
        head.append(("class:yours", "  [yours: someone else must decide]"))
    else:
        mine = request.decision_by(me)
        if mine is not None:
            head.append(("class:yours", f"  [you {mine.decision}d]"))
    if has_hidden(request.what()):
        head.append(("class:warning", "  ! control characters, shown escaped"))
    what_prefix = "    $ " if request.kind == "command" else "    "
    what: Fragments = [("", what_prefix), *escaped(request.what())]
    label, because = request.why()
    why: Fragments = [
        ("class:dim", f"    {label}: "),
        *escaped(because, "class:dim"),
        ("class:dim", " · approvers: "),
        *escaped(", ".join(request.approver_groups) or "-", "class:dim"),
        ("class:dim", " · reason: "),
        *escaped(request.reason or "-", "class:dim"),
    ]
    lines: Fragments = []
    for line in (head, what, why):
        lines += fit(line, width)
        lines.append(("", "\n"))
    return lines


def list_fragments(state: QueueState, now: float, width: int) -> Fragments:
    rows = state.rows(now)
    if not rows:
        waiting = "waiting for requests…" if state.connected else "connecting…"
        return [("class:dim", f"\n  No pending requests you may decide; {waiting}\n")]
    selected = state.selected(now)
    fragments: Fragments = []
    for request in rows:
        is_selected = selected is not None and request.id == selected.id
        if is_selected:
            fragments.append(("[SetCursorPosition]", ""))
        fragments += row_fragments(request, state.me, now, width, is_selected)
    return fragments


def detail_lines(request: ApprovalRequest, me: str, now: float) -> list[Fragments]:
    """Everything about one request, one list of fragments per line (wrapped by the window)."""

    def field_(label: str, value: Fragments) -> Fragments:
        return [("class:label", f"{label:<11}"), *value]

    def plain(text: str) -> Fragments:
        return [("", text)]

    age = request.age(now)
    left = request.left(now)
    created = local_time(request.created_at)
    if age is not None:
        created += f" ({format_duration(age)} ago)"
    expires = local_time(request.expires_at)
    if left is not None:
        expires += f" ({clock(left)} left)" if left > 0 else " (expired)"
    lines = [
        field_("Request", escaped(request.id)),
        field_("Kind", plain(request.kind)),
        field_(
            "State",
            plain(f"{request.state} ({request.approvals} of {request.approvals_needed} approvals)"),
        ),
        field_(
            "Requester",
            [
                *escaped(request.requester_label),
                ("", " (groups: "),
                *escaped(", ".join(request.requester_groups) or "-"),
                ("", ")"),
            ],
        ),
        field_("Target", escaped(request.target)),
        field_("Session", escaped(request.session or "-")),
        field_("Approvers", escaped(", ".join(request.approver_groups) or "-")),
        field_("Rule", escaped(request.rule or "-")),
        *([field_("Cause", escaped(request.cause))] if request.cause else []),
        field_("Reason", escaped(request.reason or "-")),
        field_("Created", plain(created)),
        field_("Expires", plain(expires)),
    ]
    if request.kind == "access" and request.duration:
        lines.append(field_("Access for", plain(format_duration(request.duration))))
    if request.command_sha256:
        lines.append(field_("SHA-256", escaped(request.command_sha256)))
    for decision in request.decisions:
        text = [*escaped(decision.approver), ("", f" {decision.decision}d")]
        if decision.comment:
            text += [("", ": "), *escaped(decision.comment)]
        if decision.at:
            text.append(("class:dim", f"  ({local_time(decision.at)})"))
        lines.append(field_("Decision", text))
    if request.requester == me:
        lines.append([("class:yours", "This is your own request: someone else must decide it.")])
    lines.append([])
    if request.kind == "command":
        if has_hidden(request.what()):
            lines.append(
                [
                    (
                        "class:warning",
                        "! The command holds control characters or invisible characters; "
                        "they are shown escaped (\\x1b, \\r, \\n, \\u202e …), as they are.",
                    )
                ]
            )
        lines.append([("class:label", "Command (exactly as it will run):")])
        lines.append([("", "  "), *escaped(request.what())])
    else:
        lines.append([("class:label", "Access asked for:")])
        lines.append([("", "  "), *escaped(request.what())])
    lines.append([])
    if request.screen:
        lines.append([("class:label", f"Requester's screen (last {len(request.screen)} lines):")])
        for screen_line in request.screen:
            lines.append([("class:dim", "  │ "), *escaped(screen_line)])
    else:
        lines.append([("class:dim", "No screen lines (not from a terminal session).")])
    return lines


def details_fragments(state: QueueState, now: float) -> Fragments:
    request = state.selected(now)
    if request is None:
        return [("class:dim", "\n  The request is no longer pending. Enter or Esc goes back.\n")]
    lines = detail_lines(request, state.me, now)
    state.detail_top = max(0, min(state.detail_top, len(lines) - 1))
    fragments: Fragments = []
    for line in lines[state.detail_top :]:
        fragments += line
        fragments.append(("", "\n"))
    return fragments


def title_fragments(state: QueueState, user: str, address: str, now: float) -> Fragments:
    count = len([r for r in state.rows(now) if r.requester != state.me])
    text = f" hoopctl approve · {user} @ {address} · {count} pending"
    if state.details:
        text += " · details"
    return [("class:title", text)]


def status_fragments(state: QueueState, width: int) -> Fragments:
    link = "● live" if state.connected else "○ reconnecting"
    message = escape(state.status)
    room = max(width - len(link) - 3, 10)
    if len(message) > room:
        message = message[: room - 1] + "…"
    style = "class:status.error" if state.status_error else "class:status"
    return [(style, f" {message:<{room}} "), ("class:status", f"{link} ")]


HINTS = " ↑/↓ select   a approve   d deny   Enter details   q quit"
DETAIL_HINTS = " ↑/↓ scroll   a approve   d deny   Enter/Esc back   q quit"


# ---------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------


class ApprovalQueue:
    """The running queue: the terminal application, its broker link and its background tasks."""

    def __init__(self, address: BrokerAddress, api: ApiClient, user: str) -> None:
        self.address = address
        self.api: ApiClient | None = api
        self.user = user
        self.state = QueueState(me=user)
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self.comment = Buffer(multiline=False)
        self.app: Application[int] = self._build()

    # -- layout and keys ---------------------------------------------------------------------

    def _width(self) -> int:
        try:
            return self.app.output.get_size().columns
        except Exception:
            return 80

    def _build(self) -> Application[int]:
        state = self.state
        prompting = Condition(lambda: state.prompt is not None)
        in_details = Condition(lambda: state.details)

        title = Window(
            FormattedTextControl(
                lambda: title_fragments(state, self.user, str(self.address), time.time())
            ),
            height=1,
            style="class:title",
        )
        queue = Window(
            FormattedTextControl(
                lambda: list_fragments(state, time.time(), self._width()),
                focusable=True,
                show_cursor=False,
            ),
            wrap_lines=False,
            scroll_offsets=ScrollOffsets(top=0, bottom=3),
        )
        details = Window(
            FormattedTextControl(lambda: details_fragments(state, time.time()), show_cursor=False),
            wrap_lines=True,
        )

        def prompt_label() -> Fragments:
            if state.prompt is None:
                return []
            verb, request_id = state.prompt
            return [
                (
                    "class:prompt",
                    f"{verb.capitalize()} {escape(request_id)}? Comment (Enter to {verb}, "
                    "Esc to cancel): ",
                )
            ]

        prompt_line = ConditionalContainer(
            VSplit(
                [
                    Window(FormattedTextControl(prompt_label), dont_extend_width=True, height=1),
                    Window(BufferControl(self.comment), height=1),
                ]
            ),
            filter=prompting,
        )
        status = Window(
            FormattedTextControl(lambda: status_fragments(state, self._width())), height=1
        )
        hints = Window(
            FormattedTextControl(
                lambda: [("class:hints", DETAIL_HINTS if state.details else HINTS)]
            ),
            height=1,
        )
        body = HSplit(
            [
                title,
                ConditionalContainer(queue, filter=~in_details),
                ConditionalContainer(details, filter=in_details),
                prompt_line,
                status,
                hints,
            ]
        )
        self._queue_window = queue
        keys = self._keys(prompting, in_details)
        return Application(
            layout=Layout(body, focused_element=queue),
            key_bindings=keys,
            style=STYLE,
            full_screen=True,
            refresh_interval=1.0,
            mouse_support=False,
        )

    def _keys(self, prompting: Condition, in_details: Condition) -> KeyBindings:
        state = self.state
        keys = KeyBindings()
        browsing = ~prompting

        @keys.add("q", filter=browsing)
        def _quit(event: KeyPressEvent) -> None:
            event.app.exit(result=0)

        @keys.add("c-c", filter=browsing)
        def _interrupt(event: KeyPressEvent) -> None:
            event.app.exit(result=130)

        @keys.add("up", filter=browsing & ~in_details)
        @keys.add("k", filter=browsing & ~in_details)
        def _up(event: KeyPressEvent) -> None:
            state.move(-1)

        @keys.add("down", filter=browsing & ~in_details)
        @keys.add("j", filter=browsing & ~in_details)
        def _down(event: KeyPressEvent) -> None:
            state.move(1)

        @keys.add("up", filter=browsing & in_details)
        @keys.add("k", filter=browsing & in_details)
        def _scroll_up(event: KeyPressEvent) -> None:
            state.detail_top = max(0, state.detail_top - 1)

        @keys.add("down", filter=browsing & in_details)
        @keys.add("j", filter=browsing & in_details)
        def _scroll_down(event: KeyPressEvent) -> None:
            state.detail_top += 1

        @keys.add("enter", filter=browsing)
        def _toggle_details(event: KeyPressEvent) -> None:
            if not state.details and state.selected() is None:
                state.info("nothing to show: no request selected")
                return
            state.details = not state.details
            state.detail_top = 0

        @keys.add("escape", filter=browsing & in_details, eager=True)
        def _close_details(event: KeyPressEvent) -> None:
            state.details = False

        def ask(verb: str) -> None:
            request = state.selected()
            if request is None:
                state.error(f"nothing to {verb}: no request selected")
                return
            state.prompt = (verb, request.id)
            self.comment.reset()
            self.app.layout.focus(self.comment)

        @keys.add("a", filter=browsing)
        def _approve(event: KeyPressEvent) -> None:
            ask("approve")

        @keys.add("d", filter=browsing)
        def _deny(event: KeyPressEvent) -> None:
            ask("deny")

        def end_prompt() -> tuple[str, str] | None:
            asked = state.prompt
            state.prompt = None
            self.app.layout.focus(self._queue_window)
            return asked

        @keys.add("enter", filter=prompting)
        def _submit(event: KeyPressEvent) -> None:
            comment = self.comment.text
            asked = end_prompt()
            if asked is not None:
                verb, request_id = asked
                self._spawn(self.decide(verb, request_id, comment))

        @keys.add("escape", filter=prompting, eager=True)
        @keys.add("c-c", filter=prompting)
        def _cancel(event: KeyPressEvent) -> None:
            end_prompt()
            state.info("cancelled: nothing decided")

        return keys

    # -- broker work -------------------------------------------------------------------------

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.append(task)
        task.add_done_callback(
            lambda done: self._tasks.remove(done) if done in self._tasks else None
        )

    async def _call(self, method: str, params: dict[str, Any]) -> Any:
        async with self._lock:
            if self.api is None:
                raise HoopError("not connected to the broker")
            return await self.api.call(method, params)

    async def decide(self, verb: str, request_id: str, comment: str) -> None:
        state = self.state
        state.info(f"{'approving' if verb == 'approve' else 'denying'} {request_id}…")
        self.app.invalidate()
        params: dict[str, Any] = {"id": request_id, "decision": verb}
        if comment:
            params["comment"] = comment
        try:
            record = await self._call("approvals.decide", params)
        except HoopError as exc:
            state.error(f"cannot {verb} {request_id}: {exc}")
        except Exception as exc:  # a bug must not leave "approving…" up forever
            state.error(f"cannot {verb} {request_id}: {type(exc).__name__}: {exc}")
        else:
            if isinstance(record, dict):
                decided = ApprovalRequest.from_record(record)
                state.update(decided)
                state.info(describe_decision(verb, decided, str))
        self.app.invalidate()

    async def refresh_own(self) -> None:
        try:
            records = await self._call("approvals.list", {"scope": "mine", "state": "pending"})
        except HoopError:
            return
        if isinstance(records, list):
            self.state.set_own(records)
            self.app.invalidate()

    async def _own_loop(self) -> None:
        while True:
            await asyncio.sleep(OWN_REFRESH)
            if self.state.connected:
                await self.refresh_own()

    async def _watch_loop(self) -> None:
        delay = 1.0
        state = self.state
        while True:
            try:
                if self.api is None:
                    api, _ = await connect_api(self.address)
                    async with self._lock:
                        self.api = api
                await self.refresh_own()
                assert self.api is not None
                async for event in self.api.stream("approvals.watch"):
                    if not state.connected:
                        state.connected = True
                        if state.status.startswith("lost the broker"):
                            state.info("reconnected")
                    delay = 1.0
                    arrived = state.apply(event)
                    if arrived is not None:
                        self.app.output.bell()
                        state.info(
                            f"new request {arrived.id} from {arrived.requester} on {arrived.target}"
                        )
                    self.app.invalidate()
                problem = "the broker ended the watch"
            except ApiCallError as exc:
                problem = f"{exc} ({exc.code})"
            except HoopError as exc:
                problem = str(exc)
            except Exception as exc:  # a malformed event, an SSH error: start over
                problem = f"{type(exc).__name__}: {exc}"
            state.connected = False
            state.error(f"lost the broker: {problem}; reconnecting in {int(delay)}s")
            self.app.invalidate()
            async with self._lock:
                old, self.api = self.api, None
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def run(self) -> int:
        self._spawn(self._watch_loop())
        self._spawn(self._own_loop())
        try:
            result = await self.app.run_async()
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(BaseException):
                    await task
            if self.api is not None:
                with contextlib.suppress(Exception):
                    await self.api.close()
        return int(result or 0)


async def run_queue(address: BrokerAddress) -> int:
    """Open the queue for the logged-in user at ADDRESS; return the exit status."""
    api, profile = await connect_api(address)
    return await ApprovalQueue(address, api, profile.user).run()
