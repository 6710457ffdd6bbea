"""Prompt marks (OSC 133) the broker sets up in bash, so it knows where a command line starts.

A = prompt starts, B = prompt ends / input starts, C = the command was accepted and runs.
The variables are made read-only so a session cannot switch the marks off by accident; a user
who starts another shell leaves prompt-level control (documented in docs/policy.md).
"""

from __future__ import annotations

MARK_PROMPT = b"\x1b]133;A\x07"
MARK_INPUT = b"\x1b]133;B\x07"
MARK_RUN = b"\x1b]133;C\x07"

_BASH_HOOKS = r"""
__hoop_wrap_ps1() {
  local ps1="${PS1//$'\001\033]133;A\007\002'/}"
  ps1="${ps1//$'\001\033]133;B\007\002'/}"
  PS1=$'\001\033]133;A\007\002'"$ps1"$'\001\033]133;B\007\002'
}
PS0=$'\033]133;C\007'
PROMPT_COMMAND="${PROMPT_COMMAND:+$PROMPT_COMMAND;}__hoop_wrap_ps1"
readonly PS0 PROMPT_COMMAND
"""


def bash_rcfile(*, startup: str) -> str:
    """An rcfile for `bash --rcfile`: the user's usual start-up files, then the hooks.

    STARTUP is "bashrc" (interactive shell), "login" (the profile files, as `bash -l` would
    read them) or "none" (--norc).
    """
    if startup == "login":
        source = (
            "[ -f /etc/profile ] && . /etc/profile\n"
            'for f in ~/.bash_profile ~/.bash_login ~/.profile; do [ -f "$f" ] && { . "$f"; break; }; done\n'
        )
    elif startup == "bashrc":
        source = "[ -f /etc/bash.bashrc ] && . /etc/bash.bashrc\n[ -f ~/.bashrc ] && . ~/.bashrc\n"
    else:
        source = ""
    return source + _BASH_HOOKS


def remote_bash_command(rc: str) -> str:
    """A POSIX sh command that runs bash with RC as its rcfile on a remote host, or falls back to
    the login shell when bash is missing. The rcfile lives in a private temp file it removes."""
    quoted = rc.replace("'", "'\"'\"'")
    return (
        "if command -v bash >/dev/null 2>&1; then "
        "f=$(mktemp) && printf %s '" + quoted + '\' > "$f" && '
        'printf \'rm -f "%s"\\n\' "$f" >> "$f" && exec bash --rcfile "$f" -i; '
        'fi; exec "${SHELL:-/bin/sh}" -l'
    )
