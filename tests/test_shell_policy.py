"""Shell command lines judged against a policy: splitting, wrappers, unknowns, fail-closed."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from broker.config import Policy, Rule
from broker.policy import shell
from broker.policy.decision import Decision, combine
from broker.policy.shell import SimpleCommand, decide_shell, parse_command_line
from tests.helpers import REPO

GUARDRAILS = Policy(
    default="allow",
    on_unknown="review",
    rules=[
        Rule(
            name="no-recursive-rm",
            action="deny",
            program=["rm"],
            args=["-r*", "-f*", "--recursive"],
        ),
        Rule(
            name="power",
            action="review",
            program=["shutdown", "reboot"],
            approvers=["sre-leads"],
            approvals=2,
            timeout=600,
            reason_required=True,
        ),
    ],
)


def decide(line: str, policy: Policy = GUARDRAILS) -> Decision:
    return decide_shell(policy, line)


# --------------------------------------------------------------------- denied: rm -rf x

DENIED = [
    # the plain command and its spellings
    "rm -rf x",
    "rm -fr x",
    "rm --recursive x",
    "rm -r x",
    "/bin/rm -rf x",
    "/usr/bin/rm -rf x",
    "./rm -rf x",
    "\\rm -rf x",
    "'rm' -rf x",
    '"rm" -rf x',
    "r'm' -rf x",
    'r"m" -rf x',
    "r\\m -rf x",
    "rm '-rf' x",
    "rm -\\rf x",
    "$'rm' -rf x",
    "$'\\x72m' -rf x",
    "rm {-rf,} x",
    "{rm,-rf,x}",
    "rm -rf $X",
    "rm -rf x > /dev/null 2>&1",
    "> out rm -rf x",
    # lists, pipelines, background
    "ls; rm -rf x",
    "ls && rm -rf x",
    "ls || rm -rf x",
    "ls | rm -rf x",
    "ls |& rm -rf x",
    "rm -rf x &",
    "ls & rm -rf x",
    "! rm -rf x",
    "ls\nrm -rf x",
    "ls && \\\nrm -rf x",
    # grouping, compound commands, functions
    "(rm -rf x)",
    "{ rm -rf x; }",
    "( (rm -rf x) )",
    "if true; then rm -rf x; fi",
    "if rm -rf x; then :; fi",
    "while true; do rm -rf x; done",
    "until false; do rm -rf x; done",
    "for f in a b; do rm -rf $f; done",
    "for f in $(rm -rf x); do :; done",
    "f() { rm -rf x; }",
    "(rm -rf x) > out",
    # substitutions, also inside quotes, assignments and redirections
    "echo $(rm -rf x)",
    "echo `rm -rf x`",
    'echo "$(rm -rf x)"',
    'echo "a`rm -rf x`b"',
    'echo "$(echo "$(rm -rf x)")"',
    "X=$(rm -rf y) true",
    "X=$(rm -rf y)",
    "export X=$(rm -rf y)",
    "cat <(rm -rf x)",
    "tee >(rm -rf x)",
    "echo hi > $(rm -rf x)",
    "cat <<< $(rm -rf x)",
    # wrappers, seen through recursively
    "sudo rm -rf x",
    "sudo -u root rm -rf x",
    "sudo -nu root rm -rf x",
    "sudo -uroot rm -rf x",
    "sudo --user=root -- rm -rf x",
    "sudo -g wheel -C 5 -- rm -rf x",
    "sudo -E -H rm -rf x",
    "doas rm -rf x",
    "doas -u root rm -rf x",
    "env rm -rf x",
    "env FOO=1 rm -rf x",
    "env -i PATH=/bin rm -rf x",
    "env -u HOME rm -rf x",
    "env - rm -rf x",
    "FOO=1 rm -rf x",
    "FOO=1 BAR='a b' rm -rf x",
    "xargs rm -rf < list",
    "find . | xargs -I{} rm -rf {}",
    "find . | xargs -0 -n 1 -P 4 rm -rf",
    "find . -print0 | xargs --null rm -r",
    "nice rm -rf x",
    "nice -n 10 rm -rf x",
    "nice -10 rm -rf x",
    "nohup rm -rf x",
    "time rm -rf x",
    "time -p rm -rf x",
    "time ! rm -rf x",
    "time F=1 rm -rf x",
    "/usr/bin/time -v rm -rf x",
    "timeout 5 rm -rf x",
    "timeout -s KILL -k 10 5m rm -rf x",
    "command rm -rf x",
    "command -p rm -rf x",
    "exec rm -rf x",
    "exec -a name rm -rf x",
    "builtin command rm -rf x",
    "stdbuf -oL rm -rf x",
    "ionice -c 3 rm -rf x",
    "chroot /mnt rm -rf x",
    "setsid rm -rf x",
    "busybox rm -rf x",
    "find . -name '*.tmp' -exec rm -rf {} \\;",
    "find . -execdir rm -r {} +",
    "watch rm -rf x",
    "watch -n 5 'rm -rf x'",
    "sudo nice -n 5 timeout 10 env A=1 rm -rf x",
    # shells given a command string
    "sh -c 'rm -rf x'",
    'bash -c "rm -rf x"',
    'bash -lc "rm -rf x"',
    "bash -e -o pipefail -c 'rm -rf x'",
    "zsh -c 'rm -rf x'",
    "dash -c 'ls; rm -rf x'",
    'sudo sh -c "cd /; rm -rf x"',
    "sudo -u root bash -c 'sh -c \"rm -rf x\"'",
    "su -c 'rm -rf x'",
    "su - root -c 'rm -rf x'",
    "su root -c 'rm -rf x'",
    "su --command='rm -rf x' root",
    "runuser -u bob -- rm -rf x",
    "busybox sh -c 'rm -rf x'",
    # commands the shell keeps and runs later
    "trap 'rm -rf x' EXIT",
    "PROMPT_COMMAND='rm -rf x'",
    "export PROMPT_COMMAND='rm -rf x'",
    # a here-document started on this line: the command after it still runs
    "cat <<EOF; rm -rf x",
    "cat <<'EOF'; rm -rf x",
]


@pytest.mark.parametrize("line", DENIED)
def test_recursive_rm_is_denied_however_it_is_written(line: str) -> None:
    decision = decide(line)
    assert decision.action == "deny", decision
    assert decision.rule == "no-recursive-rm"
    assert decision.unknown is False
    assert decision.matched is not None
    assert decision.reason.startswith("rule no-recursive-rm matched `")


# ------------------------------------------------------------------------------ allowed

ALLOWED = [
    "ls -la",
    "rm x",
    "rm -- x",
    "rm 'x y'",
    "rm x{1,2}",
    "echo rm -rf x",
    "echo 'rm -rf x'",
    "printf '%s\\n' \"$(ls -la)\"",
    "grep -r foo .",
    "git log --oneline | head -n 5",
    "cd /tmp && ls",
    'cd "$(git rev-parse --show-toplevel)"',
    "ls $HOME",
    'rm "x$SUFFIX"',
    "echo $HOME ${USER} $1",
    "[ -f x ] && rm x",
    "test -d /tmp || mkdir -p /tmp/x",
    "FOO=1 ls",
    "sudo -u root ls /root",
    "sudo -i",
    "sudo -h",
    "sudo -e /etc/hosts",
    "doas -s",
    "su - root",
    "bash",
    "bash -l",
    "bash script.sh",
    "xargs",
    "command -v rm",
    "command -V rm",
    "find . -name '*.py' -print",
    "cp a{,.bak}",
    "echo {1..3}",
    "cat <<EOF",
    "cat <<-EOF",
    "cat <<'EOF'",
    "cat <<EOF\nrm -rf x\nEOF",
    "cat <<EOF\nhello $USER\nEOF",
    "echo 'a!b' \"hi!\" x!",
    "[ ! -f x ]",
    "git log @{u}",
    "ls # rm -rf x",
    "time ls",
    "echo time",
    "trap - EXIT",
    "export PATH=$PATH:/opt/bin",
    "PS1='\\u@\\h \\w\\$ '",
    "x=1 y=2",
    "> out.txt",
    "\tls",
    "echo $",
    'echo "costs 5$" a$ $/',
]


@pytest.mark.parametrize("line", ALLOWED)
def test_harmless_lines_are_allowed(line: str) -> None:
    decision = decide(line)
    assert decision.action == "allow", decision
    assert decision.unknown is False


@pytest.mark.parametrize("line", ["", "   ", "\t", "\n"])
def test_empty_line_is_allowed(line: str) -> None:
    decision = decide(line)
    assert decision == Decision("allow", None, "empty line")


@pytest.mark.parametrize("line", ["# rm -rf x", "   # rm -rf /", "# a\n# b"])
def test_comment_only_line_runs_nothing(line: str) -> None:
    decision = decide(line)
    assert decision.action == "allow"
    assert "nothing runs" in decision.reason
    assert parse_command_line(line) == shell.ParsedLine((), None)


# ------------------------------------------------------------------------------- review


@pytest.mark.parametrize(
    "line",
    ["shutdown now", "sudo shutdown now", "/sbin/reboot", "ls; sudo reboot", "sudo -i reboot"],
)
def test_power_commands_go_to_review_with_the_rules_settings(line: str) -> None:
    decision = decide(line)
    assert decision.action == "review"
    assert decision.rule == "power"
    assert decision.unknown is False
    assert decision.approvers == ("sre-leads",)
    assert decision.approvals == 2
    assert decision.timeout == 600
    assert decision.reason_required is True


def test_deny_beats_review_in_one_line() -> None:
    decision = decide("sudo reboot; rm -rf x")
    assert decision.action == "deny"
    assert decision.rule == "no-recursive-rm"


# ------------------------------------------------------------------------------ unknown

UNKNOWN = [
    # program names computed at run time
    "$CMD -rf x",
    "${CMD} -rf x",
    '"$CMD" -rf x',
    "$(echo rm) -rf x",
    "`echo rm` -rf x",
    "sudo $CMD -rf x",
    "env $CMD x",
    "/bin/r? -rf x",
    "/bin/r[m] -rf x",
    "$EMPTY rm -rf x",
    # commands assembled from strings or files
    'eval "rm -rf x"',
    "eval ls",
    "source evil.sh",
    ". ./evil.sh",
    "builtin source evil.sh",
    "alias ls='rm -rf x'",
    "fc -s",
    "hash -p /bin/rm ls",
    'sh -c "$X"',
    "bash -c",
    "echo 'rm -rf x' | sh",
    "curl -s https://example.com/install | bash",
    "bash < script.sh",
    "sh <<< 'rm -rf x'",
    "cat <<EOF | sh",
    "fish -c 'rm -rf x'",
    "env -S 'rm -rf x'",
    "BASH_ENV=./evil.sh bash -c ls",
    "LD_PRELOAD=./evil.so ls",
    'export PS1="\\$(whoami)"',
    "PS1='`date` $ '",
    "declare -n ref=PROMPT_COMMAND",
    "export $X",
    "PROMPT_COMMAND=$X",
    # history expansion re-runs earlier commands
    "!!",
    "!rm",
    "sudo !!",
    "^ls^rm",
    # arguments only known at run time where a rule looks at arguments
    "rm $FLAGS x",
    "rm -- $f",
    "rm *.log",
    "rm -[r] x",
    'for f in *; do rm "$f"; done',
    "ls | xargs rm",
    "find . | xargs -I{} rm {}",
    "find . -exec rm {} \\;",
    "bash -c 'rm \"$1\"' _ -rf",
    # cannot parse, or bashlex cannot see inside
    "rm -rf 'x",
    'rm -rf "x',
    "echo $(rm -rf x",
    "ls |",
    "ls &&",
    "echo ${X:-$(rm -rf x)}",
    # arithmetic and [[ ]] parse now (see test_arithmetic_and_double_brackets_parse), but
    # reading a variable there is unknown: bash evaluates its value, and `a[$(cmd)]` runs cmd
    "echo $((x + 2))",
    "[[ $n -eq 1 ]] && rm x",
    "case x in a) ls;; esac",
    "coproc rm x",
    "x=(a b)",
    # bashlex drops what follows a newline inside a substitution
    "echo $(ls\nrm -rf x)",
    "echo `ls\nrm -rf x`",
    "cat <(ls\nrm -rf x)",
    "echo $(X=$(ls\nrm -rf x) true)",
    # bashlex 0.18 loops forever on these (guarded)
    "echo '${x'y",
    "echo -'${\n'",
    "cat <<EOF\n$(rm -rf x)\nEOF",
    "cat <<'EOF'\nhello\nEOF",
    # control and invisible characters
    "ls\x1b[2J",
    "ls\rrm -rf x",
    "ls\x00",
    "r\u200bm -rf x",
    "ls \u202e",
    # wrappers with options the broker does not know
    "sudo --frobnicate rm x",
    "timeout --frobnicate 5 ls",
    # too long or nested too deeply
    "ls " + "a" * (shell.MAX_LINE + 1),
    "sudo " * (shell.MAX_DEPTH + 4) + "ls",
    "(" * 3000 + "ls" + ")" * 3000,
    "echo " + "{a,b}" * 12,
]


@pytest.mark.parametrize("line", UNKNOWN)
def test_lines_that_cannot_be_classified_are_unknown(line: str) -> None:
    decision = decide(line)
    assert decision.action == "review", decision
    assert decision.unknown is True
    assert decision.rule is None
    assert decision.reason.startswith("cannot tell")


def test_arithmetic_and_double_brackets_parse() -> None:
    """Once unknown because bashlex could not parse them; now judged exactly."""
    for line in ("echo $((1 + 2))", "[[ -f x ]] && rm x"):
        decision = decide(line)
        assert decision.action == "allow", decision
        assert decision.unknown is False
    assert decide("[[ -f x ]] && rm -rf x").action == "deny"
    assert [c.program for c in parse_command_line("[[ -f x ]] && rm x").commands] == ["rm"]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("$CMD -rf x", "program name `$CMD` is only known at run time"),
        ('eval "rm -rf x"', "`eval`"),
        ("rm -rf 'x", "unterminated quote"),
        ("ls\x1b", "control character U+001B"),
        ("source evil.sh", "`source`"),
        ("!!", "history expansion"),
        ("rm $FLAGS x", "`$FLAGS` is only known at run time"),
        ("echo 'rm -rf x' | sh", "reads the commands it runs from its input"),
    ],
)
def test_unknown_reason_says_why(line: str, why: str) -> None:
    assert why in decide(line).reason


def test_on_unknown_deny_denies_unknown_lines() -> None:
    strict = GUARDRAILS.model_copy(update={"on_unknown": "deny"})
    for line in ("$CMD -rf x", 'eval "rm -rf x"', "rm -rf 'x", "ls\x1b", "source evil.sh"):
        decision = decide(line, strict)
        assert decision.action == "deny", line
        assert decision.unknown is True


def test_on_unknown_allow_is_honoured() -> None:
    lenient = GUARDRAILS.model_copy(update={"on_unknown": "allow"})
    decision = decide("source ./env.sh", lenient)
    assert decision.action == "allow"
    assert decision.unknown is True


def test_known_deny_in_an_unknown_line_still_denies() -> None:
    """What is known can make an unknown line stricter, never more lenient."""
    decision = decide("rm -rf x; $CMD")
    assert decision.action == "deny"
    assert decision.rule == "no-recursive-rm"
    decision = decide("ls; $CMD")
    assert decision.action == "review"
    assert decision.unknown is True


def test_runtime_argument_that_cannot_match_is_not_unknown() -> None:
    assert decide('rm "x$Y"').action == "allow"  # starts with x: never -r*, -f*, --recursive
    assert decide("rm ./*.log").action == "allow"  # starts with ./
    assert decide("ls $FLAGS").action == "allow"  # no rule looks at ls
    # a literal match decides before a run-time argument is considered
    assert decide("rm -rf $X").action == "deny"


# ------------------------------------------------------------------- decision details


def test_decision_carries_rule_name_and_matched_text() -> None:
    decision = decide("ls -la && sudo rm -rf /tmp/x | cat")
    assert decision.action == "deny"
    assert decision.rule == "no-recursive-rm"
    assert decision.matched == "rm -rf /tmp/x"
    assert decision.reason == "rule no-recursive-rm matched `rm -rf /tmp/x`"
    assert decision.approvers == ()
    assert decision.timeout == 900


def test_matched_text_is_the_original_spelling() -> None:
    assert decide("\\rm -rf x").matched == "\\rm -rf x"
    assert decide("sh -c 'cd /; rm -rf x'").matched == "rm -rf x"


def test_unnamed_rule_is_reported_by_position() -> None:
    policy = Policy(
        rules=[Rule(action="allow", program=["ls"]), Rule(action="deny", program=["rm"])]
    )
    decision = decide("rm x", policy)
    assert decision.action == "deny"
    assert decision.rule == "rule #2"
    assert decision.reason == "rule #2 matched `rm x`"


def test_default_applies_when_no_rule_matches() -> None:
    decision = decide("ls -la")
    assert decision == Decision("allow", None, "no rule matched `ls -la`; default allow")
    strict = GUARDRAILS.model_copy(update={"default": "deny"})
    decision = decide("ls -la", strict)
    assert decision.action == "deny"
    assert decision.rule is None
    assert decision.unknown is False


def test_first_matching_rule_wins() -> None:
    policy = Policy(
        rules=[
            Rule(name="tmp-ok", action="allow", program=["rm"], args=["/tmp/*"]),
            Rule(name="no-rm", action="deny", program=["rm"]),
        ]
    )
    assert decide("rm -rf /tmp/x", policy).rule == "tmp-ok"
    assert decide("rm -rf /tmp/x", policy).action == "allow"
    assert decide("rm /etc/x", policy).rule == "no-rm"


def test_program_patterns_match_name_and_full_path() -> None:
    policy = Policy(
        rules=[
            Rule(name="usr-bin", action="deny", program=["/usr/bin/*"]),
            Rule(name="pythons", action="review", program=["python*"]),
        ]
    )
    assert decide("/usr/bin/id", policy).rule == "usr-bin"
    assert decide("id", policy).action == "allow"
    assert decide("python3 -c 'print(1)'", policy).rule == "pythons"
    assert decide("/opt/py/bin/python3.11 x.py", policy).rule == "pythons"


def test_program_only_rule_matches_any_arguments() -> None:
    assert decide("shutdown").rule == "power"
    assert decide("shutdown -h now").rule == "power"


def test_args_without_program_matches_any_program() -> None:
    policy = Policy(rules=[Rule(name="no-force", action="deny", args=["--force", "-f"])])
    assert decide("git push --force", policy).action == "deny"
    assert decide("docker rm -f c1", policy).action == "deny"
    assert decide("git push", policy).action == "allow"


def test_catch_all_rule_matches_every_command() -> None:
    policy = Policy(
        default="allow",
        rules=[
            Rule(name="readers", action="allow", program=["ls", "cat", "grep"]),
            Rule(name="everything-else", action="deny"),
        ],
    )
    assert decide("ls -la", policy).action == "allow"
    assert decide("cat x | grep y", policy).action == "allow"
    decision = decide("ls; vi /etc/hosts", policy)
    assert decision.action == "deny"
    assert decision.rule == "everything-else"
    assert decision.matched == "vi /etc/hosts"
    assert decide("sudo ls", policy).rule == "everything-else"  # the wrapper is judged too
    assert decide("x=1", policy).rule == "everything-else"  # nothing runs, but the rule says all


def test_sql_only_rules_never_match_shell_commands() -> None:
    policy = Policy(
        rules=[
            Rule(name="no-drop", action="deny", statement=["DROP"]),
            Rule(name="tables", action="deny", tables=["users"]),
            Rule(name="unbounded", action="deny", without_where=False),
        ]
    )
    for line in ("rm -rf x", "DROP TABLE users", "psql -c 'DROP TABLE users'", "x=1"):
        decision = decide(line, policy)
        assert decision.action == "allow", line
        assert decision.rule is None


def test_rule_on_a_wrapper_still_matches() -> None:
    policy = Policy(rules=[Rule(name="no-sudo", action="deny", program=["sudo"])])
    decision = decide("sudo ls", policy)
    assert decision.action == "deny"
    assert decision.rule == "no-sudo"
    assert decision.matched == "sudo ls"
    policy = Policy(rules=[Rule(name="no-root", action="review", program=["sudo"], args=["root"])])
    assert decide("sudo -u root ls", policy).action == "review"
    assert decide("sudo ls", policy).action == "allow"


# ------------------------------------------------------------------------- regex rules


def test_regex_is_a_fallback_on_the_whole_line() -> None:
    policy = Policy(rules=[Rule(name="shadow", action="deny", regex=r"/etc/shadow\b")])
    decision = decide("cat /etc/shadow", policy)
    assert decision.action == "deny"
    assert decision.rule == "shadow"
    assert decision.matched == "/etc/shadow"
    assert decide("ls /etc | grep shadow", policy).action == "allow"
    # unknown lines are still checked against regex-only rules, which can only make them stricter
    decision = decide("eval 'cat /etc/shadow'", policy)
    assert decision.action == "deny"
    assert decision.rule == "shadow"
    # ...and redirect-only lines, where no program runs
    assert decide("> /etc/shadow", policy).action == "deny"


def test_regex_with_program_needs_both() -> None:
    policy = Policy(
        rules=[
            Rule(
                name="prod-kubectl",
                action="review",
                program=["kubectl"],
                regex=r"--context[= ]prod",
            )
        ]
    )
    assert decide("kubectl --context prod delete pod x", policy).action == "review"
    assert decide("kubectl --context dev delete pod x", policy).action == "allow"
    assert decide("echo --context prod", policy).action == "allow"


def test_regex_allow_cannot_relax_an_unknown_line() -> None:
    policy = Policy(on_unknown="review", rules=[Rule(action="allow", regex="^ls")])
    decision = decide("ls; eval $X", policy)
    assert decision.action == "review"
    assert decision.unknown is True


# -------------------------------------------------------------------------- fail closed


def test_exception_during_evaluation_denies(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(line: str) -> Any:
        raise RuntimeError("parser exploded")

    monkeypatch.setattr(shell, "parse_command_line", explode)
    decision = decide("ls")
    assert decision.action == "deny"
    assert decision.rule is None
    assert decision.reason == "policy error: RuntimeError: parser exploded"


def test_exception_in_bashlex_is_unknown_not_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(text: str) -> Any:
        raise IndexError("bashlex bug")

    monkeypatch.setattr(shell.bashlex, "parse", explode)
    decision = decide("ls")
    assert decision.action == "review"
    assert decision.unknown is True


def test_bad_policy_object_denies() -> None:
    decision = decide_shell(None, "ls")  # type: ignore[arg-type]
    assert decision.action == "deny"
    assert decision.reason.startswith("policy error:")


# ------------------------------------------------------------------------------ parsing


def test_parse_simple_command() -> None:
    parsed = parse_command_line("FOO=1 /bin/rm -rf 'a b' \"c\"")
    assert parsed.unknown is None
    assert parsed.commands == (
        SimpleCommand("/bin/rm", ("-rf", "a b", "c"), "/bin/rm -rf 'a b' \"c\""),
    )
    assert parsed.commands[0].name == "rm"


@pytest.mark.parametrize(
    ("program", "name"),
    [("/bin/rm", "rm"), ("\\rm", "rm"), ("rm", "rm"), ("./bin/tool", "tool"), ("", "")],
)
def test_simple_command_name(program: str, name: str) -> None:
    assert SimpleCommand(program, (), program).name == name


def test_parse_splits_every_part_in_order() -> None:
    parsed = parse_command_line("a 1 | b 2 && { c; (d); } || e $(f) `g` <(h) &")
    assert parsed.unknown is None
    assert sorted(c.program for c in parsed.commands) == list("abcdefgh")


def test_parse_sees_wrapper_and_wrapped() -> None:
    parsed = parse_command_line("sudo -u root env A=1 nice -n 5 rm -rf x")
    assert [c.program for c in parsed.commands] == ["sudo", "env", "nice", "rm"]
    assert parsed.commands[-1].args == ("-rf", "x")
    assert parsed.commands[-1].text == "rm -rf x"


def test_parse_sh_c_string_recursively() -> None:
    parsed = parse_command_line("bash -lc 'cd /srv && make clean'")
    assert [c.program for c in parsed.commands] == ["bash", "cd", "make"]
    assert parsed.commands[-1].text == "make clean"


def test_parse_records_runtime_arguments() -> None:
    (command,) = parse_command_line('rm -f "$DIR"/x *.log y').commands
    assert command.args == ("-f", "$DIR/x", "*.log", "y")
    assert command.runtime == (None, "*/x", "*.log", None)
    (command,) = parse_command_line("rm -f x").commands
    assert command.runtime == ()


def test_parse_partial_result_when_unknown() -> None:
    parsed = parse_command_line("ls; $CMD")
    assert [c.program for c in parsed.commands] == ["ls"]
    assert parsed.unknown is not None


def test_brace_expansion() -> None:
    (command,) = parse_command_line("echo a{b,c{d,e}}f {1..3} {x..z} '{a,b}' {a}").commands
    assert command.args == ("abf", "acdf", "acef", "1", "2", "3", "x", "y", "z", "{a,b}", "{a}")


def test_ansi_c_quoting_is_decoded() -> None:
    (command,) = parse_command_line("printf $'a\\tb\\x41\\101\\u00e9'").commands
    assert command.args == ("a\tbAAé",)


# -------------------------------------------------------------------------- combine()


def test_combine_strongest_first_wins() -> None:
    allow = Decision("allow", None, "a")
    review1 = Decision("review", "r1", "r1")
    review2 = Decision("review", "r2", "r2")
    deny = Decision("deny", "d", "d")
    assert combine([allow, review1, review2]) is review1
    assert combine([review2, deny, review1]) is deny
    assert combine([allow]) is allow
    with pytest.raises(ValueError):
        combine([])


# ---------------------------------------------------------------- the documented policy


def _doc_policies() -> dict[str, Policy]:
    text = (REPO / "docs" / "policy.md").read_text()
    policies: dict[str, Policy] = {}
    for block in re.findall(r"```toml\n(.*?)```", text, flags=re.S):
        data = tomllib.loads(block)
        for name, raw in data.get("policies", {}).items():
            policies[name] = Policy.model_validate(raw)
    return policies


def test_documented_policies_load_and_behave_as_described() -> None:
    policies = _doc_policies()
    guard = policies["shell-guardrails"]
    assert decide("sudo rm -rf /var/lib/app", guard).action == "deny"
    for line in ("rm -r x", "rm -vr x", "rm -R x", "rm -fv x", "rm --rec x", "rm --force x"):
        assert decide(line, guard).action == "deny", line
    for line in ("rm x", "rm -v x", "rm -i x", "rm --verbose x", "rm --preserve-root x"):
        assert decide(line, guard).action == "allow", line
    assert decide("ls -la", guard).action == "allow"
    assert decide("systemctl restart nginx", guard).action == "review"
    assert decide("systemctl status nginx", guard).action == "allow"
    assert decide("python3 -c 'import os'", guard).action == "review"
    assert decide("cat /etc/shadow", guard).action == "deny"
    assert decide("$CMD", guard).action == "review"
    allow_list = policies["read-only-shell"]
    assert decide("ls -la | grep x", allow_list).action == "allow"
    assert decide("tail -f /var/log/syslog", allow_list).action == "allow"
    assert decide("vi /etc/hosts", allow_list).action == "deny"
    assert decide("$CMD", allow_list).action == "deny"


@pytest.mark.parametrize(
    "line",
    [
        "shopt -u interactive_comments",
        "shopt -uo interactive-comments",
        "set +o interactive-comments",
        "shopt -u $OPTION",
    ],
)
def test_turning_comments_off_is_unknown(line: str) -> None:
    """After it, `ls #; rm -rf /` would run the rm that the broker reads as a comment."""
    policy = Policy(default="allow", on_unknown="deny")
    decision = decide_shell(policy, line)
    assert decision.action == "deny" and decision.unknown
