"""The audit chain's arithmetic: how an event is hashed and linked to the one before it.

The store appends events with these links and the integrity checks recompute them, so both
use this one definition; it imports nothing from the broker.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64
"""The prev_hash of the first event (or of the first after a prune checkpoint)."""
_CHAIN_FIELDS = ("seq", "prev_hash", "hash")


def canonical_json(value: Any) -> bytes:
    """The bytes that are hashed and signed: sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def chain_hash(record: dict[str, Any], seq: int, prev_hash: str) -> str:
    body = {k: v for k, v in record.items() if k not in _CHAIN_FIELDS}
    body["seq"] = seq
    body["prev_hash"] = prev_hash
    return hashlib.sha256(canonical_json(body)).hexdigest()
