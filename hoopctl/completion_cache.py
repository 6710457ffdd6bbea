"""Names and ids for shell completion, from a local cache the listings refresh.

A TAB must answer at once, without the network: `hoopctl targets`, `sessions` and
`approvals`/`requests` remember what they listed, per broker, in
``$XDG_CACHE_HOME/hoopctl/completion.json`` (mode 0600), and completion reads only that
file. What was never listed is not offered; a stale name is harmless (the broker decides).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hoopctl.paths import write_private

KINDS = ("targets", "sessions", "requests")
# The newest ids first, at most this many per kind and broker: enough to complete what
# people reach for, small enough to read on every TAB.
MAX_ENTRIES = 500


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hoopctl" / "completion.json"


def _load() -> dict[str, Any]:
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember(broker: str, kind: str, values: Iterable[Any], *, replace: bool) -> None:
    """Note VALUES (newest first) as KIND for BROKER. REPLACE: they are the whole list (as
    `targets` gives); otherwise they go before what was known (a filtered listing). Never
    fails the command that listed them."""
    fresh = [str(value) for value in values if value]
    try:
        data = _load()
        brokers = data.setdefault("brokers", {})
        entry = brokers.setdefault(broker, {})
        known = [] if replace else [v for v in entry.get(kind, []) if v not in set(fresh)]
        entry[kind] = (fresh + known)[:MAX_ENTRIES]
        entry["updated"] = time.time()
        path = cache_file()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, json.dumps(data))
    except OSError:
        pass


def recall(broker: str, kind: str, prefix: str = "") -> list[str]:
    entry = _load().get("brokers", {}).get(broker, {})
    values = entry.get(kind, []) if isinstance(entry, dict) else []
    return [v for v in values if isinstance(v, str) and v.startswith(prefix)]
