"""`hoopctl mcp`: a Model Context Protocol server on stdio, for AI agents.

It runs as the logged-in identity and holds no target credentials. Every tool calls the
broker exactly as `hoopctl exec` (or `hoopctl targets`, `sessions`) does, on one SSH
connection kept for the server's life: policy, masking, approvals, budgets, recording and
audit are the broker's. The server decides nothing; it turns what the broker answered into
one JSON envelope per call. stdout is the MCP channel: nothing else is written there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from mcp.server.mcpserver import Context, MCPServer

from hoopctl.address import BrokerAddress
from hoopctl.errors import HoopError

MAX_OUTPUT = 8 * 1024 * 1024  # bytes of a command's stdout (or a result's JSON) read at most
MAX_WAIT = 600  # seconds approval_wait waits at most per call
SUMMARY = re.compile(r"^hoop: summary (\{.*\})$")
PENDING = re.compile(r"^hoop: approval required.*?: request (\S+) waits for ")
WAITING = re.compile(r"^hoop: waiting for approval (\S+) ")
DENIED_BY = re.compile(r"^hoop: denied by ")
CLIENT_NAME = re.compile(r"[^A-Za-z0-9 ._@+:()-]")
CLIENT_VERSION = re.compile(r"[^A-Za-z0-9._+-]")
LEADING = re.compile(r"^[^A-Za-z0-9]+")

# `hoopctl exec` exit codes (docs/exit-codes.md).
EXIT_OK, EXIT_TARGET, EXIT_USAGE, EXIT_DENIED, EXIT_APPROVAL = 0, 1, 2, 3, 4


@dataclass
class Ran:
    """What one exec session gave: stdout, the broker's stderr lines, the exit status."""

    stdout: bytes
    stderr: list[str]
    exit_status: int
    cut: bool = False  # stdout was longer than MAX_OUTPUT


@dataclass
class Envelope:
    status: str  # completed | denied | pending_approval | error
    fields: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, **self.fields}


class BrokerLink:
    """One SSH connection to the broker as the logged-in user, opened when first needed and
    again after it drops."""

    def __init__(self, address: BrokerAddress) -> None:
        self.address = address
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()

    async def connection(self) -> asyncssh.SSHClientConnection:
        from hoopctl.credentials import CredentialStore
        from hoopctl.session import current_profile
        from hoopctl.transport import open_connection

        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            store = CredentialStore(self.address)
            profile = await current_profile(store)
            self._conn = await open_connection(
                self.address,
                username=profile.user,
                client_keys=[(store.private_key(), profile.cert())],
            )
            return self._conn

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        from hoopctl.transport import ApiClient

        api = ApiClient(await self.connection())
        try:
            return await api.call(method, params)
        finally:
            api.close_channel()

    async def wait_decided(self, request_id: str, seconds: float) -> dict[str, Any] | None:
        """The request once it is no longer pending (or None when SECONDS pass first)."""
        from hoopctl.transport import ApiClient

        api = ApiClient(await self.connection())
        last: dict[str, Any] | None = None

        async def follow() -> None:
            nonlocal last
            async for event in api.stream("approvals.wait", {"id": request_id}):
                last = event.get("request")
                if isinstance(last, dict) and last.get("state") != "pending":
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follow(), seconds)
            return last
        return None

    async def exec(self, words: list[str], data: bytes) -> Ran:
        conn = await self.connection()
        process = await conn.create_process(shlex.join(words), encoding=None)
        try:
            # The broker may answer (a refusal) and close before it reads anything.
            with contextlib.suppress(BrokenPipeError, ConnectionError, asyncssh.Error):
                process.stdin.write(data)
                process.stdin.write_eof()
            out, err = await asyncio.gather(_read_capped(process.stdout), _read_all(process.stderr))
            await process.wait_closed()
        finally:
            process.close()
        status = process.exit_status if process.exit_status is not None else EXIT_TARGET
        lines = err.decode("utf-8", "replace").splitlines()
        return Ran(out[0], lines, status, cut=out[1])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


async def _read_capped(stream: Any) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    cut = False
    while data := await stream.read(65536):
        if size < MAX_OUTPUT:
            chunks.append(data[: MAX_OUTPUT - size])
        cut = cut or size + len(data) > MAX_OUTPUT
        size += len(data)
    return b"".join(chunks), cut


async def _read_all(stream: Any) -> bytes:
    chunks: list[bytes] = []
    while data := await stream.read(65536):
        chunks.append(data)
    return b"".join(chunks)[:MAX_OUTPUT]


# -- what the broker answered, as one envelope ------------------------------------------------


def _said(lines: list[str]) -> list[str]:
    """The broker's lines for people (the summary is for us)."""
    return [line for line in lines if not SUMMARY.match(line)]


def _message(lines: list[str]) -> str:
    said = [line.removeprefix("hoop: ") for line in _said(lines)]
    return said[-1] if said else ""


def _summary(lines: list[str]) -> dict[str, Any]:
    for line in reversed(lines):
        match = SUMMARY.match(line)
        if match:
            with contextlib.suppress(ValueError):
                found = json.loads(match.group(1))
                if isinstance(found, dict):
                    return found
    return {}


def _request_id(lines: list[str]) -> str | None:
    for line in reversed(lines):
        for pattern in (PENDING, WAITING):
            match = pattern.match(line)
            if match:
                return match.group(1)
    return None


def _rows_of(document: Any) -> tuple[list[str], list[list[Any]], bool]:
    """columns, rows and whether a budget cut them, from one result of `exec -o json`."""
    rows = document if isinstance(document, list) else []
    truncated = False
    if rows and isinstance(rows[-1], dict) and "hoop_truncated" in rows[-1]:
        rows, truncated = rows[:-1], True
    columns: list[str] = list(rows[0].keys()) if rows and isinstance(rows[0], dict) else []
    return (
        columns,
        [[row.get(c) for c in columns] for row in rows if isinstance(row, dict)],
        truncated,
    )


def sql_envelope(ran: Ran) -> Envelope:
    summary = _summary(ran.stderr)
    common: dict[str, Any] = {"session_id": summary.get("session")}
    statements = summary.get("statements") or []
    masked: dict[str, int] = {}
    for statement in statements:
        for column, count in (statement.get("masked") or {}).items():
            masked[column] = masked.get(column, 0) + int(count)
    common["masked"] = masked
    if ran.exit_status == EXIT_OK:
        try:
            document = json.loads(ran.stdout or b"[]")
        except ValueError:
            return Envelope("error", {**common, "message": "the result was cut short (too long)"})
        if (
            isinstance(document, list)
            and document
            and isinstance(document[0], dict)
            and ("statement" in document[0])
        ):  # several statements: one object each
            results = []
            for item in document:
                columns, rows, cut = _rows_of(item.get("rows"))
                results.append({
                    "statement": item.get("statement"),
                    "columns": item.get("columns") or columns,
                    "rows": rows,
                    "truncated": cut,
                    **({"status": item["status"]} if "status" in item else {}),
                    **({"error": item["error"]} if "error" in item else {}),
                })  # fmt: skip
            return Envelope("completed", {
                **common, "results": results,
                "truncated": any(r["truncated"] for r in results) or ran.cut,
            })  # fmt: skip
        columns, rows, cut = _rows_of(document)
        return Envelope(
            "completed",
            {**common, "columns": columns, "rows": rows, "truncated": cut or ran.cut},
        )
    return _refusal(ran, common)


def command_envelope(ran: Ran) -> Envelope:
    summary = _summary(ran.stderr)
    common: dict[str, Any] = {"session_id": summary.get("session")}
    if ran.exit_status in (EXIT_DENIED, EXIT_APPROVAL, EXIT_USAGE) and _is_refusal(ran):
        return _refusal(ran, common)
    return Envelope(
        "completed",
        {
            **common,
            "stdout": ran.stdout.decode("utf-8", "replace"),
            "stderr": "\n".join(_said(ran.stderr)),
            "exit_status": ran.exit_status,
            "truncated": ran.cut,
        },
    )


def _is_refusal(ran: Ran) -> bool:
    """Whether a non-zero exit is the broker's refusal (its lines), not the command's own."""
    return any(line.startswith("hoop: ") for line in _said(ran.stderr))


def _refusal(ran: Ran, common: dict[str, Any]) -> Envelope:
    request_id = _request_id(ran.stderr)
    message = _message(ran.stderr)
    if ran.exit_status == EXIT_DENIED:
        return Envelope("denied", {**common, "request_id": request_id, "reason": message})
    if (
        ran.exit_status == EXIT_APPROVAL
        and request_id
        and any(PENDING.match(line) for line in ran.stderr)
    ):
        return Envelope(
            "pending_approval",
            {
                **common,
                "request_id": request_id,
                "reason": message,
                "next": "call approval_wait with this request_id",
            },
        )
    return Envelope("error", {**common, "request_id": request_id, "message": message})


# -- the tools --------------------------------------------------------------------------------


def client_words(client: tuple[str, str] | None) -> list[str]:
    if client is None:
        return []
    # What the broker takes (NAME/VERSION, each starting with a letter or digit); the rest of
    # what an MCP client calls itself is dropped, never refused: its calls must still run.
    name = LEADING.sub("", CLIENT_NAME.sub("", client[0]))[:64].rstrip() or "unknown"
    version = LEADING.sub("", CLIENT_VERSION.sub("", client[1]))[:32] or "0"
    return ["--client", f"{name}/{version}"]


class Tools:
    """The tools, as plain coroutines (the MCP layer in hoopctl.commands.mcp wraps them)."""

    def __init__(self, link: BrokerLink) -> None:
        self.link = link
        self.client: tuple[str, str] | None = None  # the MCP client's name and version

    async def _guard(self, work: Any) -> dict[str, Any]:
        try:
            return await work
        except HoopError as exc:
            return Envelope("error", {"message": str(exc)}).as_dict()
        except (OSError, asyncssh.Error) as exc:
            return Envelope("error", {"message": f"the broker cannot be reached: {exc}"}).as_dict()

    async def _target_type(self, target: str) -> str | None:
        targets = await self.link.call("targets.list")
        for item in targets or []:
            if item.get("name") == target:
                return str(item.get("type"))
        return None

    async def targets_list(self) -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            return {"status": "completed", "targets": await self.link.call("targets.list")}

        return await self._guard(work())

    async def exec(
        self,
        target: str,
        sql: str | None = None,
        argv: list[str] | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            if (sql is None) == (argv is None):
                return Envelope("error", {"message": "give either sql or argv"}).as_dict()
            words = ["exec", "--no-wait", "--summary", *client_words(self.client)]
            if reason:
                words += ["--reason", reason]
            if sql is not None:
                words += ["--output", "json", target]
                return sql_envelope(await self.link.exec(words, sql.encode())).as_dict()
            words += [target, "--", *(argv or [])]
            return command_envelope(await self.link.exec(words, b"")).as_dict()

        return await self._guard(work())

    async def approval_wait(
        self,
        request_id: str,
        timeout: float = 60,  # noqa: ASYNC109 (the tool's input: seconds to wait)
    ) -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            wait = max(0.0, min(float(timeout), MAX_WAIT))
            request = await self.link.call("approvals.get", {"id": request_id})
            if request.get("state") == "pending":
                decided = await self.link.wait_decided(request_id, wait)
                if decided is None:
                    return Envelope("pending_approval", {
                        "request_id": request_id,
                        "reason": "still waiting for an approver",
                    }).as_dict()  # fmt: skip
                request = decided
            state = request.get("state")
            if state == "denied":
                return Envelope("denied", {"request_id": request_id, "reason": "denied by an "
                                           "approver"}).as_dict()  # fmt: skip
            if state != "approved":
                return Envelope("error", {"request_id": request_id, "message": f"the request "
                                          f"is {state}"}).as_dict()  # fmt: skip
            target = str(request.get("target"))
            words = ["exec", "--summary", *client_words(self.client), "--request", request_id]
            if await self._target_type(target) in ("ssh", "local"):
                words.append(target)
                return command_envelope(await self.link.exec(words, b"")).as_dict()
            words += ["--output", "json", target]
            found = sql_envelope(await self.link.exec(words, b""))
            found.fields["request_id"] = request_id
            return found.as_dict()

        return await self._guard(work())

    async def schema(self, target: str) -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            found = await self.link.call("targets.schema", {"target": target})
            return {"status": "completed", **found}

        return await self._guard(work())

    async def sessions_list(self, limit: int = 50) -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            me = (await self.link.call("whoami")).get("user")
            params = {"limit": max(1, min(limit, 500)), "user": me}
            rows = await self.link.call("sessions.list", params)
            return {"status": "completed", "sessions": rows}

        return await self._guard(work())

    async def session_show(self, session_id: str) -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            found = await self.link.call("sessions.show", {"id": session_id})
            return {"status": "completed", "session": found}

        return await self._guard(work())


# -- the MCP layer ----------------------------------------------------------------------------


def build_server(tools: Tools) -> MCPServer[Any]:
    """The MCP server: each tool of TOOLS, described for the model, and the MCP client's name
    and version passed on to the broker (`exec --client`) for the audit trail."""
    from hoopctl import __version__

    server = MCPServer(
        name="hoop",
        version=__version__,
        instructions=(
            "Reach databases and hosts through the hoop gateway. Every call is judged by the "
            "gateway's policy, masked, recorded and audited. A call may come back "
            "`pending_approval` with a request_id: a person must approve it; then call "
            "approval_wait with that id."
        ),
    )

    def remember_client(ctx: Context[Any, Any]) -> None:
        params = ctx.session.client_params
        info = getattr(params, "client_info", None)
        if info is not None:
            tools.client = (str(info.name), str(info.version))

    @server.tool(
        description="The targets (databases and hosts) you may use: name, type, description."
    )
    async def targets_list(ctx: Context[Any, Any]) -> dict[str, Any]:
        remember_client(ctx)
        return await tools.targets_list()

    @server.tool(
        description=(
            "Run SQL on a database target, or a command (argv) on an ssh/local target, once. "
            "Returns status completed|denied|pending_approval|error with columns/rows (SQL) or "
            "stdout/stderr/exit_status (commands), session_id, masked counts, truncated, and "
            "request_id when a person must approve it first."
        )
    )
    async def exec(
        target: str,
        ctx: Context[Any, Any],
        sql: str | None = None,
        argv: list[str] | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        remember_client(ctx)
        return await tools.exec(target, sql=sql, argv=argv, reason=reason)

    @server.tool(
        description=(
            "Wait (up to timeout seconds, at most 600) for a person to decide a request that "
            "exec returned as pending_approval; once approved it runs exactly once and the "
            "result comes back as exec's does. Still undecided: pending_approval again."
        )
    )
    async def approval_wait(
        request_id: str,
        ctx: Context[Any, Any],
        timeout: float = 60,  # noqa: ASYNC109 (the tool's input: seconds to wait)
    ) -> dict[str, Any]:
        remember_client(ctx)
        return await tools.approval_wait(request_id, timeout)

    @server.tool(
        description="Tables and columns of a database target; columns the gateway masks are "
        "marked masked: true."
    )
    async def schema(target: str, ctx: Context[Any, Any]) -> dict[str, Any]:
        remember_client(ctx)
        return await tools.schema(target)

    @server.tool(description="Your recent sessions through the gateway (newest first).")
    async def sessions_list(ctx: Context[Any, Any], limit: int = 50) -> dict[str, Any]:
        remember_client(ctx)
        return await tools.sessions_list(limit)

    @server.tool(description="One of your sessions: its timeline of commands and decisions.")
    async def session_show(session_id: str, ctx: Context[Any, Any]) -> dict[str, Any]:
        remember_client(ctx)
        return await tools.session_show(session_id)

    return server
