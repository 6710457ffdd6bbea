"""Prompt marks (OSC 133) the broker sets up in bash, zsh and sh, so it knows where a command
line starts: A = prompt starts, B = prompt ends and input starts, C = a command runs.

Two more guarantees come with the hooks:
- the variables holding them are read-only where the shell allows it, so a session cannot
  switch the marks off by accident (a user who starts another shell leaves prompt-level
  control: docs/policy.md says so);
- bash and zsh discard input typed ahead while a command ran, before showing the next prompt.
  Such input reached the shell without passing a prompt, so the broker never judged it.
"""

from __future__ import annotations

from pathlib import Path

_NOTICE = r"\r\n[hoop] input typed while a command ran was discarded; type it at the prompt\r\n"

_BASH_HOOKS = (
    r"""
__hoop_prompt() {
  local __hoop_junk
  if read -r -s -t 0 2>/dev/null; then
    while IFS= read -r -s -t 0.05 -n 65536 __hoop_junk 2>/dev/null; do :; done
    printf '"""
    + _NOTICE
    + r"""' >&2
  fi
  local ps1="${PS1//$'\001\033]133;A\007\002'/}"
  ps1="${ps1//$'\001\033]133;B\007\002'/}"
  PS1=$'\001\033]133;A\007\002'"$ps1"$'\001\033]133;B\007\002'
}
PS0=$'\033]133;C\007'
PROMPT_COMMAND="${PROMPT_COMMAND:+$PROMPT_COMMAND;}__hoop_prompt"
readonly PS0 PROMPT_COMMAND
"""
)

_ZSH_HOOKS = (
    r"""
__hoop_precmd() {
  local __hoop_junk
  if read -t 0 -k 1 __hoop_junk 2>/dev/null; then
    while read -t 0.05 -k 1 __hoop_junk 2>/dev/null; do :; done
    printf '"""
    + _NOTICE
    + r"""' >&2
  fi
  PS1="${PS1//\%\{$'\e]133;A\a'\%\}/}"
  PS1="${PS1//\%\{$'\e]133;B\a'\%\}/}"
  PS1="%{"$'\e]133;A\a'"%}${PS1}%{"$'\e]133;B\a'"%}"
}
__hoop_preexec() { printf '\033]133;C\007' }
autoload -Uz add-zsh-hook
add-zsh-hook precmd __hoop_precmd
add-zsh-hook preexec __hoop_preexec
"""
)

# POSIX sh has no hooks: the marks live in PS1 itself, and C is inferred by the broker.
_SH_HOOKS = r"""
PS1="$(printf '\033]133;A\007')${PS1:-\$ }$(printf '\033]133;B\007')"
"""

SHELLS = ("bash", "zsh", "sh", "dash")


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
        source = "[ -f ~/.bashrc ] && . ~/.bashrc\n"
    else:
        source = ""
    return source + _BASH_HOOKS


def write_zsh_dotdir(folder: Path, *, startup: bool) -> None:
    """A ZDOTDIR whose files read the user's own, then add the hooks."""
    for name in (".zshenv", ".zprofile", ".zlogin"):
        own = f'[ -f "$HOME/{name}" ] && . "$HOME/{name}"\n' if startup else ""
        (folder / name).write_text(own)
    own_rc = '[ -f "$HOME/.zshrc" ] && . "$HOME/.zshrc"\n' if startup else ""
    (folder / ".zshrc").write_text(own_rc + _ZSH_HOOKS)


def sh_env_file(*, startup: bool) -> str:
    """The $ENV file an interactive POSIX sh reads."""
    own = (
        '[ -n "$HOOP_USER_ENV" ] && [ -f "$HOOP_USER_ENV" ] && . "$HOOP_USER_ENV"\n'
        if startup
        else ""
    )
    return own + _SH_HOOKS


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
