"""Embedded defaults for `hoop-broker serve --dev` with no config file, and the demo's data.

DEV_CONFIG is the demo that runs anywhere (its data dir is filled in at start). The demo's
SQLite database, customers with made-up emails and card numbers (test numbers that pass the
Luhn check, so the value detectors find them), is written by create_demo_database(): by
`hoop-broker serve --dev` for the embedded config, and by scripts/demo.sh (`make demo`):
`python -m broker.defaults demo-db PATH`.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

DEV_CONFIG = """
[broker]
listen = "127.0.0.1:2222"
data_dir = "@DATA_DIR@"

[dev]
listen = "127.0.0.1:2280"

[dev.users.alice]
groups = ["engineers", "dba"]

[dev.users.bob]
groups = ["engineers", "approvers", "secops"]

[audit]
auditors = ["secops"]

[[targets]]
name = "dev-shell"
type = "local"
description = "bash on the broker host"
command = ["bash", "--noprofile", "--norc", "-i"]
run_as = "hoop-demo"
allowed_groups = ["engineers"]
policy = "shell-guardrails"

[[targets]]
name = "demo-db"
type = "sqlite"
description = "a SQLite demo database: customers and orders"
path = "@DATA_DIR@/demo.db"
allowed_groups = ["dba"]
policy = "sql-guardrails"

[targets.masking]
detectors = ["card", "email"]

[[targets.masking.columns]]
match = ["card_number"]
strategy = "partial"

[policies.shell-guardrails]
default = "allow"
on_unknown = "review"
unknown_approvers = ["approvers"]

[[policies.shell-guardrails.rules]]
name = "no-recursive-delete"
action = "deny"
program = ["rm"]
args = ["-[rRf]*", "-[!-]*[rRf]*", "--r*", "--f*"]

[[policies.shell-guardrails.rules]]
name = "process-control-needs-review"
action = "review"
program = ["kill", "pkill", "killall"]
approvers = ["approvers"]

[policies.sql-guardrails]
default = "allow"
on_unknown = "review"
unknown_approvers = ["approvers"]

[[policies.sql-guardrails.rules]]
name = "no-drop"
action = "deny"
statement = ["DROP", "TRUNCATE"]

[[policies.sql-guardrails.rules]]
name = "unbounded-writes-need-review"
action = "review"
statement = ["UPDATE", "DELETE"]
without_where = true
approvers = ["approvers"]
"""


def default_dev_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hoop-broker-dev"


def dev_config_text(data_dir: Path) -> str:
    """DEV_CONFIG with its data dir (and the demo database in it) filled in."""
    return DEV_CONFIG.replace("@DATA_DIR@", str(data_dir))


# Made-up people at reserved example domains. The card numbers are the networks' published
# test numbers: they pass the Luhn check (so the `card` detector finds them) and charge nothing.
DEMO_CUSTOMERS = (
    (1, "Ada Lovelace", "ada.lovelace@example.com", "4111111111111111", "GB"),
    (2, "Grace Hopper", "grace.hopper@example.org", "5555555555554444", "US"),
    (3, "Alan Turing", "alan.turing@example.net", "378282246310005", "GB"),
    (4, "Katherine Johnson", "katherine.johnson@example.com", "4012888888881881", "US"),
    (5, "Edsger Dijkstra", "edsger.dijkstra@example.org", "6011111111111117", "NL"),
    (6, "Barbara Liskov", "barbara.liskov@example.net", "5105105105105100", "US"),
    (7, "Margaret Hamilton", "margaret.hamilton@example.com", "4242424242424242", "US"),
    (8, "Tim Berners-Lee", "tim.berners-lee@example.org", "4000056655665556", "GB"),
)
# Free text holding card numbers and addresses: the value detectors mask those parts only.
DEMO_NOTES = {
    1: "prefers email to ada.l@example.com; backup card 4000 0566 5566 5556",
    2: "called support about card 5555-5555-5555-4444",
    4: "VIP since 2019",
    7: "refund sent to margaret.h@example.net",
}
DEMO_ORDERS = (
    (101, 1, "2024-03-01", 4999, "shipped"),
    (102, 2, "2024-03-02", 1250, "shipped"),
    (103, 2, "2024-03-05", 8900, "pending"),
    (104, 3, "2024-03-07", 300, "cancelled"),
    (105, 4, "2024-03-09", 15000, "shipped"),
    (106, 5, "2024-03-11", 2200, "pending"),
    (107, 7, "2024-03-12", 640, "shipped"),
    (108, 8, "2024-03-15", 9999, "pending"),
)


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return len(digits) >= 12 and total % 10 == 0


def create_demo_database(path: Path) -> bool:
    """Write the demo database at PATH unless it exists; True when it was created.

    Built beside PATH and moved into place, so a half-written file is never taken for it."""
    if path.exists():
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as db:
        db.executescript(
            """
            CREATE TABLE customers (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                email TEXT NOT NULL,
                card_number TEXT NOT NULL,
                country TEXT NOT NULL,
                note TEXT
            );
            CREATE TABLE orders (
                id INTEGER PRIMARY KEY,
                customer_id INTEGER NOT NULL REFERENCES customers(id),
                ordered_on TEXT NOT NULL,
                amount_cents INTEGER NOT NULL,
                status TEXT NOT NULL
            );
            """
        )
        db.executemany(
            "INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)",
            [(*row, DEMO_NOTES.get(row[0])) for row in DEMO_CUSTOMERS],
        )
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", DEMO_ORDERS)
    db.close()
    tmp.chmod(0o600)  # the broker's, like the rest of its data dir
    os.replace(tmp, path)
    return True


def main(argv: list[str]) -> int:
    """`python -m broker.defaults demo-db PATH`: create the demo database (scripts/demo.sh)."""
    if len(argv) != 2 or argv[0] != "demo-db":
        print("usage: python -m broker.defaults demo-db PATH", file=sys.stderr)
        return 2
    path = Path(argv[1])
    try:
        created = create_demo_database(path)
    except (OSError, sqlite3.Error) as exc:
        print(f"hoop-broker: cannot create the demo database {path}: {exc}", file=sys.stderr)
        return 1
    print(f"{'created' if created else 'kept'} the demo database {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
