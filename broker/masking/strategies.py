"""How a value is masked: ``redact``, ``partial``, ``hash``.

A new strategy is a branch of :func:`mask_value` and of :func:`_value_masker` (what a plan
masks a column's values with) here, and of _replace and _Scanner.replacements in
broker.masking.scanner (the spans detectors find); its name goes in config.Strategy and its
rank in _STRENGTH.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from hashlib import sha256

REDACTED = "[REDACTED]"
PARTIAL_KEEP = 4  # characters the "partial" strategy keeps at the end
PARTIAL_MIN = 8  # values shorter than this are masked completely by "partial"
HASH_HEX = 16  # hex digits of the HMAC kept by "hash"
# Strongest first: when several rules match one column, the strongest strategy wins.
_STRENGTH = {"redact": 0, "hash": 1, "partial": 2}


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return str(value)


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return _as_text(value).encode("utf-8", "surrogatepass")


def _partial(text: str) -> str:
    n = len(text)
    if n < PARTIAL_MIN:
        return "*" * n
    return "*" * (n - PARTIAL_KEEP) + text[n - PARTIAL_KEEP :]


def _hash(data: bytes, key: bytes) -> str:
    return "hash:" + hmac.digest(key, data, sha256).hex()[:HASH_HEX]


def mask_value(value: object, strategy: str, *, hash_key: bytes) -> object:
    """Mask one whole value. ``None`` stays ``None``; anything else becomes a ``str``.

    ``redact`` -> ``"[REDACTED]"``; ``partial`` -> ``"*"`` for every character but the last 4
    (values shorter than 8 characters are masked completely); ``hash`` -> ``"hash:"`` and the
    first 16 hex digits of HMAC-SHA256(hash_key, value). Non-text values are converted with
    ``str()`` first, bytes are hashed as they are and shown decoded as UTF-8, dicts and lists
    (JSON) are serialised with sorted keys.
    """
    if value is None:
        return None
    if strategy == "redact":
        return REDACTED
    if strategy == "partial":
        return _partial(_as_text(value))
    if strategy == "hash":
        if not hash_key:
            raise ValueError("the hash strategy needs a non-empty hash_key")
        return _hash(_as_bytes(value), hash_key)
    raise ValueError(f"unknown masking strategy {strategy!r}")


class _Hasher:
    """The hash strategy for one result set: HMAC-SHA256 with the key's inner and outer
    states computed once (RFC 2104, same output as hmac.digest), and a bounded cache."""

    __slots__ = ("cache", "inner", "outer")
    LIMIT = 65536

    def __init__(self, key: bytes) -> None:
        block = sha256(key).digest() if len(key) > 64 else key
        block = block.ljust(64, b"\0")
        self.inner = sha256(bytes(b ^ 0x36 for b in block))
        self.outer = sha256(bytes(b ^ 0x5C for b in block))
        self.cache: dict[object, str] = {}

    def digest(self, data: bytes) -> str:
        inner = self.inner.copy()
        inner.update(data)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return "hash:" + outer.hexdigest()[:HASH_HEX]

    def __call__(self, value: object) -> str:
        kind = type(value)
        if kind is not str and kind is not bytes:  # 1 == 1.0 == True: keep the cache exact
            return self.digest(_as_bytes(value))
        cached = self.cache.get(value)
        if cached is None:
            cached = self.digest(_as_bytes(value))
            if len(self.cache) >= self.LIMIT:
                self.cache.clear()
            self.cache[value] = cached
        return cached


class Constant:
    """A masking function that turns every non-None value into the same text (redact)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __call__(self, _value: object) -> object:
        return self.value


def _value_masker(strategy: str, key: bytes) -> Callable[[object], object]:
    """A function masking one non-None value with ``strategy``."""
    if strategy == "redact":
        return Constant(REDACTED)
    if strategy == "partial":
        return lambda value: _partial(_as_text(value))
    if strategy == "hash":
        return _Hasher(key)
    raise ValueError(f"unknown masking strategy {strategy!r}")
