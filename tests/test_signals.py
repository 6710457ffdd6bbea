"""Insider-threat signals (issue 17): baselines per user and target, the signals they raise,
`on_signal` actions, `hoopctl signals` and `hoopctl sessions --flagged`.

The baselines are tested with the clock injected (the real store and audit log, a clock the
test moves), so hours and windows are exact. Then a real broker: a user refused three times
is locked out of the target (a file an allowed command would make is not made); a statement
that reads far more than usual makes the rest of the SQL session wait for approval (a row
a DELETE would remove is still there); auditors list the signals and the flagged sessions.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pexpect
import pytest

from broker.audit.events import AuditLog
from broker.audit.sinks.formats import to_ecs
from broker.config import Policy, Rule, SignalsSection
from broker.policy.shell import decide_shell
from broker.signals import SignalWatch, p95
from broker.store import Store
from tests.fixtures import approvals
from tests.fixtures.approvals import AccountsDb, World, accounts_db, approvals_world
from tests.helpers import BrokerProcess
from tests.test_approvals_helpers import shell_target

# -- the baselines, clock injected -----------------------------------------------------------


class Clock:
    def __init__(self, start: str) -> None:
        self.now = datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now

    def at(self, when: str) -> None:
        self.now = datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()


class Host:
    def __init__(self, store: Store, audit: AuditLog) -> None:
        self.store, self.audit = store, audit


@pytest.fixture
async def watch(tmp_path: Path) -> AsyncIterator[tuple[SignalWatch, Clock, Store]]:
    store = await Store.open(tmp_path)
    audit = AuditLog(store, stdout=False)
    clock = Clock("2026-12-01T09:00:00")
    signals = SignalWatch(Host(store, audit), SignalsSection(), clock)
    await signals.create_tables()
    yield signals, clock, store
    await store.close()


WHO = {"user": "alice", "groups": ["dba"], "target": "pg"}


async def sessions_at(signals: SignalWatch, clock: Clock, days: range, hour: int) -> None:
    for day in days:
        clock.at(f"2026-11-{day:02d}T{hour:02d}:15:00")
        await signals.session_started(**WHO, session=f"s-{day}")
        await signals.ran(**WHO, session=f"s-{day}", kind="program", values=["ls", "cat"])
        await signals.session_ended(user="alice", target="pg", session=f"s-{day}", seconds=600)


async def test_a_new_users_first_sessions_raise_nothing(watch) -> None:
    signals, clock, _ = watch
    await signals.session_started(**WHO, session="s-1")
    assert await signals.ran(**WHO, session="s-1", kind="program", values=["nc", "ls"]) == []
    clock.at("2026-12-01T03:00:00")
    assert await signals.session_started(**WHO, session="s-2") == []


async def test_a_program_never_run_before_is_a_first_time_signal(watch) -> None:
    signals, clock, store = watch
    await sessions_at(signals, clock, range(20, 26), 9)
    clock.at("2026-12-01T09:30:00")
    await signals.session_started(**WHO, session="now")
    assert await signals.ran(**WHO, session="now", kind="program", values=["cat", "ls"]) == []
    (fired,) = await signals.ran(**WHO, session="now", kind="program", values=["ls", "nc"])
    assert fired.name == "first-time" and fired.details["values"] == ["nc"]
    # Once seen, it is no longer new; another user's programs are theirs.
    assert await signals.ran(**WHO, session="now", kind="program", values=["nc"]) == []
    (event,) = await store.audit_events("signal.first-time")
    assert event["actor"] == "alice" and event["session"] == "now"
    assert "nc" in event["reason"]


async def test_a_session_outside_the_usual_hours_is_an_off_hours_signal(watch) -> None:
    signals, clock, _ = watch
    await sessions_at(signals, clock, range(20, 26), 9)
    clock.at("2026-12-01T10:05:00")  # next to 9: usual
    assert await signals.session_started(**WHO, session="day") == []
    clock.at("2026-12-02T03:10:00")
    (fired,) = await signals.session_started(**WHO, session="night")
    assert fired.name == "off-hours" and fired.details["hour"] == 3
    # Thirty days later the old sessions have left the baseline: nothing to compare with.
    clock.at("2027-01-10T03:10:00")
    assert await signals.session_started(**WHO, session="later") == []


async def test_a_read_far_over_the_usual_p95_is_a_volume_spike(watch) -> None:
    signals, clock, _ = watch
    for n in range(20):
        clock.now += 60
        assert await signals.rows_read(**WHO, session="s", rows=5 + n % 6) == []
    # p95 of 5..10 is 10; ten times that is 100. (A baseline is read again each minute.)
    clock.now += 61
    assert await signals.rows_read(**WHO, session="s", rows=100) == []
    (fired,) = await signals.rows_read(**WHO, session="s", rows=101)
    assert fired.name == "volume-spike" and fired.details["p95"] == 10
    assert p95([1, 2, 3, 4, 100]) == 100 and p95(list(range(1, 101))) == 95


async def test_three_denials_in_ten_minutes_are_said_once_per_window(watch) -> None:
    signals, clock, _ = watch
    assert await signals.denied(**WHO, session="a") == []
    clock.now += 300
    assert await signals.denied(**WHO, session="a") == []
    clock.now += 200
    (fired,) = await signals.denied(**WHO, session="b")
    assert fired.name == "repeated-denials" and fired.details["denials"] == 3
    clock.now += 10
    assert await signals.denied(**WHO, session="b") == []  # said already in this window
    clock.now += 3600
    assert await signals.denied(**WHO, session="c") == []  # the old ones are out of it


async def test_the_usual_length_and_locks_follow_the_clock(watch) -> None:
    signals, clock, _ = watch
    assert await signals.usual_length("alice", "pg") is None
    await sessions_at(signals, clock, range(20, 26), 9)
    assert await signals.usual_length("alice", "pg") == 1200  # 2 x p95 of 600 s
    signal = await signals.fire("repeated-denials", **WHO, session=None, details={})
    until = await signals.lock("alice", "pg", 900, signal)
    assert await signals.locked_until("alice", "pg") == (until, "repeated-denials")
    assert await signals.locked_until("alice", "other") is None
    clock.now += 901
    assert await signals.locked_until("alice", "pg") is None


def test_an_escalated_policy_reviews_what_it_allowed_and_still_denies_what_it_denied() -> None:
    policy = Policy(
        default="allow",
        rules=[
            Rule(name="no-rm", action="deny", program=["rm"]),
            Rule(action="allow", program=["ls"]),
        ],
    )
    review = policy.escalated("review", ["leads"])
    assert decide_shell(review, "rm -rf /x").action == "deny"
    held = decide_shell(review, "ls")
    assert held.action == "review" and held.approvers == ("leads",)
    assert decide_shell(review, "echo hi").action == "review"
    deny = policy.escalated("deny", [])
    assert {decide_shell(deny, line).action for line in ("ls", "echo hi", "rm x")} == {"deny"}


def test_a_signal_is_an_ecs_alert() -> None:
    doc = to_ecs(
        {
            "type": "signal.volume-spike",
            "time": 1.0,
            "actor": "alice",
            "target": "pg",
            "outcome": "unknown",
            "details": {"signal": "volume-spike", "id": "sg-1", "rows": 5000},
        }
    )
    assert doc["event"]["kind"] == "alert"
    assert doc["event"]["category"] == ["intrusion_detection"] and doc["event"]["type"] == ["info"]
    assert doc["rule"]["name"] == "volume-spike" and doc["rule"]["uuid"] == "sg-1"
    assert doc["event"]["severity"] > 50


@pytest.mark.parametrize(
    ("on_signal", "problem"),
    [
        ('{ "volume-spkie" = "review" }', "unknown signal 'volume-spkie'"),
        ('{ "volume-spike" = "shout" }', "unknown action 'shout'"),
        ('{ "repeated-denials" = "lock:soon" }', "repeated-denials"),
    ],
)
def test_a_bad_on_signal_is_a_config_error(on_signal: str, problem: str, tmp_path: Path) -> None:
    from broker.config import parse_config
    from broker.errors import ConfigError

    text = f"""
[broker]
data_dir = "{tmp_path}"
[policies.p]
on_signal = {on_signal}
"""
    with pytest.raises(ConfigError) as raised:
        parse_config(text, base_dir=tmp_path)
    (found,) = [p for p in raised.value.problems if p.startswith("policies.p.on_signal")]
    assert problem in found


# -- the broker ------------------------------------------------------------------------------

broker, alice, bob, dave = approvals.broker, approvals.alice, approvals.bob, approvals.dave
_ = accounts_db


WATCHED = """
[audit]
auditors = ["dba-leads"]

[signals]
min_sessions = 1
min_samples = 3
volume_factor = 5

[policies.watched]
default = "allow"
on_unknown = "deny"
unknown_approvers = ["dba-leads"]  # who reviews what a signal sends to review
on_signal = { "repeated-denials" = "lock:1h", "volume-spike" = "review" }

[[policies.watched.rules]]
name = "no-rm"
action = "deny"
program = ["rm"]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, accounts_db: AccountsDb) -> Iterator[World]:
    root = tmp_path_factory.mktemp("signals")
    targets = (
        shell_target("guarded", policy="watched")
        + accounts_db.target("ledger", root, policy="watched")
        + WATCHED
    )
    with approvals_world(root, targets=targets, people=("alice", "bob", "dave")) as made:
        yield made


def signals_of(person: approvals.Person, *args: str) -> list[dict]:
    result = person.user.run("signals", "--output", "json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_repeated_denials_lock_the_user_out_of_the_target(
    broker: BrokerProcess, alice: approvals.Person, dave: approvals.Person, target_dir: Path
) -> None:
    proof = target_dir / "made-after-the-lock"
    for n in range(3):
        denied = alice.user.run("exec", "guarded", "--", "rm", f"/tmp/nothing-{n}")
        assert denied.returncode == 3, denied.stderr
    refused = alice.user.run("exec", "guarded", "--", "touch", str(proof))
    assert refused.returncode == 3, refused.stderr
    assert "locked out of guarded until" in refused.stderr
    assert "signal repeated-denials" in refused.stderr
    assert not proof.exists()
    (event,) = broker.audit_events("signal.repeated-denials")
    assert event["actor"] == "alice" and event["details"]["denials"] == 3
    actions = [
        e
        for e in broker.audit_events("signal.action")
        if e["details"]["id"] == event["details"]["id"]
    ]
    assert actions and actions[0]["details"]["action"] == "lock:1h"
    # Other targets stay open to her.
    assert alice.user.run("exec", "shell", "--", "true").returncode == 0
    listed = signals_of(dave, "--user", "alice")
    assert "repeated-denials" in [s["signal"] for s in listed]
    # The insider does not see what was noticed.
    mine = alice.user.run("signals")
    assert mine.returncode != 0 and "only auditors" in mine.stderr


def test_a_volume_spike_makes_the_rest_of_the_sql_session_wait_for_approval(
    broker: BrokerProcess,
    accounts_db: AccountsDb,
    alice: approvals.Person,
    dave: approvals.Person,
) -> None:
    victim = accounts_db.new_account()
    child = alice.user.spawn("connect", "ledger", timeout=30)
    try:
        child.expect("ledger")
        for _ in range(3):
            child.sendline("SELECT 1 AS one;")
            child.expect(r"\(1 row\)")
        child.sendline("SELECT g FROM generate_series(1, 12) AS g;")
        child.expect(r"\(12 rows\)")
        child.expect("signal volume-spike: from now on every command on ledger needs approval")
        child.sendline(f"DELETE FROM accounts WHERE id = {victim};")
        child.expect(r"waiting for approval ([0-9a-f]{10})")
        child.sendcontrol("c")
        child.expect("cancelled")
        child.sendline("\\q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert accounts_db.has(victim)
    (event,) = broker.audit_events("signal.volume-spike")
    assert event["details"]["rows"] == 12
    flagged = dave.user.run("sessions", "--flagged", "--output", "json")
    assert flagged.returncode == 0, flagged.stderr
    (row,) = [r for r in json.loads(flagged.stdout) if r["id"] == event["session"]]
    assert "volume-spike" in row["signals"]
    table = dave.user.run("sessions", "--flagged")
    assert "volume-spike" in table.stdout
    refused = alice.user.run("sessions", "--flagged")
    assert refused.returncode != 0 and "only auditors" in refused.stderr


def test_first_time_programs_and_self_approval_are_signals(
    broker: BrokerProcess, alice: approvals.Person, bob: approvals.Person, dave: approvals.Person
) -> None:
    assert alice.user.run("exec", "shell", "--", "echo", "usual").returncode == 0
    assert alice.user.run("exec", "shell", "--", "echo", "usual").returncode == 0
    assert alice.user.run("exec", "shell", "--", "uname", "-a").returncode == 0
    firsts = [
        s
        for s in signals_of(dave, "--user", "alice", "--target", "shell")
        if s["signal"] == "first-time"
    ]
    assert any(s["details"]["values"] == ["uname"] for s in firsts), firsts
    # bob asks, then tries to approve his own request.
    held = bob.user.run("exec", "shell", "--no-wait", "--", "touch", "/tmp/x-self")
    request = re.search(r"request ([0-9a-f]{10})", held.stderr)
    assert request, held.stderr
    refused = bob.user.run("approve", request.group(1))
    assert refused.returncode == 3
    (signal,) = [s for s in signals_of(dave, "--user", "bob") if s["signal"] == "self-approval"]
    assert signal["details"]["request"] == request.group(1)
    assert "tried to approve their own request" in signal["text"]
    text = dave.user.run("signals", "--since", "1h")
    assert text.returncode == 0 and "self-approval" in text.stdout


def test_a_denied_command_approved_by_another_approver_is_an_override(
    alice: approvals.Person, bob: approvals.Person, dave: approvals.Person, target_dir: Path
) -> None:
    proof = target_dir / "asked-twice"
    first = alice.user.run("exec", "shell", "--no-wait", "--", "touch", str(proof))
    denied = re.search(r"request ([0-9a-f]{10})", first.stderr)
    assert denied, first.stderr
    assert bob.user.run("approve", denied.group(1), "--deny", "-m", "no").returncode == 0
    second = alice.user.run("exec", "shell", "--no-wait", "--", "touch", str(proof))
    asked = re.search(r"request ([0-9a-f]{10})", second.stderr)
    assert asked, second.stderr
    assert dave.user.run("approve", asked.group(1)).returncode == 0
    (signal,) = [
        s
        for s in signals_of(dave, "--user", "alice")
        if s["signal"] == "approval-overridden" and s["details"]["request"] == asked.group(1)
    ]
    assert signal["details"]["denied_request"] == denied.group(1)
    assert signal["details"]["denied_by"] == "bob" and signal["details"]["approved_by"] == "dave"


TIMED = """
[signals]
min_sessions = 1
long_factor = 1.5
long_min = "2s"

[policies.timed]
default = "allow"
on_unknown = "deny"
on_signal = { "long-session" = "end" }
"""


def test_a_session_far_past_its_usual_length_is_closed(tmp_path: Path) -> None:
    targets = shell_target("timed", policy="timed") + TIMED
    with approvals_world(tmp_path, targets=targets, people=("alice",)) as made:
        alice = made.alice.user
        assert alice.run("exec", "timed", "--", "true").returncode == 0  # a short session
        child = alice.spawn("connect", "timed", timeout=30)
        try:
            child.expect(r"session (\S+) started")
            session = child.match.group(1)
            child.expect("signal long-session; this session is closed", timeout=20)
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        (event,) = made.broker.audit_events("signal.long-session")
        assert event["session"] == session and event["details"]["seconds"] >= 2
        (end,) = [e for e in made.broker.audit_events("session.end") if e["session"] == session]
        assert end["outcome"] == "failure"
