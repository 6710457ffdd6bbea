"""Scanning texts with a set of detectors, fast: prefilters, then patterns and checks.

:func:`detect` finds the spans in one text, :func:`mask_text` masks them; plans use the
_Scanner of their detectors directly (per value, and per column of a batch).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from itertools import accumulate, compress
from operator import add
from typing import Any

from broker.masking.detectors import (
    _CHECKS,
    _MIN_LEN,
    AWS_SECRET_MIN,
    DETECTORS,
    SECRET_MIN_LEN,
    _accept,
    _canonical,
    _email_search,
    _pattern,
)
from broker.masking.strategies import _STRENGTH, _hash, _partial

# Prefilters: cheap necessary conditions, mostly C-level substring tests. A detector cannot
# match a text that fails its prefilter, so most values are passed over after a few string
# operations and only the detectors whose prefilter holds run their patterns:
#
#   private_key  "PRIVATE KEY" in the text
#   jwt          "ey" and "." in the text
#   aws_key      "AKIA" or "ASIA" in the text (key ids), or "ccess" or "CCESS" in a text of at
#                least AWS_SECRET_MIN characters (secret_access_key = ...)
#   iban         two ASCII capitals followed by two ASCII digits
#   email        "@" in the text
#   card         13 or more ASCII digits, and 9 characters of [0-9 ()./+-] in a row from one
#   us_ssn       9 or more digits, that run of 9, and a "-"
#   phone        9 or more digits and that run of 9
#   secret       32 characters of [A-Za-z0-9+/_-] in a row
#
# Digits, capitals and token runs are looked for in the text's "shape": its UTF-8 bytes
# translated to one class letter each (one C-level pass; multi-byte characters are never
# digits, capitals or token characters). tests/test_masking.py checks every prefilter against
# texts its detector finds.
_DIGIT_RUN = re.compile(r"\d[\d ()./+-]{8}").search
_TOKEN_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-")
# Shape: digit -> "0", capital -> "A", NUL -> NUL (it separates joined values), else ".".
_SHAPE = bytes(
    48 if 48 <= c <= 57 else 65 if 65 <= c <= 90 else 0 if c == 0 else 46 for c in range(256)
)
# Token shape: a character of a "secret" token -> "t", NUL -> NUL, else ".".
_TOKEN_SHAPE = bytes(116 if c in _TOKEN_BYTES else 0 if c == 0 else 46 for c in range(256))
_TOKEN_RUN = "t" * SECRET_MIN_LEN
# Digits and NUL kept, everything else deleted.
_NOT_DIGIT_OR_NUL = bytes(c for c in range(1, 256) if not 48 <= c <= 57)
_JWT_GATE = re.compile(r"ey[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{2,}\.").search
_PRIORITY = {name: i for i, name in enumerate(DETECTORS)}
# Detectors whose check accepts every match of their pattern: a value only one of them can
# match is masked by the pattern's own substitution, in C.
_SIMPLE = ("private_key", "email", "us_ssn")
# Batches: an email column (at least one "@" per DENSE values) is substituted as one text.
_DENSE = 4


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates: bytes decoded with surrogateescape
        return text.encode("utf-8", "surrogatepass")


def _prefilter(wanted: set[str]) -> Callable[[str], tuple[str, ...]]:
    """The prefilter of a set of detectors: text -> the detectors whose necessary conditions
    the text meets, in priority order. Written out for the set (only the conditions of its
    detectors, no flags to test per value): it runs for every text value of a result."""
    shaped = bool(wanted & {"iban", "card", "us_ssn", "phone"})
    caps = "caps and " if shaped else ""
    body = ["def prefilter(text):", "    out = ()", "    size = len(text)"]
    if shaped:
        body += [
            "    try:",
            "        shape = text.encode().translate(SHAPE).decode()",
            "    except UnicodeEncodeError:  # lone surrogates",
            "        shape = utf8(text).translate(SHAPE).decode()",
            '    caps = "A" in shape  # a capital: PRIVATE KEY, AKIA, ASIA, CCESS, IBANs',
        ]
    if "private_key" in wanted:
        body += [f'    if {caps}"PRIVATE KEY" in text:', '        out += ("private_key",)']
    if "jwt" in wanted:
        body += ['    if "ey" in text and "." in text:', '        out += ("jwt",)']
    if "aws_key" in wanted:
        body += [
            f'    if ({caps}("AKIA" in text or "ASIA" in text)) or (size >= AWS_SECRET_MIN'
            f' and ("ccess" in text or ({caps}"CCESS" in text))):',
            '        out += ("aws_key",)',
        ]
    if "iban" in wanted:
        body += ['    if caps and "AA00" in shape:', '        out += ("iban",)']
    if "email" in wanted:
        body += ['    if "@" in text:', '        out += ("email",)']
    digit_names = [n for n in ("card", "us_ssn", "phone") if n in wanted]
    if digit_names:
        least = 9 if {"us_ssn", "phone"} & wanted else 13
        body += [
            '    digits = shape.count("0")',
            f"    if digits >= {least} and DIGIT_RUN(text) is not None:",
        ]
        if "card" in wanted:
            body += ["        if digits >= 13:", '            out += ("card",)']
        if "us_ssn" in wanted:
            body += ['        if "-" in text:', '            out += ("us_ssn",)']
        if "phone" in wanted:
            body += ['        out += ("phone",)']
    if "secret" in wanted:
        body += [
            "    if size >= SECRET_MIN_LEN and TOKEN_RUN in utf8(text).translate(TOKENS).decode():",
            '        out += ("secret",)',
        ]
    body.append("    return out")
    namespace: dict[str, Any] = {
        "SHAPE": _SHAPE,
        "TOKENS": _TOKEN_SHAPE,
        "TOKEN_RUN": _TOKEN_RUN,
        "DIGIT_RUN": _DIGIT_RUN,
        "AWS_SECRET_MIN": AWS_SECRET_MIN,
        "SECRET_MIN_LEN": SECRET_MIN_LEN,
        "utf8": _utf8,
    }
    exec("\n".join(body), namespace)  # noqa: S102 (fixed text, chosen by detector names)
    return namespace["prefilter"]  # type: ignore[no-any-return]


class _Scanner:
    """The detectors of one configuration: prefilters, patterns, checks."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        wanted = set(names)
        self.min_len = min((_MIN_LEN[n] for n in names), default=0)
        self.patterns = {
            name: (_email_search if name == "email" else _pattern(name).search, _CHECKS[name])
            for name in names
        }
        self.subs = {name: _pattern(name).sub for name in names if name in _SIMPLE}
        self.ascii_subs = dict(self.subs)
        if "email" in wanted:
            self.ascii_subs["email"] = _pattern("email_ascii").sub
        self.redacted = {name: f"[REDACTED:{name}]" for name in names}
        self._private_key = "private_key" in wanted
        self._jwt = "jwt" in wanted
        self._aws = "aws_key" in wanted
        self._iban = "iban" in wanted
        self._email = "email" in wanted
        self._card = "card" in wanted
        self._ssn = "us_ssn" in wanted
        self._phone = "phone" in wanted
        self._digits = self._card or self._ssn or self._phone
        self._min_digits = 9 if self._ssn or self._phone else 13
        self._shaped = self._iban or self._digits
        self._secret = "secret" in wanted
        self.prefilter: Callable[[str], tuple[str, ...]] = _prefilter(wanted)

    def spans(self, text: str, candidates: Sequence[str]) -> list[tuple[int, int, str]]:
        """Validated spans of the candidate detectors; overlapping spans are merged."""
        found: list[tuple[int, int, str]] = []
        for name in candidates:
            search, check = self.patterns[name]
            pos = 0
            while True:
                m = search(text, pos)
                if m is None:
                    break
                span = check(text, m)
                start = m.start()
                if span is None:
                    pos = start + 1
                    continue
                found.append((span[0], span[1], name))
                pos = span[1] if span[1] > start else start + 1
        if len(found) > 1:
            found.sort(key=lambda s: (s[0], _PRIORITY[s[2]]))
            merged = [found[0]]
            for start, end, name in found[1:]:
                last_start, last_end, last_name = merged[-1]
                if start < last_end:  # overlap: mask the union (fail closed)
                    if _PRIORITY[name] < _PRIORITY[last_name] and start == last_start:
                        last_name = name
                    merged[-1] = (last_start, max(end, last_end), last_name)
                else:
                    merged.append((start, end, name))
            found = merged
        return found

    def detect(self, text: str) -> list[tuple[int, int, str]]:
        if len(text) < self.min_len:
            return []
        candidates = self.prefilter(text)
        return self.spans(text, candidates) if candidates else []

    def mask(
        self,
        text: str,
        strategy: str,
        key: bytes,
        repl: dict[str, Any] | None = None,
        candidates: Sequence[str] | None = None,
    ) -> str | None:
        """``text`` with every detected span masked, or None when nothing was found. With
        ``repl`` (from :meth:`replacements`), a value only one simple detector may match is
        masked by that pattern's substitution (the same result, in C). ``candidates``: the
        prefilter's answer, when known."""
        if candidates is None:
            candidates = self.prefilter(text)
        if not candidates:
            return None
        if repl is not None and len(candidates) == 1:
            name = candidates[0]
            if name in repl and self.patterns[name][1] is _accept:  # every match counts
                subs = self.ascii_subs if text.isascii() else self.subs
                masked = subs[name](repl[name], text)
                return None if masked is text or masked == text else masked
        spans = self.spans(text, candidates)
        return _replace(text, spans, strategy, key) if spans else None

    def replacements(self, strategy: str, key: bytes) -> dict[str, Any]:
        """Per simple detector, the replacement for ``Pattern.sub`` that masks a match the way
        :func:`_replace` does."""
        if strategy == "redact":
            return {name: self.redacted[name] for name in self.subs}
        if strategy == "partial":
            return {name: lambda m: _partial(m.group()) for name in self.subs}

        def hashed(m: re.Match[str]) -> str:
            return _hash(m.group().encode("utf-8", "surrogateescape"), key)

        return {name: hashed for name in self.subs}

    def column(self, texts: list[str], joined: str) -> tuple[set[int], bool]:
        """For text values joined with NUL (which no pattern matches): the indexes of the
        values some detector other than email may match (or that email and another one may),
        and whether email is dense enough to be substituted in the joined text at once. Every
        value not listed can only be matched by email, if at all."""
        count = len(texts)
        full: set[int] = set()
        ends: list[int] = []
        ascii_only = joined.isascii()  # then byte and character positions agree

        def index(pos: int) -> int:
            """The value at ``pos`` in ``joined``."""
            if not ends:
                ends.extend(map(add, accumulate(sizes), range(count)))
            return bisect_right(ends, pos)

        def where(text: str, literal: str) -> None:
            """Add the values ``literal`` occurs in (``text`` is aligned with ``joined``)."""
            pos = text.find(literal)
            while pos >= 0:
                k = index(pos)
                full.add(k)
                if k + 1 >= count:
                    return
                pos = text.find(literal, ends[k] + 1)

        def where_shaped(shape: str, literal: str) -> None:
            if ascii_only:
                where(shape, literal)
            else:
                full.update(k for k, part in enumerate(shape.split("\x00")) if literal in part)

        data = _utf8(joined)
        sizes = list(map(len, texts))
        longest = max(sizes)  # no detector finds more than fits in the longest value
        if self._private_key or self._aws or self._iban:
            shape = data.translate(_SHAPE).decode()
            if "A" in shape and "AAAA" in shape:  # upper-case literals: 4 capitals in a row
                if self._private_key and longest >= _MIN_LEN["private_key"]:
                    where(joined, "PRIVATE KEY")
                if self._aws and longest >= _MIN_LEN["aws_key"]:
                    for literal in ("AKIA", "ASIA", "CCESS"):
                        where(joined, literal)
            if self._iban and longest >= _MIN_LEN["iban"] and "AA00" in shape:
                where_shaped(shape, "AA00")
        if self._aws and longest >= AWS_SECRET_MIN:
            where(joined, "ccess")
        if self._jwt and longest >= _MIN_LEN["jwt"] and "." in joined and "ey" in joined:
            m = _JWT_GATE(joined)
            while m is not None:
                k = index(m.start())
                full.add(k)
                m = _JWT_GATE(joined, ends[k] + 1) if k + 1 < count else None
        if self._digits:
            digits = list(map(len, data.translate(None, _NOT_DIGIT_OR_NUL).split(b"\x00")))
            least = self._min_digits
            if max(digits) >= least:
                full.update(compress(range(count), map(least.__le__, digits)))
        if self._secret and longest >= SECRET_MIN_LEN:
            # (one value at a time: "t" * 32 is a slow needle in a text of many short runs)
            least = SECRET_MIN_LEN
            for k in compress(range(count), map(least.__le__, sizes)):
                if _TOKEN_RUN in _utf8(texts[k]).translate(_TOKEN_SHAPE).decode():
                    full.add(k)
        dense = False
        if self._email:
            ats = joined.count("@")
            if ats and ats * _DENSE >= count:
                dense = True
            elif ats:
                where(joined, "@")
        return full, dense


@lru_cache(maxsize=256)
def _scanner(names: tuple[str, ...]) -> _Scanner:
    return _Scanner(names)


def detect(text: str, detectors: Iterable[str]) -> list[tuple[int, int, str]]:
    """Spans ``(start, end, detector)`` of sensitive values in ``text``, in text order."""
    return _scanner(_canonical(detectors)).detect(text)


def _replace(text: str, spans: list[tuple[int, int, str]], strategy: str, key: bytes) -> str:
    parts: list[str] = []
    last = 0
    for start, end, name in spans:
        parts.append(text[last:start])
        piece = text[start:end]
        if strategy == "redact":
            parts.append(f"[REDACTED:{name}]")
        elif strategy == "partial":
            parts.append(_partial(piece))
        else:
            parts.append(_hash(piece.encode("utf-8", "surrogateescape"), key))
        last = end
    parts.append(text[last:])
    return "".join(parts)


def mask_text(
    text: str, detectors: Iterable[str], strategy: str = "redact", *, hash_key: bytes = b""
) -> str:
    """``text`` with every detected span masked (``[REDACTED:card]``, ``****1234``, ``hash:…``)."""
    if strategy not in _STRENGTH:
        raise ValueError(f"unknown masking strategy {strategy!r}")
    if strategy == "hash" and not hash_key:
        raise ValueError("the hash strategy needs a non-empty hash_key")
    spans = detect(text, detectors)
    return _replace(text, spans, strategy, hash_key) if spans else text
