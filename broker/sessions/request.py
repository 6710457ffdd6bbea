"""Parsing what the client asked the broker to run (docs/approvals-contract.md):

exec [--reason TEXT] [--output table|json|csv] [--wait SECONDS | --no-wait] [--request ID]
     [--client NAME/VERSION] [--summary] NAME [-- CMD ...]
connect [--reason TEXT] [--client NAME/VERSION] NAME [-- CMD ...]
proxy [--reason TEXT] [--password-sha256 HEX] [--client NAME/VERSION] NAME

--client names the program that asked (an MCP client, say): it goes into the session's audit
events as `client`, and decides nothing.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from broker.durations import parse_duration


class RequestError(ValueError):
    """The session command is malformed; the message is for the user."""


# How long `exec` waits for an approval unless told otherwise (--wait / --no-wait).
DEFAULT_EXEC_WAIT = 300


@dataclass(frozen=True)
class SessionCommand:
    verb: str
    target: str
    reason: str | None = None
    argv: tuple[str, ...] = ()
    output: str = "table"
    # exec: seconds to wait for an approval (0: --no-wait).
    wait: int = DEFAULT_EXEC_WAIT
    # exec: run this approved request (exactly once).
    request_id: str | None = None
    # proxy: the SHA-256 (hex) of the one-time password the local client must give.
    password_sha256: str | None = None
    # What the client says it is (--client NAME/VERSION): for the audit trail only.
    client: tuple[str, str] | None = None
    # exec --summary: a last stderr line `hoop: summary {json}` (session id, exit status and,
    # for SQL, each statement's rows, masked counts and truncation), for programs.
    summary: bool = False

    @property
    def client_info(self) -> dict[str, str] | None:
        if self.client is None:
            return None
        return {"name": self.client[0], "version": self.client[1]}


VERBS = ("connect", "exec", "proxy")
USAGE = {
    "connect": "connect [--reason TEXT] TARGET [-- COMMAND …]",
    "exec": "exec [--reason TEXT] [--output table|json|csv] [--wait SECONDS | --no-wait] "
    "[--request ID] TARGET [-- COMMAND …]",
    "proxy": "proxy [--reason TEXT] [--password-sha256 HEX] TARGET",
}
_EXEC_ONLY = ("--wait", "--no-wait", "--request", "--output", "-o", "--summary")
_CLIENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9 ._@+:()-]{0,63})/([A-Za-z0-9][A-Za-z0-9._+-]{0,31})")


def _value(word: str, rest: list[str]) -> str:
    """The value of `--flag VALUE` or `--flag=VALUE`."""
    if "=" in word and word.startswith("--"):
        return word.split("=", 1)[1]
    if not rest:
        raise RequestError(f"{word} needs a value")
    return rest.pop(0)


def _seconds(text: str) -> int:
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise RequestError(f"--wait takes seconds (or 90s, 5m), not {text!r}") from None
    return seconds


def parse_session_command(command: str) -> SessionCommand:
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise RequestError(f"cannot parse the command: {exc}") from None
    if not words or words[0] not in VERBS:
        raise RequestError(f"expected: {USAGE['connect']}")
    verb, rest = words[0], words[1:]
    reason: str | None = None
    output = "table"
    output_given = False
    wait: int | None = None
    no_wait = False
    request_id: str | None = None
    password_sha256: str | None = None
    client: tuple[str, str] | None = None
    summary = False
    target: str | None = None
    while rest:
        word = rest.pop(0)
        if word == "--":
            break
        flag = word.split("=", 1)[0] if word.startswith("--") else word
        if verb != "exec" and flag in _EXEC_ONLY:
            raise RequestError(f"{flag} applies to exec only")
        if flag == "--reason":
            reason = _value(word, rest)
        elif flag in ("--output", "-o"):
            output = _value(word, rest)
            output_given = True
            if output not in ("table", "json", "csv"):
                raise RequestError("--output must be table, json or csv")
        elif flag == "--wait":
            wait = _seconds(_value(word, rest))
        elif word == "--no-wait":
            no_wait = True
        elif word == "--summary":
            summary = True
        elif flag == "--request":
            request_id = _value(word, rest).strip()
            if not request_id:
                raise RequestError("--request needs a request id")
        elif flag == "--password-sha256":
            if verb != "proxy":
                raise RequestError("--password-sha256 applies to proxy only")
            password_sha256 = _value(word, rest).strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", password_sha256):
                raise RequestError("--password-sha256 takes 64 hex digits")
        elif flag == "--client":
            match = _CLIENT.fullmatch(_value(word, rest).strip())
            if match is None:
                raise RequestError(
                    "--client takes NAME/VERSION (letters, digits and . _ @ + : ( ) - only)"
                )
            client = (match.group(1), match.group(2))
        elif word.startswith("-"):
            raise RequestError(f"unknown option {word}")
        elif target is None:
            target = word
        else:
            rest.insert(0, word)
            break
    if wait is not None and no_wait:
        raise RequestError("give either --wait or --no-wait, not both")
    if target is None:
        raise RequestError(f"{verb}: which target? ({USAGE[verb]})")
    if verb == "proxy" and rest:
        raise RequestError("proxy carries the database's own protocol: it takes no command")
    if output_given and rest:
        raise RequestError(
            "--output formats SQL results; a command's output is passed through as it is"
        )
    return SessionCommand(
        verb=verb,
        target=target,
        reason=reason,
        argv=tuple(rest),
        output=output,
        wait=0 if no_wait else DEFAULT_EXEC_WAIT if wait is None else wait,
        request_id=request_id,
        password_sha256=password_sha256,
        client=client,
        summary=summary,
    )
