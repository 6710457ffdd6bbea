"""Change windows on rules (`when = { hours = …, tz = …, outside = … }`), issue 17.

The window arithmetic is tested at fixed instants (the clock is passed in). The broker is
then tested for real: a rule that sends writes to review outside a window, with windows
placed around the present moment, so that what runs on the target shows which applied.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pexpect
import pytest

from broker.config import ChangeWindow, Policy, Rule
from broker.windows import Window, parse_hours
from tests.helpers import HOOP_BROKER, User, dev_config, free_port, start_broker


def at(text: str, tz: str = "Europe/Berlin") -> float:
    """The unix time of local TEXT (YYYY-MM-DD HH:MM) in TZ."""
    from zoneinfo import ZoneInfo

    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=ZoneInfo(tz)).timestamp()


# 2026-12-07 is a Monday; 2026-12-11 a Friday; 2026-12-12 a Saturday.
@pytest.mark.parametrize(
    ("hours", "when", "inside"),
    [
        ("Mon-Fri 08:00-18:00", "2026-12-07 08:00", True),
        ("Mon-Fri 08:00-18:00", "2026-12-07 17:59", True),
        ("Mon-Fri 08:00-18:00", "2026-12-07 18:00", False),
        ("Mon-Fri 08:00-18:00", "2026-12-07 07:59", False),
        ("Mon-Fri 08:00-18:00", "2026-12-12 10:00", False),
        ("Mon-Fri 22:00-06:00", "2026-12-11 23:30", True),  # Friday night
        ("Mon-Fri 22:00-06:00", "2026-12-12 05:59", True),  # ...into Saturday morning
        ("Mon-Fri 22:00-06:00", "2026-12-07 05:00", False),  # Sunday night is not in it
        ("Fri-Mon 00:00-24:00", "2026-12-13 12:00", True),  # wraps the week
        ("Fri-Mon 00:00-24:00", "2026-12-09 12:00", False),
        ("Sat 10:00-12:00, Mon-Fri 08:00-09:00", "2026-12-12 11:00", True),
        ("Sat 10:00-12:00, Mon-Fri 08:00-09:00", "2026-12-08 08:30", True),
        ("Sat 10:00-12:00, Mon-Fri 08:00-09:00", "2026-12-08 09:30", False),
    ],
)
def test_a_window_holds_the_hours_it_names_in_its_time_zone(
    hours: str, when: str, inside: bool
) -> None:
    assert Window.parse(hours, "Europe/Berlin").contains(at(when)) is inside


def test_the_time_zone_decides_which_hour_it_is() -> None:
    nine_in_berlin = at("2026-12-07 09:00")  # 08:00 UTC, 03:00 in New York
    assert Window.parse("Mon 09:00-10:00", "Europe/Berlin").contains(nine_in_berlin)
    assert not Window.parse("Mon 09:00-10:00", "America/New_York").contains(nine_in_berlin)
    assert Window.parse("Mon 08:00-09:00").contains(nine_in_berlin)  # UTC by default


@pytest.mark.parametrize(
    ("hours", "problem"),
    [
        ("weekdays 08:00-18:00", "expected DAYS HH:MM-HH:MM"),
        ("Mon-Fri 8-18", "expected DAYS HH:MM-HH:MM"),
        ("Mon-Fry 08:00-18:00", "unknown day 'fry'"),
        ("Mon 25:00-26:00", "not a time of day"),
        ("Mon 08:61-09:00", "not a time of day"),
        ("Mon 24:00-08:00", "not a time of day"),
        ("Mon 08:00-08:00", "is empty"),
    ],
)
def test_bad_hours_are_refused_with_what_is_wrong(hours: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_hours(hours)


def test_the_policy_in_force_keeps_only_the_rules_whose_window_holds() -> None:
    window = {"hours": "Mon-Fri 08:00-18:00", "tz": "Europe/Berlin"}
    policy = Policy(
        rules=[
            Rule(name="always", action="deny", program=["rm"]),
            Rule(name="inside", action="allow", program=["deploy"], when=ChangeWindow(**window)),
            Rule(
                name="outside",
                action="review",
                program=["deploy"],
                approvers=["sre"],
                when=ChangeWindow(**window, outside=True),
            ),
        ]
    )
    working_hours = [r.name for r in policy.at(at("2026-12-08 10:00")).rules]
    night = [r.name for r in policy.at(at("2026-12-08 23:00")).rules]
    assert working_hours == ["always", "inside"]
    assert night == ["always", "outside"]
    assert Policy(rules=[Rule(action="deny", program=["rm"])]).at(0.0).rules  # no windows


# -- the broker --------------------------------------------------------------------------


def window_around_now(inside: bool) -> str:
    """Hours (UTC) holding the present moment, or far from it."""
    now = datetime.now(UTC)
    if inside:
        return "Mon-Sun 00:00-24:00"
    later = now + timedelta(hours=6)
    other = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[(now.weekday() + 3) % 7]
    return f"{other} {later:%H}:00-{later:%H}:30"


def windows_config(tmp_path: Path, db: Path, hours: str) -> str:
    targets = f"""
[[targets]]
name = "ledger"
type = "sqlite"
path = "{db}"
allowed_groups = ["dba"]
policy = "change-window"

[policies.change-window]
default = "allow"
on_unknown = "deny"

[[policies.change-window.rules]]
name = "writes-outside-the-window-need-review"
action = "review"
statement = ["UPDATE", "DELETE", "INSERT"]
approvers = ["approvers"]
when = {{ hours = "{hours}", tz = "UTC", outside = true }}
"""
    return dev_config(tmp_path / "data", port=free_port(), dev_port=free_port(), targets=targets)


@pytest.mark.parametrize("inside", [True, False])
def test_writes_outside_the_window_wait_for_review_and_inside_it_run(
    tmp_path: Path, alice: User, inside: bool
) -> None:
    db = tmp_path / "ledger.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE entries (n int)")
    broker = start_broker(tmp_path, windows_config(tmp_path, db, window_around_now(inside)))
    try:
        assert alice.login(broker).returncode == 0
        ran = alice.run("exec", "ledger", "--no-wait", "-c", "INSERT INTO entries VALUES (1)")
        with sqlite3.connect(db) as conn:
            (rows,) = conn.execute("SELECT count(*) FROM entries").fetchone()
        if inside:
            assert ran.returncode == 0, ran.stderr
            assert rows == 1
        else:
            assert ran.returncode == 4, ran.stderr  # waits for an approver
            assert "writes-outside-the-window-need-review" in ran.stderr
            assert rows == 0
        # Reads are never held, whatever the hour.
        read = alice.run("exec", "ledger", "-c", "SELECT count(*) FROM entries", "-o", "csv")
        assert read.returncode == 0, read.stderr
    finally:
        broker.stop()


def test_a_bad_window_is_a_config_error_with_its_key_path(tmp_path: Path) -> None:
    config = windows_config(tmp_path, tmp_path / "x.db", "Mon-Fri 9-17")
    (tmp_path / "broker.toml").write_text(config)
    result = subprocess.run(
        [HOOP_BROKER, "check-config", str(tmp_path / "broker.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    out = result.stdout + result.stderr
    assert "policies.change-window.rules" in out and "expected DAYS HH:MM-HH:MM" in out, out
    bad_zone = windows_config(tmp_path, tmp_path / "x.db", "Mon 09:00-10:00").replace(
        'tz = "UTC"', 'tz = "Mars/Olympus"'
    )
    (tmp_path / "broker.toml").write_text(bad_zone)
    result = subprocess.run(
        [HOOP_BROKER, "check-config", str(tmp_path / "broker.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown time zone 'Mars/Olympus'" in result.stdout + result.stderr


# -- session_max -------------------------------------------------------------------------


@pytest.mark.parametrize("guard", ["screen", "strict"])
def test_a_session_is_warned_then_closed_at_the_targets_session_max(
    tmp_path: Path, alice: User, guard: str
) -> None:
    from tests.terminal_helpers import local_target, start_terminal_broker

    broker = start_terminal_broker(
        tmp_path, local_target("short", extra='session_max = "4s"', guard=guard)
    )
    try:
        assert alice.login(broker).returncode == 0
        started = time.monotonic()
        child = alice.spawn("connect", "short", timeout=20)
        # Warned at once (the limit is under a minute), around the first prompt; then closed.
        child.expect("reaches the 4s limit")
        child.expect("it is closed")
        child.expect(pexpect.EOF)
        assert time.monotonic() - started < 15
        child.close()
        assert child.exitstatus != 0
        events = broker.audit_events("session.limit")
        assert len(events) == 1 and events[0]["details"]["session_max"] == 4
        (end,) = [
            e for e in broker.audit_events("session.end") if e["session"] == events[0]["session"]
        ]
        assert end["outcome"] == "failure"
    finally:
        broker.stop()
