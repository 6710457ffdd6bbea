"""Embedded defaults for `hoop-broker serve --dev` with no config file: a demo that runs anywhere."""

from __future__ import annotations

import os
from pathlib import Path

DEV_CONFIG = """
[broker]
listen = "127.0.0.1:2222"

[dev]
listen = "127.0.0.1:2280"

[dev.users.alice]
groups = ["engineers", "dba"]

[dev.users.bob]
groups = ["engineers", "approvers"]

[[targets]]
name = "dev-shell"
type = "local"
description = "a bash shell on the broker host (demo)"
command = ["bash", "--noprofile", "--norc", "-i"]
allowed_groups = ["engineers"]
policy = "shell-guardrails"

[policies.shell-guardrails]
default = "allow"
on_unknown = "review"

[[policies.shell-guardrails.rules]]
name = "no-recursive-delete"
action = "deny"
program = ["rm"]
args = ["-[rRf]*", "-[!-]*[rRf]*", "--r*", "--f*"]
"""


def default_dev_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hoop-broker-dev"
