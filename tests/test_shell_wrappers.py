"""The wrapper table, inline code (-c/-e), shell-state changes, refused input, the bash
that bashlex cannot parse, and the example policy for guarded terminal sessions."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from broker.config import Policy, Rule, parse_config
from broker.policy import shell
from broker.policy.decision import Decision
from broker.policy.shell import WRAPPERS, Wrapper, decide_shell, parse_command_line
from tests.helpers import REPO

RM_ARGS = ["-[rRf]*", "-[!-]*[rRf]*", "--r*", "--f*"]
POLICY = Policy(
    default="allow",
    on_unknown="review",
    rules=[Rule(name="no-recursive-delete", action="deny", program=["rm"], args=RM_ARGS)],
)
EXAMPLE = REPO / "examples" / "policies" / "guarded-shell.toml"


def decide(line: str, policy: Policy = POLICY) -> Decision:
    return decide_shell(policy, line)


def assert_denied(line: str) -> None:
    decision = decide(line)
    assert decision.action == "deny", (line, decision)
    assert decision.rule == "no-recursive-delete"
    assert decision.matched is not None and "rm" in decision.matched


def assert_unknown(line: str, why: str = "") -> Decision:
    decision = decide(line)
    assert decision.action == "review", (line, decision)
    assert decision.unknown is True, (line, decision)
    assert decision.rule is None
    assert decision.reason.startswith("cannot tell"), decision.reason
    assert why in decision.reason, (why, decision.reason)
    return decision


def assert_allowed(line: str) -> None:
    decision = decide(line)
    assert decision.action == "allow", (line, decision)
    assert decision.unknown is False, (line, decision)


# ------------------------------------------------------------------ the wrapper table

REQUIRED_WRAPPERS = (
    "sudo doas env nice nohup timeout stdbuf taskset flock setpriv unshare chrt prlimit "
    "nsenter systemd-run sg script strace ltrace fakeroot ssh-agent parallel xargs watch "
    "busybox time command builtin exec ionice chroot setsid su runuser find sh bash zsh dash"
).split()


def test_wrapper_table_holds_every_required_wrapper_with_its_reason() -> None:
    for name in REQUIRED_WRAPPERS:
        assert name in WRAPPERS, name
        wrapper = WRAPPERS[name]
        assert isinstance(wrapper, Wrapper)
        assert isinstance(wrapper.reason, str) and len(wrapper.reason) > 10, name
        assert shell._HANDLERS[name] is wrapper.handler
    # one table: every wrapper handler the walker uses comes from it
    for name, handler in shell._HANDLERS.items():
        assert name in WRAPPERS or name in shell._BUILTINS, name
        if name in WRAPPERS:
            assert handler is WRAPPERS[name].handler


WRAPPED = [
    # taskset [-a] [-c] MASK CMD
    "taskset 0x3 rm -rf x",
    "taskset -c 0-3 rm -rf x",
    "taskset -a -c 1 rm -rf x",
    "taskset --cpu-list 1,2 rm -rf x",
    # flock [opts] FILE CMD… / FILE -c STRING
    "flock /tmp/l rm -rf x",
    "flock -n -w 5 /tmp/l rm -rf x",
    "flock --timeout=5 -E 3 /tmp/l rm -rf x",
    "flock /tmp/l -c 'rm -rf x'",
    "flock -x /tmp/l --command 'ls; rm -rf x'",
    # setpriv, unshare, chrt, prlimit, nsenter
    "setpriv --reuid=1000 --regid=1000 --init-groups rm -rf x",
    "setpriv --nnp --reset-env rm -rf x",
    "unshare -r rm -rf x",
    "unshare --mount=/run/ns -f rm -rf x",
    "unshare -U --map-user=0 --setgroups deny rm -rf x",
    "chrt 10 rm -rf x",
    "chrt -f 10 rm -rf x",
    "chrt -o 0 rm -rf x",
    "chrt -o rm -rf x",  # newer chrt: no priority for SCHED_OTHER
    "chrt --rr --sched-runtime 5 1 rm -rf x",
    "prlimit --nofile=1024 rm -rf x",
    "prlimit -n1024 --cpu=10 rm -rf x",
    "nsenter -t 1 -m -u rm -rf x",
    "nsenter --target=1 --mount --net=/run/netns/x rm -rf x",
    "nsenter -a -t 1 -S 0 rm -rf x",
    # systemd-run
    "systemd-run --user --scope rm -rf x",
    "systemd-run -p MemoryMax=1G --wait -t rm -rf x",
    "systemd-run --on-calendar=daily --unit=x rm -rf x",
    "systemd-run -H root@host rm -rf x",
    # sg GROUP -c STRING, sg GROUP STRING
    "sg wheel -c 'rm -rf x'",
    "sg wheel 'rm -rf x'",
    "sg - wheel -c 'cd /; rm -rf x'",
    # script -c STRING (options may come after the file)
    "script -qc 'rm -rf x' /dev/null",
    "script -c 'rm -rf x'",
    "script --command='rm -rf x' out.log",
    "script --command 'rm -rf x' -q",
    "script out.log -c 'rm -rf x'",
    "script -q -e -f -O out.log -c 'rm -rf x'",
    # tracers, fakeroot, ssh-agent
    "strace rm -rf x",
    "strace -f -o out -e trace=file rm -rf x",
    "strace -ff -s 200 -- rm -rf x",
    "ltrace -c rm -rf x",
    "ltrace -o out -e malloc rm -rf x",
    "fakeroot rm -rf x",
    "fakeroot -u -- rm -rf x",
    "ssh-agent rm -rf x",
    "ssh-agent -a /tmp/sock bash -c 'rm -rf x'",
    # parallel: the command line goes through a shell
    "parallel rm -rf ::: a b",
    "parallel 'rm -rf {}' ::: a b",
    "parallel -j4 -k rm -rf {} ::: a",
    "parallel -q rm -rf ::: a",
    "ls | parallel rm -rf",
    # the old ones, and a few more
    "sudo rm -rf x",
    "doas rm -rf x",
    "env -i rm -rf x",
    "nice -n 5 rm -rf x",
    "nohup rm -rf x",
    "timeout 5 rm -rf x",
    "stdbuf -oL rm -rf x",
    "xargs rm -rf",
    "watch -n 1 rm -rf x",
    "busybox rm -rf x",
    "time rm -rf x",
    "command rm -rf x",
    "builtin exec rm -rf x",
    "exec rm -rf x",
    "ionice -c 3 rm -rf x",
    "chroot /mnt rm -rf x",
    "setsid -f rm -rf x",
    "su -c 'rm -rf x'",
    "runuser -u bob -- rm -rf x",
    "find . -exec rm -rf {} +",
    "bash -c 'rm -rf x'",
    "pkexec rm -rf x",
    "eatmydata rm -rf x",
    "gosu root rm -rf x",
    "setarch x86_64 -R rm -rf x",
    "linux64 rm -rf x",
    # nested
    "sudo taskset -c 1 flock /l setpriv --nnp unshare -r nice rm -rf x",
    'script -qc "flock /l -c \'sg wheel -c \\"rm -rf x\\"\'" /dev/null',
]


@pytest.mark.parametrize("line", WRAPPED)
def test_wrappers_are_seen_through(line: str) -> None:
    assert_denied(line)


def test_wrapper_and_wrapped_are_both_commands() -> None:
    parsed = parse_command_line("taskset -c 1 flock /l setpriv --nnp rm -rf x")
    assert parsed.unknown is None
    assert [c.program for c in parsed.commands] == ["taskset", "flock", "setpriv", "rm"]
    assert parsed.commands[-1].args == ("-rf", "x")
    assert parsed.commands[-1].text == "rm -rf x"


RUN_NOTHING = [
    "taskset -p 0x3 1234",
    "taskset -ap 1234",
    "flock 9",
    "flock -u 9",
    "setpriv -d",
    "chrt -p 10 1234",
    "chrt -m",
    "prlimit -p 1234 --nofile=10",
    "prlimit",
    "strace -p 1234",
    "ltrace -p 1234",
    "ssh-agent -s",
    "ssh-agent -k",
    "fakeroot --version",
    "script --help",
    "systemd-run --version",
    "unshare --help",
]


@pytest.mark.parametrize("line", RUN_NOTHING)
def test_wrapper_forms_that_run_no_command(line: str) -> None:
    assert_allowed(line)
    assert len(parse_command_line(line).commands) == 1


@pytest.mark.parametrize(
    "line",
    [
        "unshare -r",
        "nsenter -t 1 -m",
        "fakeroot",
        "chroot /mnt",
        "sg wheel",
        "script",
        "script -q out.log",
        "systemd-run -S",
        "systemd-run --shell --uid=0",
        "pkexec",
        "setarch x86_64",
    ],
)
def test_wrappers_without_a_command_start_an_interactive_shell(line: str) -> None:
    assert_unknown(line, "interactive shell")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("taskset --frobnicate 1 rm x", "not one the broker knows"),
        ("flock --frobnicate /l rm x", "not one the broker knows"),
        ("flock -c 'rm -rf x' /l", "before the lock file"),
        ("setpriv --frobnicate rm x", "not one the broker knows"),
        ("unshare -Z rm x", "not one the broker knows"),
        ("chrt --frobnicate 1 rm x", "not one the broker knows"),
        ("prlimit --frobnicate rm x", "not one the broker knows"),
        ("nsenter -Q rm x", "not one the broker knows"),
        ("systemd-run --frobnicate rm x", "not one the broker knows"),
        ("script -Z -c ls", "not one the broker knows"),
        ("strace -% rm x", "not one the broker knows"),
        ("fakeroot --frobnicate rm x", "not one the broker knows"),
        ("ssh-agent -X rm x", "not one the broker knows"),
        ("parallel --frobnicate rm ::: x", "not one the broker knows"),
        ("taskset $OPTS rm x", "only known at run time"),
        ("flock $L rm -f x", "only known at run time"),
        ('flock /l -c "$CMD"', "only known at run time"),
        ('sg wheel "$CMD"', "only known at run time"),
        ('script -c "$CMD"', "only known at run time"),
        ("parallel", "runs its input lines as commands"),
        ("ls | parallel", "runs its input lines as commands"),
        ("parallel ::: 'rm -rf x'", "runs its input lines as commands"),
        ("parallel -j 2 $CMD ::: a", "only known at run time"),
        ("sg wheel ls -l", "one word as its command"),
    ],
)
def test_unknown_wrapper_options_and_runtime_values_fail_closed(line: str, why: str) -> None:
    assert_unknown(line, why)


def test_a_skipped_operand_that_may_split_is_unknown() -> None:
    # `taskset $M rm -rf x`: $M may be several words (or none), which moves the command
    assert_unknown("taskset $M rm x", "only known at run time")
    assert_unknown("sg $G rm", "only known at run time")
    assert_denied('taskset "$M" rm -rf x')
    assert parse_command_line('taskset "$M" rm x').unknown is None
    # what is known still decides: the command after the operand is judged as written
    assert_denied("sg $G 'rm -rf x'")


def test_parallel_inputs_are_runtime_arguments() -> None:
    assert_unknown("parallel rm {} ::: a b", "only known at run time")
    assert_allowed("parallel gzip {} ::: a b")
    assert_allowed("parallel echo ::: a b")


# -------------------------------------------------------------- -c / -e and inline code

OPAQUE = [
    ("foo -c 'ls; id'", "looks like a command"),
    ("foo -c rm", "looks like a command"),
    ("foo -c /bin/sh", "looks like a command"),
    ("foo -e 'echo hi'", "looks like a command"),
    ("foo --command='ls | wc'", "looks like a command"),
    ("foo --command 'a b'", "looks like a command"),
    ("foo --exec=$(ls)", "only known at run time"),
    ("foo --exec 'x;y'", "looks like a command"),
    ("foo --eval='a(b)'", "looks like a command"),
    ("foo -qc 'echo hi'", "looks like a command"),
    ("foo -c'echo hi'", "looks like a command"),
    ('foo -c "$X"', "only known at run time"),
    ("rsync -e 'ssh -p 2222' a b:", "looks like a command"),
    ("rsync -e ssh a b:", "looks like a command"),
    ("nc -e /bin/sh host 1", "looks like a command"),
    ("sudo foo -c 'echo hi'", "looks like a command"),
    ("ls2 -c 'ls; id'", "looks like a command"),  # not `ls`: no data exemption by likeness
    # interpreters: inline code is unknown whatever it looks like
    ("python -c 1", "inline code"),
    ("python3 -c 'import os'", "inline code"),
    ("python3.11 -Bc 'print(1)'", "inline code"),
    ("perl -e 'unlink x'", "inline code"),
    ("perl -pe 's/a/b/' f", "inline code"),
    ("perl -lane 'print $F[0]' f", "inline code"),
    ("ruby -e 'puts 1'", "inline code"),
    ("node -e 'process.exit()'", "inline code"),
    ("node --eval=1", "inline code"),
    ("php -r 'system(\"id\");'", "inline code"),
    ("lua -e 'os.execute(\"id\")'", "inline code"),
    ("gdb -ex 'shell id' ./a.out", "inline code"),
    ("vim -c '!rm -rf x' f", "inline code"),
    ("vim '+!rm -rf x' f", "editor command"),
    ("emacs --eval '(shell-command \"id\")'", "inline code"),
    ("expect -c 'spawn sh'", "inline code"),
    # sed's e command and e flag, awk's system() and pipes
    ("sed 's/x/rm -rf y/e' f", "`e` flag"),
    ("sed '1e id' f", "`e` command"),
    ("sed -n -e '/a/e' f", "`e` command"),
    ("sed -e 's/a/b/' -e 'e id' f", "`e` command"),
    ("sed 'K' f", "cannot read"),
    ("sed 's/a/b' f", "cannot read"),
    ('sed "$SCRIPT" f', "only known at run time"),
    ("awk 'BEGIN{system(\"id\")}'", "runs commands"),
    ("awk '{print | \"sh\"}' f", "runs commands"),
    ("awk '{\"date\" | getline d}'", "runs commands"),
    ("gawk -e 'BEGIN{system(\"id\")}'", "runs commands"),
    ("gawk -l filefuncs 'BEGIN{}'", "loads code"),
    # client shell escapes
    ("psql -c '\\! id'", "client escape"),
    ("psql -c \"COPY t TO PROGRAM 'id'\"", "client escape"),
    ("mysql -e 'system id'", "client escape"),
    ("mysql --execute='\\! id'", "client escape"),
    ("sqlite3 db '.shell id'", "client escape"),
    # options that name a program to run
    ("tar -xf a.tar --to-command=cat", "runs a program"),
    ("tar -cf a.tar -I zstd dir", "runs a program"),
    ("ssh -o ProxyCommand='nc %h %p' host", "runs a command"),
    ("scp -S ./prog a host:", "names a program"),
]


@pytest.mark.parametrize(("line", "why"), OPAQUE)
def test_inline_code_and_command_strings_are_unknown(line: str, why: str) -> None:
    decision = assert_unknown(line, why)
    assert "runs:" in decision.reason


@pytest.mark.parametrize(
    "line",
    [
        "grep -e 'a b' -c file",
        "egrep -e 'x|y' f",
        "cut -c 1-5 f",
        "wc -c f",
        "head -c 100 f",
        "tail -c 10 f",
        "ls -c",
        "cmp -c a b",
        "sort -c f",
        "uniq -c f",
        "du -c /tmp",
        "stat -c '%n %s' f",
        "ps -e",
        "date -d 'next week'",
        "df -h",
        "echo -e 'a\\tb'",
        "gzip -c f",
        "tar -czf a.tgz dir",
        "ssh -c aes128-ctr -e none host",
        "curl -c jar -e 'https://x/' https://y/",
        "docker run -e 'A=b c' img",
        "kubectl exec -c app pod -- ls",
        "foo -c config.yml",
        "nginx -c /etc/nginx/nginx.conf",
        "gcc -c main.c",
        "foo --eval=bar",
        "python3 script.py",
        "perl script.pl",
        "sed -e 's/a/b/' f",
        "sed 's/a/b/g; s/c/d/' f",
        "sed -i.bak -E 's/(a|b)/c/w out' f",
        "sed -n '1,5p;$=' f",
        "sed '/start/,/end/d' f",
        "sed 'a\\\nadded' f",
        "sed --sandbox 's/x/y/e' f",
        "sed -f script.sed f",
        "awk '{print $1}' f",
        "awk -F: '$3 > 1000 || $1 == \"root\" {print $1}' /etc/passwd",
        "awk -f prog.awk f",
        "psql -c 'SELECT 1'",
        "mysql -e 'select 1'",
        "sqlite3 db 'select 1'",
        "ssh -o StrictHostKeyChecking=no host",
        "vim +42 f",
        "vim +/pattern f",
    ],
)
def test_data_options_are_not_commands(line: str) -> None:
    assert_allowed(line)


def test_a_command_string_is_also_judged_best_effort() -> None:
    # what it would run can only make the decision stricter
    assert_denied("foo -c 'rm -rf x'")
    assert_denied("foo --command='cd /; rm -rf x'")
    assert_denied("tar -xf a.tar --to-command='rm -rf x'")
    assert_denied("tar -cf /dev/null /dev/null --checkpoint=1 --checkpoint-action=exec='rm -rf x'")
    assert_denied("ssh -o ProxyCommand='rm -rf x' host")
    assert_denied("zip -T -TT 'rm -rf x' a.zip f")


def test_an_option_value_naming_a_program_of_the_policy_is_a_command() -> None:
    policy = Policy(rules=[Rule(name="no-frob", action="deny", program=["frobctl"])])
    decision = decide("foo -c frobctl", policy)  # foo is opaque; `frobctl` is judged too
    assert (decision.action, decision.rule) == ("deny", "no-frob")
    assert decide("foo -c frobnicator", policy).action == "allow"
    assert decide("foo -c frobctl").action == "allow"  # a name no rule mentions
    parsed = parse_command_line("foo -c frobnicator", programs=("frob*",))
    assert parsed.commands[0].opaque is not None
    assert parse_command_line("foo -c frobnicator").commands[0].opaque is None


def test_a_rule_naming_the_program_decides_when_it_is_at_least_as_strict() -> None:
    review = Policy(
        on_unknown="review",
        rules=[Rule(name="pythons", action="review", program=["python*"], approvers=["sre"])],
    )
    decision = decide("python3 -c 'import os'", review)
    assert (decision.action, decision.rule, decision.approvers) == ("review", "pythons", ("sre",))
    deny = Policy(
        on_unknown="review", rules=[Rule(name="no-perl", action="deny", program=["perl"])]
    )
    assert decide("perl -e 1", deny).rule == "no-perl"
    # an allow rule cannot relax code the broker cannot read
    allow = Policy(
        default="deny",
        on_unknown="deny",
        rules=[Rule(name="readers", action="allow", program=["sed", "cat"])],
    )
    assert decide("sed 's/a/b/' f", allow).action == "allow"
    decision = decide("sed '1e id' f", allow)
    assert (decision.action, decision.unknown, decision.rule) == ("deny", True, None)


def test_opaque_commands_are_marked_in_the_parse() -> None:
    (command,) = parse_command_line("python3 -c 'x'").commands
    assert command.opaque is not None and "inline code" in command.opaque
    (command,) = parse_command_line("cat f").commands
    assert command.opaque is None


@pytest.mark.parametrize(
    "line",
    [
        "PAGER='rm -rf x' man ls",
        "GIT_PAGER='rm -rf x' git log",
        "export EDITOR='rm -rf x'",
        "LESSOPEN='|rm -rf x %s' less f",
        "git -c core.pager='rm -rf x' log",
        "git -c alias.x='!rm -rf x' x",
        "git rebase -x 'rm -rf x' HEAD~3",
        "git rebase --exec='rm -rf x' HEAD~3",
        "git submodule foreach 'rm -rf x'",
        "git bisect run rm -rf x",
        "git filter-branch --tree-filter 'rm -rf x' HEAD",
    ],
)
def test_commands_in_settings_that_programs_run_are_judged(line: str) -> None:
    assert_denied(line)


def test_command_settings_known_only_at_run_time_are_unknown() -> None:
    assert_unknown("PAGER=$X man ls", "only known at run time")
    assert_unknown("git -c $SETTING log", "only known at run time")
    assert_allowed("git -c user.name=bob commit")
    assert_allowed("EDITOR=vim git commit")


# ------------------------------------------------------------- changes to the shell itself

SHELL_STATE = [
    ("exec 0<&2", "changes the shell's own file descriptors"),
    ("exec 2>/dev/null", "changes the shell's own file descriptors"),
    ("exec >log 2>&1", "changes the shell's own file descriptors"),
    ("exec 3<file", "changes the shell's own file descriptors"),
    ("exec -- <&2", "changes the shell's own file descriptors"),
    ("command exec 0<&2", "changes the shell's own file descriptors"),
    ("builtin exec 5>&-", "changes the shell's own file descriptors"),
    ("ls; exec 0</dev/tty", "changes the shell's own file descriptors"),
    ("trap 'exec 0<&2' DEBUG", "changes the shell's own file descriptors"),
    ("trap 'exec 0<&2' RETURN", "changes the shell's own file descriptors"),
    ("trap 'exec 0<&2' ERR", "changes the shell's own file descriptors"),
    ("f() { exec 0<&2; }", "changes the shell's own file descriptors"),
    ("cat <&10", "file descriptor of 10 or more"),
    ("cat <&255", "file descriptor of 10 or more"),
    ("ls 10>&2", "file descriptor of 10 or more"),
    ("ls 2>&10", "file descriptor of 10 or more"),
    ("ls 12<x", "file descriptor of 10 or more"),
    ("ls 2>&11-", "file descriptor of 10 or more"),
    ("cat < /dev/fd/255", "file descriptor of 10 or more"),
    ("cat < /proc/self/fd/255", "file descriptor of 10 or more"),
    ("cat /proc/$PPID/fd/255", "file descriptor of 10 or more"),
    ("ls >&$fd", "only known at run time"),
    ("exec {fd}>x", "file descriptor (10 or more) of its own"),
    ("ls {fd}>&-", "file descriptor (10 or more) of its own"),
    ("exec {in}<&0", "file descriptor (10 or more) of its own"),
    ("cd() { ls; }", "a function named like the builtin `cd` shadows it"),
    ("function eval { ls; }", "a function named like the builtin `eval` shadows it"),
    ("builtin() { ls; }", "a function named like the builtin `builtin` shadows it"),
    ("command() { ls; }", "a function named like the builtin `command` shadows it"),
    ("set() { :; }", "a function named like the builtin `set` shadows it"),
    ("sudo() { ls; }", "a function named like the wrapper `sudo` shadows it"),
    ("time() { ls; }", "shadows it"),
    ("enable -f ./x.so foo", "`enable`"),
    ("enable -n echo", "`enable`"),
    ("set -o emacs", "turns on the shell's own line editing"),
    ("set -o vi", "turns on the shell's own line editing"),
    ("set -eo vi", "turns on the shell's own line editing"),
    ("set -e -o emacs", "turns on the shell's own line editing"),
    ("set -o $MODE", "only known at run time"),
    ("shopt -so vi", "turns on the shell's own line editing"),
    ("shopt -s -o emacs", "turns on the shell's own line editing"),
    ("bind -x '\"\\C-o\": rm -rf x'", "key bindings"),
    ("bind '\"\\C-o\": accept-line'", "key bindings"),
    ("bind -f ~/.inputrc", "key bindings"),
    ("bindkey -e", "key bindings"),
    ("zle -N widget", "line editor"),
    ("declare -i x=5", "arithmetic"),
]


@pytest.mark.parametrize(("line", "why"), SHELL_STATE)
def test_changes_to_how_the_shell_reads_or_runs_input_are_unknown(line: str, why: str) -> None:
    assert_unknown(line, why)


@pytest.mark.parametrize(
    "line",
    [
        "exec",
        "ls 2>&1",
        "ls >&2 2>/dev/null",
        "cat <&0",
        "ls 9>x",
        "exec ls",
        "myfn() { ls; }",
        "set -o pipefail",
        "set -euo pipefail",
        "set +o emacs",
        "set -e",
        "set -- a b",
        "shopt -s extglob",
        "shopt -uo vi",
        "trap 'ls' ERR",
        "ls /proc/self/fd/",
        "cat /dev/fd/0",
    ],
)
def test_ordinary_shell_settings_are_not_unknown(line: str) -> None:
    assert_allowed(line)


# --------------------------------------------------------------------- refused input


def test_input_problems_are_unknown_with_a_reason_and_are_not_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(shell._Parser, "parse", explode)
    cases = [
        ("ls\x00rm -rf x", "NUL byte"),
        ("ls \udcff", "not valid UTF-8 (byte 0xFF at character 3)"),
        (b"rm -rf \xc3\x28".decode("utf-8", "surrogateescape"), "not valid UTF-8"),
        ("ls \ud800", "not valid UTF-8 (U+D800"),
        ("ls " + "a" * (64 * 1024), "longer than 64 KiB"),
        ("ls " + "é" * (33 * 1024), "longer than 64 KiB"),  # 66 KiB as UTF-8
        ("x" * (4 << 20), "longer than 64 KiB"),
    ]
    for line, why in cases:
        parsed = parse_command_line(line)
        assert parsed.commands == ()
        assert parsed.unknown is not None and why in parsed.unknown, (why, parsed.unknown)
        decision = decide(line)
        assert decision.action == "review"
        assert decision.unknown is True
        assert why in decision.reason
    strict = POLICY.model_copy(update={"on_unknown": "deny"})
    assert decide("ls\x00", strict).action == "deny"


def test_a_regex_rule_still_makes_refused_input_stricter() -> None:
    policy = Policy(rules=[Rule(name="shadow", action="deny", regex=r"/etc/shadow")])
    decision = decide("cat /etc/shadow\x00", policy)
    assert (decision.action, decision.rule) == ("deny", "shadow")


# ------------------------------------------- bash that bashlex cannot parse on its own

PARSES = [
    "echo $((6*7))",
    "echo $(( 16#ff + 0x10 - 2 ))",
    'echo "$((6*7)) items"',
    "echo $(echo $((1+2)))",
    "x=$((1 << 4))",
    "echo $(($# + 1))",
    "[[ -d /tmp ]] && echo yes",
    "[[ -f x ]] && rm x",
    "[[ $x == y* || -z $y ]]",
    "[[ a < b ]]",
    '[[ -n "$(ls)" ]] && echo y',
    "[[ $# -eq 0 ]] && echo none",
    "[[ 1 -lt 2 ]]",
    "if [[ -f x ]]; then ls; fi",
    "(( 1 + 2 ))",
    "((i=0, i++))",
    "for ((i=0;i<3;i++)); do echo $i; done",
    "for ((i=0; i<3; i++)) do echo $i; done",
    "for ((;;)); do sleep 1; done",
    "let 'x = 1' 'y = x + 1'",
    "echo ${arr[0]} ${arr[@]} ${#arr[@]} ${x:1:2} ${x: -1} ${x:-def}",
    "echo '$((x))' '[[ x ]]'",
    "read -r a b",
    "read -a arr",
    "printf -v out '%s' x",
    "printf '%s[%d]\\n' a 1",
    "[ -v x ]",
    "[ -f 'file[x]' ]",
    "unset x y 'a[0]'",
    "mapfile -t lines < f",
    "getopts ab opt",
]


@pytest.mark.parametrize("line", PARSES)
def test_ordinary_bash_parses(line: str) -> None:
    assert_allowed(line)


def test_what_runs_inside_the_new_syntax_is_still_judged() -> None:
    for line in (
        "[[ -f x ]] && rm -rf x",
        "[[ $(rm -rf x) ]]",
        '[[ -n "$(rm -rf x)" ]]',
        "if [[ -f x ]]; then rm -rf x; fi",
        "for ((i=0;i<3;i++)); do rm -rf x; done",
        "echo $((1+2)) $(rm -rf x)",
        "(( 1 )) && rm -rf x",
        "while (( 1 )); do rm -rf x; done",
    ):
        assert_denied(line)
    assert [c.program for c in parse_command_line("[[ -n $(ls) ]] && cat f").commands] == [
        "ls",
        "cat",
    ]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("echo $((a[$(rm -rf x)]))", "holds a substitution"),
        ("echo $(( $(cat n) + 1 ))", "holds a substitution"),
        ("echo $(( `cat n` + 1 ))", "holds a substitution"),
        ("echo $((${x}))", "holds a substitution"),
        ("echo $((x))", "reads `x`"),
        ("echo $(($x + 1))", "reads `$x`"),
        ("echo $(($1))", "reads `$1`"),
        ("(( x++ ))", "reads `x`"),
        ("while (( i < 3 )); do ls; done", "reads `i`"),
        ("for ((i=0;i<n;i++)); do ls; done", "reads `n`"),
        ("for ((i=0;i<3;i++)); do i='a[$(id)]'; done", "may change elsewhere"),
        ("for ((i=0;i<3;i++)); do read i; done", "may change elsewhere"),
        ("let x++", "reads `x`"),
        ("let $EXPR", "only known at run time"),
        ("[[ $x -eq 1 ]]", "evaluates `$x` as arithmetic"),
        ("[[ x -gt 1 ]]", "evaluates `x` as arithmetic"),
        ('[[ "$(cat n)" -lt 2 ]]', "as arithmetic"),
        ("[[ -v a[$(id)] ]]", "subscript"),
        ("echo ${arr[i]}", "evaluates `i` as arithmetic"),
        ("echo ${x:i:2}", "evaluates `i` as arithmetic"),
        ("read 'c[$(id)]' <<< x", "subscript that bash evaluates as arithmetic"),
        ("read 'c[i]'", "subscript that bash evaluates as arithmetic"),
        ("printf -v 'b[$(id)]' x", "subscript that bash evaluates as arithmetic"),
        ("test -v 'h[$(id)]'", "subscript that bash evaluates as arithmetic"),
        ("[ -v 'h[i]' ]", "subscript that bash evaluates as arithmetic"),
        ("unset 'a[$(id)]'", "subscript that bash evaluates as arithmetic"),
        ("mapfile -t 'a[i]' < f", "subscript that bash evaluates as arithmetic"),
        ("declare 'a[x]=1'", "subscript that bash evaluates as arithmetic"),
        ("export 'a[x]'", "subscript that bash evaluates as arithmetic"),
        ("[[ x =~ (a|b) ]]", "cannot parse"),
        ("[[ a ; rm -rf x ]]", "cannot parse"),
        ("echo $[1+2]", "arithmetic substitution"),
        ("echo $((1+\n2))", "cannot parse"),
        ("cat <<EOF\n$((x))\nEOF", "here-document"),
        ("echo $((1 << x))", "cannot parse"),  # read as a here-document: not masked
    ],
)
def test_arithmetic_that_may_run_a_command_is_unknown(line: str, why: str) -> None:
    assert_unknown(line, why)


def test_the_preprocessing_keeps_positions_and_hides_no_command() -> None:
    masked, regions = shell._mask(
        "[[ -f $(ls) ]] && echo $((6*7)); for ((i=0;i<2;i++)); do :; done"
    )
    assert len(masked) == len("[[ -f $(ls) ]] && echo $((6*7)); for ((i=0;i<2;i++)); do :; done")
    assert masked == ":     $(ls)    && echo ${_____}; for x" + " " * 14 + "; do :; done"
    assert sorted(kind for _, kind in regions.values()) == ["arith", "arith-for", "test"]
    # `$((…); …)` is a command substitution holding a subshell, not arithmetic: left to
    # bashlex, which cannot read it
    assert_unknown("echo $((rm -rf x); ls)", "cannot parse")
    # `((…) …)` is two subshells, not arithmetic
    assert_denied("((rm -rf x) ; ls)")


# ---------------------------------------------------------- the guarded-shell example


def _example_policy() -> Policy:
    text = EXAMPLE.read_text()
    config = parse_config(text + "\n[dev]\n", base_dir=Path("/"), source=str(EXAMPLE))
    policy = config.policies["guarded-shell"]
    assert policy == Policy.model_validate(tomllib.loads(text)["policies"]["guarded-shell"])
    return policy


def test_example_policy_loads_with_the_config_loader() -> None:
    policy = _example_policy()
    assert (policy.default, policy.on_unknown) == ("allow", "review")
    names = [rule.name for rule in policy.rules]
    for name in ("no-recursive-delete", "shell-editing", "interactive-escapes"):
        assert name in names
    for rule in policy.rules:
        if rule.name == "interactive-escapes":
            assert (rule.action, rule.approvers) == ("review", ["approvers"])


@pytest.mark.parametrize(
    ("line", "action", "rule"),
    [
        ("rm -rf /srv/x", "deny", "no-recursive-delete"),
        ("sudo taskset -c 1 rm -fr x", "deny", "no-recursive-delete"),
        ("script -qc 'rm -rf x' /dev/null", "deny", "no-recursive-delete"),
        ("rm x", "allow", None),
        ("ls -la | grep x", "allow", None),
        ("less /var/log/syslog", "allow", None),
        ("man bash", "allow", None),
        ("set -o vi", "deny", "shell-editing"),
        ("set -o emacs", "deny", "shell-editing"),
        ("shopt -so vi", "deny", "shell-editing"),
        ("bind -x '\"\\C-o\": ls'", "deny", "shell-editing"),
        ("exec bash", "deny", "shell-editing"),
        ("exec /bin/zsh -l", "deny", "shell-editing"),
        ("bash", "review", "interactive-escapes"),
        ("bash -i", "review", "interactive-escapes"),
        ("bash -c 'ls; cd /tmp'", "allow", "shell-command-strings"),
        ("bash -lc 'make'", "allow", "shell-command-strings"),
        ("bash -c 'vim f'", "review", "interactive-escapes"),
        ("zsh", "review", "interactive-escapes"),
        ("sudo -i", "review", "interactive-escapes"),
        ("sudo -s", "review", "interactive-escapes"),
        ("sudo -u bob -s", "review", "interactive-escapes"),
        ("sudo vim /etc/hosts", "review", "interactive-escapes"),
        ("sudo systemctl status x", "allow", None),
        ("su -", "review", "interactive-escapes"),
        ("ssh db1", "review", "interactive-escapes"),
        ("tmux new -s x", "review", "interactive-escapes"),
        ("screen -r", "review", "interactive-escapes"),
        ("vim /etc/hosts", "review", "interactive-escapes"),
        ("nano f", "review", "interactive-escapes"),
        ("python3", "review", "interactive-escapes"),
        ("python3 -c 'print(1)'", "review", "interactive-escapes"),
        ("perl -de 0", "review", "interactive-escapes"),
        ("psql -h db", "review", "interactive-escapes"),
        ("mysql", "review", "interactive-escapes"),
        ("sqlite3 x.db", "review", "interactive-escapes"),
        ("gdb ./a.out", "review", "interactive-escapes"),
        ("more f", "review", "interactive-escapes"),
        ("nice -n 5 python3", "review", "interactive-escapes"),
        ("script -qc 'ls' /dev/null", "review", "interactive-escapes"),
    ],
)
def test_example_policy_decisions(line: str, action: str, rule: str | None) -> None:
    decision = decide(line, _example_policy())
    assert (decision.action, decision.rule) == (action, rule), decision
    if action == "review":
        assert decision.approvers == ("approvers",)


@pytest.mark.parametrize(
    "line",
    ["script", "unshare -r", "fakeroot", "$SHELL", "exec 0<&2", "enable -n echo", "cat <&255"],
)
def test_example_policy_sends_unknown_lines_to_review(line: str) -> None:
    decision = decide(line, _example_policy())
    assert (decision.action, decision.unknown) == ("review", True)


# ------------------------------------------------------------------------- the docs


def test_docs_list_every_wrapper_of_the_table() -> None:
    text = (REPO / "docs" / "policy.md").read_text()
    table = text[text.index("### Wrappers") : text.index("### Inline code and command strings")]
    for name in WRAPPERS:
        assert f"`{name}`" in table, name


def test_the_documented_guarded_shell_excerpt_behaves_like_the_example() -> None:
    text = (REPO / "docs" / "policy.md").read_text()
    section = text[text.index("### Guarded terminal sessions") : text.index("### Limits")]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    excerpt = Policy.model_validate(tomllib.loads(block)["policies"]["guarded-shell"])
    example = _example_policy()
    for line in (
        "sudo taskset -c 1 rm -fr x",
        "set -o vi",
        "vim /etc/hosts",
        "sudo -i",
        "python3",
        "bash -c 'make'",
        "less /var/log/syslog",
        "unshare -r",
    ):
        got, want = decide(line, excerpt), decide(line, example)
        assert (got.action, got.rule) == (want.action, want.rule), line
