"""Masking sensitive values in database results, in the broker, before anything sees them.

Two mechanisms, both configured per target (``[targets.masking]``):

* **Column rules** mask every value of an output column whose values are *derived from* a
  matching source column (``email``, ``*_ssn``, ``public.users.phone``). Which source columns
  an output column derives from is worked out once per result set from the SQL text
  (:func:`column_sources_postgres`, :func:`column_sources_sqlglot`); :meth:`Masker.plan` turns
  that into a :class:`MaskPlan` whose :meth:`MaskPlan.apply` masks one row.
* **Value detectors** look inside every text value of the other columns and mask only the
  sensitive part (``"card 4111 1111 1111 1111 ok"`` -> ``"card [REDACTED:card] ok"``).
  :meth:`MaskPlan.apply_batch` does the same for many rows at once, faster.

Database error messages echo values (``Key (email)=(jane@example.com) already exists``):
:func:`mask_error` masks them. Views are followed to their base columns with the catalog
lookups of broker.masking_views.

Everything fails closed: an output column the resolver cannot explain is *opaque* and is masked
whenever a column rule could apply to it; an error while masking a value redacts the value.
See docs/masking.md for the rules, the exact detector definitions and the limits.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import math
import re
import sys
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import translate
from functools import cache, lru_cache
from hashlib import sha256
from itertools import accumulate, compress
from operator import add, ne
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# --------------------------------------------------------------------------- configuration

Strategy = Literal["redact", "partial", "hash"]
DetectorName = Literal[
    "card", "email", "phone", "iban", "us_ssn", "aws_key", "jwt", "private_key", "secret"
]

# Same forms as broker.config's credential references (not imported: config imports us).
_CREDENTIAL_REF = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+|keyring:[^/]+/.+)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MaskColumnRule(_Strict):
    """One ``[[targets.masking.columns]]`` entry."""

    # fnmatch patterns, case-insensitive: "email", "*_ssn", "users.phone", "public.users.email".
    match: list[str] = Field(min_length=1)
    strategy: Strategy = "redact"

    @field_validator("match")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            parts = pattern.split(".")
            if not pattern or len(parts) > 3 or any(not part for part in parts):
                raise ValueError(
                    f"invalid column pattern {pattern!r}: expected COLUMN, TABLE.COLUMN or "
                    "SCHEMA.TABLE.COLUMN (fnmatch wildcards allowed in each part)"
                )
        return value


class MaskingConfig(_Strict):
    """A target's ``masking`` table."""

    columns: list[MaskColumnRule] = Field(default_factory=list)
    # Value detectors run on every text value of the columns no column rule masks.
    detectors: list[DetectorName] = Field(default_factory=list)
    detector_strategy: Strategy = "redact"
    # Credential reference (env:/file:/keyring:) of the key of the "hash" strategy. The caller
    # resolves it and passes the bytes to Masker.
    hash_key: str | None = None

    @field_validator("detectors")
    @classmethod
    def _unique(cls, value: list[DetectorName]) -> list[DetectorName]:
        return list(dict.fromkeys(value))

    @field_validator("hash_key")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        if value is not None and not _CREDENTIAL_REF.match(value):
            raise ValueError(
                "hash_key must be a reference: env:NAME, file:PATH or keyring:SERVICE/USER"
            )
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.columns or self.detectors)

    @property
    def uses_hash(self) -> bool:
        return any(rule.strategy == "hash" for rule in self.columns) or bool(
            self.detectors and self.detector_strategy == "hash"
        )


# --------------------------------------------------------------------------- strategies

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


def _value_masker(strategy: str, key: bytes) -> Callable[[object], object]:
    """A function masking one non-None value with ``strategy``."""
    if strategy == "redact":
        return lambda _value: REDACTED
    if strategy == "partial":
        return lambda value: _partial(_as_text(value))
    if strategy == "hash":
        return _Hasher(key)
    raise ValueError(f"unknown masking strategy {strategy!r}")


# --------------------------------------------------------------------------- value detectors

DETECTORS: tuple[str, ...] = (
    # Order of priority when two detectors match at the same place: most specific first.
    "private_key",
    "jwt",
    "aws_key",
    "iban",
    "email",
    "card",
    "us_ssn",
    "phone",
    "secret",
)

_PEM_LABEL = r"(?:[A-Z0-9]+[ ])*PRIVATE[ ]KEY(?:[ ]BLOCK)?-----"
_PEM_BODY = r"[A-Za-z0-9+/=\s:,\\-]"  # base64, header lines, JSON-escaped newlines
_TCH = r"A-Za-z0-9+/_-"  # characters of a "secret" token (plus trailing = padding)

# Verbose patterns. Each one starts with a literal or a character class where it can, so that
# the regex engine skips quickly to the places where a match may start.
_PATTERNS: dict[str, str] = {
    "private_key": rf"""
        -----BEGIN[ ]{_PEM_LABEL}
        (?: {_PEM_BODY}*? -----END[ ]{_PEM_LABEL}   # a whole block
          | {_PEM_BODY}* )                          # or a block cut short: up to its end
    """,
    "jwt": r"""
        ey(?<![A-Za-z0-9_-]ey)[A-Za-z0-9_-]{8,}    # header: starts {" or {␠, base64url
        \.[A-Za-z0-9_-]{2,}                                        # payload
        \.[A-Za-z0-9_-]*                                           # signature (empty if alg none)
        (?:\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)?                      # JWE: five parts
        (?![A-Za-z0-9_-]|\.[A-Za-z0-9_-])
    """,
    "aws_key": r"""
        A(?:KIA|SIA)(?<![A-Za-z0-9]A[KS]IA)[A-Z0-9]{16}(?![A-Za-z0-9])
      | (?:(?:[Aa][Ww][Ss]|AWS)_?)?(?:[Ss]ecret_?[Aa]ccess_?[Kk]ey|SECRET_?ACCESS_?KEY)
        ["']?\s*[:=]>?\s*["']?
        (?P<aws_secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])
    """,
    "iban": r"""
        [A-Z][A-Z](?<![A-Za-z0-9][A-Z][A-Z])[0-9]{2}(?:[ ]?[A-Z0-9]){11,30}(?![A-Za-z0-9])
    """,
    "email": r"""
        (?<![\w.%+-])[\w.%+-]++@                    # local part ("@" ends it: possessive)
        (?:[^\W_][\w-]{0,62}+(?<=[^\W_])\.)+        # labels, alphanumeric at both ends
        [A-Za-z]{2,63}+(?![\w-]|\.[^\W_])           # top-level domain, no label after it
    """,
    "card": r"""
        [2-6](?<!\d[2-6])(?<!\d[.,][2-6])(?:[ -]?\d){12,18}(?!\d|[.,]\d)
    """,
    "us_ssn": r"""
        (?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d\d-(?!0000)\d{4}(?![\d-]|[.,]\d)
    """,
    "phone": r"""
        [+(0-9](?<![\w+/.-][+(0-9])
        (?: (?<=\+)\d+(?:[ .-]?\(\d+\)[ .-]?\d+)?(?:[ .-]\d+)*             # +CC ...
          | (?<=1)[ .-](?:\([2-9]\d\d\)[ ]?|[2-9]\d\d[ .-])[2-9]\d\d[ .-]\d{4}   # 1-NPA-NXX-XXXX
          | (?<=[2-9])\d\d[ .-][2-9]\d\d[ .-]\d{4}                         # NPA-NXX-XXXX
          | (?<=\()[2-9]\d\d\)[ ]?[2-9]\d\d[ .-]\d{4}                      # (NPA) NXX-XXXX
          | (?<=\()0?\d{1,5}\)[ ]?\d{2,8}(?:[ .-]\d{2,8}){0,4}             # (0AA) ...
          | (?<=0)\d{0,4}(?:[ ./-]\d{2,8}){1,4}                            # 0AA ... (trunk 0)
        )
        (?![\w:/]|[.,-]\d)
    """,
    "secret": rf"""
        [{_TCH}](?<![{_TCH}][{_TCH}])[{_TCH}]{{31,}}={{0,2}}(?![={_TCH}])
    """,
}

# The email pattern spelled out for ASCII text, where \w is [A-Za-z0-9_] either way: the same
# matches as _PATTERNS["email"] on a text that text.isascii(), found about twice as fast.
_EMAIL_ASCII = r"""
    (?<![A-Za-z0-9_.%+-])[A-Za-z0-9_.%+-]++@
    (?:[A-Za-z0-9][A-Za-z0-9_-]{0,62}+(?<=[A-Za-z0-9])\.)+
    [A-Za-z]{2,63}+(?![A-Za-z0-9_-]|\.[A-Za-z0-9])
"""

# Shortest text each detector can match; values shorter than all of them are skipped.
_MIN_LEN = {
    "private_key": 27,  # -----BEGIN PRIVATE KEY-----
    "jwt": 16,
    "aws_key": 20,  # a key id; a secret after its key name: AWS_SECRET_MIN
    "iban": 15,
    "email": 6,
    "card": 13,
    "us_ssn": 11,
    "phone": 9,
    "secret": 32,
}

# "SecretAccessKey", "=" and 40 characters: the shortest text the aws_key detector finds a
# secret in (so "ccess" need not be looked for in shorter texts).
AWS_SECRET_MIN = 56

_LUHN_DOUBLE = bytes.maketrans(b"0123456789", b"0246813579")  # 2d, minus 9 above 9


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of ASCII digits (card numbers)."""
    data = digits.encode()
    total = sum(data[-1::-2]) + sum(data[-2::-2].translate(_LUHN_DOUBLE)) - 48 * len(data)
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616: 2 letters, 2 check digits, 11-30 alphanumerics, mod 97 == 1."""
    if not 15 <= len(iban) <= 34 or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    if not "02" <= iban[2:4] <= "98":
        return False
    rearranged = iban[4:] + iban[:4]
    try:
        number = "".join(str(int(ch, 36)) for ch in rearranged)
    except ValueError:
        return False
    return int(number) % 97 == 1


def shannon_entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(text)
    if not n:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


SECRET_MIN_LEN = 32
SECRET_MIN_ENTROPY = 4.0
_HEXISH = re.compile(r"[0-9A-Fa-f-]+")


def _card_layout(lengths: Sequence[int]) -> bool:
    """Groupings cards are written in: 4-4-4-4(-1..4), 4-6-5 (Amex), 4-6-4 (Diners)."""
    if len(lengths) == 3 and lengths[0] == 4 and lengths[1] == 6 and lengths[2] in (4, 5):
        return True
    return (
        len(lengths) >= 4
        and all(n == 4 for n in lengths[:-1])
        and 1 <= lengths[-1] <= 4
        and 13 <= sum(lengths) <= 19
    )


def _check_card(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    start, end = m.span()
    piece = m.group()  # ASCII digits, single spaces or dashes between them
    if piece.isdigit():  # digits only
        return (start, end) if luhn_ok(piece) else None
    # Written in groups: only the usual layouts count, and a card may sit inside a longer
    # run of groups ("ref 12345 4111 1111 1111 1111"). Longest window first.
    groups = piece.replace("-", " ").split(" ")
    lengths = [len(g) for g in groups]
    offsets = [0, *accumulate(n + 1 for n in lengths[:-1])]
    for size in range(min(len(groups), 5), 2, -1):
        for i in range(len(groups) - size + 1):
            if groups[i][0] not in "23456" or not _card_layout(lengths[i : i + size]):
                continue
            if luhn_ok("".join(groups[i : i + size])):
                last = i + size - 1
                return start + offsets[i], start + offsets[last] + lengths[last]
    return None


def _check_iban(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    start, end = m.span()
    # Trailing groups may not belong to it ("DE89 3704 0044 0532 0130 00 EUR").
    while end - start >= 15:
        if iban_ok(text[start:end].replace(" ", "")):
            return start, end
        cut = text.rfind(" ", start, end)
        if cut <= start:
            return None
        end = cut
    return None


_SSN_SHAPE = re.compile(r"\d{3}-\d\d-\d{4}")
_DATE_LIKE = re.compile(r"\d{1,2}[./-]\d{1,2}[./-](?:\d{2}|\d{4})(?![\d./-])")


def _check_phone(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    candidate = m.group()
    if not 9 <= _count_digits(candidate) <= 15:
        return None
    if _DATE_LIKE.match(candidate):  # "01.02.2024 10" is a date and an hour
        return None
    if _SSN_SHAPE.fullmatch(candidate):  # AAA-GG-SSSS is an SSN (valid or not), not a phone
        return None
    return m.span()


def _check_jwt(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    header = m.group().split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return m.span() if isinstance(decoded, dict) and "alg" in decoded else None


def _check_aws(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    if m.group("aws_secret") is not None:
        return m.span("aws_secret")
    return m.span()


def _check_secret(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    token = m.group().rstrip("=")
    if len(token) < SECRET_MIN_LEN:
        return None
    if _HEXISH.fullmatch(token):  # hex digests, UUIDs: identifiers rather than secrets
        return None
    if not any(ch.isdigit() for ch in token) or not any(ch.isalpha() for ch in token):
        return None
    if "/" in token and token.lower() == token:  # a path: com/api/v1/users/42/settings
        return None
    if shannon_entropy(token) < SECRET_MIN_ENTROPY:
        return None
    return m.span()


def _accept(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    return m.span()


_CHECKS: dict[str, Callable[[str, re.Match[str]], tuple[int, int] | None]] = {
    "private_key": _accept,
    "jwt": _check_jwt,
    "aws_key": _check_aws,
    "iban": _check_iban,
    "email": _accept,
    "card": _check_card,
    "us_ssn": _accept,
    "phone": _check_phone,
    "secret": _check_secret,
}


def _canonical(detectors: Iterable[str]) -> tuple[str, ...]:
    wanted = set(detectors)
    unknown = wanted - set(DETECTORS)
    if unknown:
        raise ValueError(f"unknown detector(s): {', '.join(sorted(unknown))}")
    return tuple(name for name in DETECTORS if name in wanted)


@cache
def _pattern(name: str) -> re.Pattern[str]:
    # \d means 0-9 (checksums work on ASCII digits); \w in email addresses stays Unicode.
    if name == "email_ascii":
        return re.compile(_EMAIL_ASCII, re.VERBOSE | re.ASCII)
    flags = re.VERBOSE if name == "email" else re.VERBOSE | re.ASCII
    return re.compile(_PATTERNS[name], flags)


def _email_search(text: str, pos: int = 0) -> re.Match[str] | None:
    return (_pattern("email_ascii") if text.isascii() else _pattern("email")).search(text, pos)


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
_NON_DIGITS = bytes(c for c in range(256) if not 48 <= c <= 57)
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


def _count_digits(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass").translate(None, _NON_DIGITS))


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


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class ColumnSource:
    """Where an output column's values come from.

    ``sources`` are source columns, qualified as far as known: "public.users.email",
    "users.email" or "email". For an opaque column they may also name whole tables as
    "users.*" (any column of users). An opaque column with no sources may derive from any
    column anywhere (a user-defined function, a statement the resolver does not understand).
    """

    name: str
    sources: tuple[str, ...]
    opaque: bool = False


def _part_matcher(pattern: str) -> Callable[[str], bool]:
    if not any(ch in pattern for ch in "*?["):
        return pattern.__eq__
    return re.compile(translate(pattern)).match  # type: ignore[return-value]


class _Rule:
    __slots__ = ("parts", "strategy")

    def __init__(self, pattern: str, strategy: str) -> None:
        self.parts = [_part_matcher(p) for p in pattern.lower().split(".")]
        self.strategy = strategy

    def matches(self, source: str) -> bool:
        """Compare from the right; a qualifier the source lacks could be anything."""
        have = source.lower().split(".")
        if have[-1] != "*" and not self.parts[-1](have[-1]):
            return False
        for depth in (2, 3):
            if len(self.parts) >= depth and len(have) >= depth:
                if not self.parts[-depth](have[-depth]):
                    return False
        return True


_UNSEEN = object()
_NO_TEXT = (int, float, bool, type(None))
_SCANNED = (str, bytes, bytearray, memoryview, dict, list)


class _Memo:
    """Detector results of one column's text values, while they repeat enough to pay."""

    __slots__ = ("hits", "lookups", "values")
    SIZE = 4096  # values remembered at most (then forgotten all at once)
    MAX_LEN = 256  # longer values are not remembered
    PROBE = 2048  # lookups between checks of the hit rate
    MIN_HITS = 0.25  # below this hit rate the column stops remembering

    def __init__(self) -> None:
        self.values: dict[str, str | None] = {}
        self.lookups = 0
        self.hits = 0


class MaskPlan:
    """How to mask the rows of one result set. Not thread-safe (counts)."""

    def __init__(
        self,
        names: Sequence[str],
        column_ops: Sequence[tuple[int, Callable[[object], object]]],
        detectors: tuple[str, ...],
        detector_strategy: str,
        hash_key: bytes,
    ) -> None:
        self.names = tuple(names)
        self.masked_columns: tuple[str, ...] = tuple(self.names[i] for i, _ in column_ops)
        self._width = len(self.names)
        self._ops = tuple(column_ops)
        masked = {i for i, _ in column_ops}
        self._detectors = detectors
        self._det_cols = (
            tuple(i for i in range(self._width) if i not in masked) if detectors else ()
        )
        self._scanner = _scanner(detectors)
        self._strategy = detector_strategy
        self._key = hash_key
        self._repl = self._scanner.replacements(detector_strategy, hash_key)
        scanner = self._scanner
        # Detectors that accept every match: (ASCII sub, sub, replacement), for _detect_row.
        self._subs = {
            name: (scanner.ascii_subs[name], scanner.subs[name], repl)
            for name, repl in self._repl.items()
            if scanner.patterns[name][1] is _accept
        }
        self._counts = [0] * self._width
        self._noop = not self._ops and not self._det_cols
        # Per detector column: repeated text values are scanned once (see _Memo).
        self._memos: list[_Memo | None] = [_Memo() for _ in range(self._width)]

    @property
    def counts(self) -> dict[str, int]:
        """Output column -> values masked so far (by column rules and detectors)."""
        out: dict[str, int] = {}
        for name, count in zip(self.names, self._counts, strict=True):
            out[name] = out.get(name, 0) + count
        return out

    @property
    def active(self) -> bool:
        """False when apply() can never change a row."""
        return not self._noop

    def apply(self, row: Sequence[object]) -> tuple[object, ...]:
        """Mask one row; a row nothing applies to is returned as it is."""
        if self._noop:
            return row if type(row) is tuple else tuple(row)
        if len(row) != self._width:
            raise ValueError(f"row has {len(row)} values, the result set has {self._width}")
        out: list[object] | None = None
        if self._ops:
            out = list(row)
            counts = self._counts
            for i, fn in self._ops:
                value = out[i]
                if value is not None:
                    out[i] = fn(value)
                    counts[i] += 1
        if self._det_cols:
            out = self._detect_row(row, out)
        if out is None:
            return row if type(row) is tuple else tuple(row)
        return tuple(out)

    def apply_all(self, rows: Iterable[Sequence[object]]) -> Iterator[tuple[object, ...]]:
        apply = self.apply
        return (apply(row) for row in rows)

    def apply_batch(self, rows: Sequence[Sequence[object]]) -> list[tuple[object, ...]]:
        """Mask many rows at once: equal to ``[apply(row) for row in rows]``, counts included,
        and faster with detectors: each column's text values are joined and scanned together,
        and values that only the email, SSN or private-key detector can match are masked by the
        pattern's own substitution, in C. Rows come back as tuples (equal to the rows given,
        not necessarily the same objects, when nothing was masked)."""
        if self._noop:
            return [row if type(row) is tuple else tuple(row) for row in rows]
        width = self._width
        for row in rows:
            if len(row) != width:
                raise ValueError(f"row has {len(row)} values, the result set has {width}")
        if len(rows) < 4 or not width:
            return [self.apply(row) for row in rows]
        columns: list[Sequence[object]] = list(zip(*rows, strict=False))  # widths checked
        changed = False
        counts = self._counts
        for i, fn in self._ops:
            column = columns[i]
            columns[i] = [None if value is None else fn(value) for value in column]
            counts[i] += len(column) - sum(value is None for value in column)
            changed = True
        for i in self._det_cols:
            new = self._detect_column(columns[i], i)
            if new is not None:
                columns[i] = new
                changed = True
        if not changed:
            return [row if type(row) is tuple else tuple(row) for row in rows]
        return list(zip(*columns, strict=False))  # all of one length

    # -- detectors

    def _mask_text(self, text: str, i: int) -> str | None:
        """One text value of column ``i`` through the detectors; None when nothing was found."""
        memo = self._memos[i]
        if memo is None or len(text) > _Memo.MAX_LEN:
            return self._scanner.mask(text, self._strategy, self._key, self._repl)
        found = memo.values.get(text, _UNSEEN)
        memo.lookups += 1
        if found is not _UNSEEN:
            memo.hits += 1
            return found  # type: ignore[return-value]
        if memo.lookups >= _Memo.PROBE:
            if memo.hits < _Memo.MIN_HITS * memo.lookups:
                self._memos[i] = None  # mostly distinct values: not worth remembering
            memo.lookups = memo.hits = 0
        masked = self._scanner.mask(text, self._strategy, self._key, self._repl)
        if len(memo.values) >= _Memo.SIZE:
            memo.values.clear()
        memo.values[text] = masked
        return masked

    def _detect_value(self, value: object, i: int) -> object:
        """``value`` of column ``i`` masked by the detectors, or _UNSEEN if it stays as is."""
        kind = type(value)
        if kind is str:
            if len(value) < self._scanner.min_len:  # type: ignore[arg-type]
                return _UNSEEN
            text: str = value  # type: ignore[assignment]
        elif value is None or kind is int or kind is float or kind is bool:
            return _UNSEEN
        elif isinstance(value, str):
            text = str(value)
        elif isinstance(value, bytes | bytearray | memoryview):
            text = bytes(value).decode("utf-8", "surrogateescape")
        elif isinstance(value, dict | list):
            try:
                text = json.dumps(value, ensure_ascii=False, default=str)
            except (TypeError, ValueError):
                text = _as_text(value)
        else:
            return _UNSEEN
        try:
            masked: object = self._mask_text(text, i)
            if masked is None:
                return _UNSEEN
        except Exception:  # fail closed: a value we could not inspect is not shown
            masked = REDACTED
        if isinstance(value, bytes | bytearray | memoryview) and isinstance(masked, str):
            masked = masked.encode("utf-8", "surrogateescape")
        return masked

    def _detect_row(self, row: Sequence[object], out: list[object] | None) -> list[object] | None:
        scanner = self._scanner
        prefilter = scanner.prefilter
        minimum = scanner.min_len
        memos = self._memos
        subs = self._subs
        for i in self._det_cols:
            value = row[i]
            kind = type(value)
            if kind is str:  # the common case, inline (_Scanner.mask does the same)
                if len(value) < minimum:  # type: ignore[arg-type]
                    continue
                try:
                    if memos[i] is not None:
                        masked: object = self._mask_text(value, i)  # type: ignore[arg-type]
                        if masked is None:
                            continue
                    else:
                        candidates = prefilter(value)  # type: ignore[arg-type]
                        if not candidates:
                            continue
                        if len(candidates) == 1 and candidates[0] in subs:
                            ascii_sub, sub, repl = subs[candidates[0]]
                            masked = (ascii_sub if value.isascii() else sub)(repl, value)  # type: ignore[union-attr]
                            if masked == value:
                                continue
                        else:
                            masked = scanner.mask(
                                value,  # type: ignore[arg-type]
                                self._strategy,
                                self._key,
                                self._repl,
                                candidates,
                            )
                            if masked is None:
                                continue
                except Exception:  # fail closed: a value we could not inspect is not shown
                    masked = REDACTED
            elif value is None or kind is int or kind is float or kind is bool:
                continue
            else:
                masked = self._detect_value(value, i)
                if masked is _UNSEEN:
                    continue
            if out is None:
                out = list(row)
            out[i] = masked
            self._counts[i] += 1
        return out

    def _detect_each(self, column: Sequence[object], i: int) -> list[object] | None:
        out: list[object] | None = None
        detect = self._detect_value
        for k, value in enumerate(column):
            masked = detect(value, i)
            if masked is _UNSEEN:
                continue
            if out is None:
                out = list(column)
            out[k] = masked
            self._counts[i] += 1
        return out

    def _detect_column(self, column: Sequence[object], i: int) -> list[object] | None:
        """Column ``i`` of a batch masked by the detectors, or None when nothing was found.

        The text values are joined with NUL, which no pattern matches, and the prefilters run
        once over the joined text (_Scanner.column). Values some detector other than email may
        match go through the per-value path; in a column of email addresses the rest are
        masked by one substitution over the joined text."""
        kinds = set(map(type, column))
        nulls = type(None) in kinds
        kinds.discard(type(None))
        if not kinds:
            return None
        if kinds != {str}:
            if all(issubclass(k, _NO_TEXT) or not issubclass(k, _SCANNED) for k in kinds):
                return None  # numbers, dates, ...: not scanned
            return self._detect_each(column, i)
        if self._memos[i] is not None:  # repeated values: one at a time, remembered
            return self._detect_each(column, i)
        texts: list[str] = [value or "" for value in column]  # type: ignore[misc]
        joined = "\x00".join(texts)
        if joined.count("\x00") != len(texts) - 1:  # a value holds NUL itself
            return self._detect_each(column, i)
        full, dense = self._scanner.column(texts, joined)
        parts = texts
        if dense:
            try:
                subs = self._scanner.ascii_subs if joined.isascii() else self._scanner.subs
                result = subs["email"](self._repl["email"], joined)
            except Exception:
                return self._detect_each(column, i)
            if result is not joined and result != joined:
                parts = result.split("\x00")
                if len(parts) != len(texts):  # a replacement holding NUL: cannot happen
                    return self._detect_each(column, i)
        elif not full:
            return None
        changed = sum(map(ne, parts, texts)) if parts is not texts else 0
        out: list[object] = list(parts)
        for k in full:
            if parts[k] != texts[k]:
                changed -= 1
            value = column[k]
            masked = self._detect_value(value, i)
            if masked is _UNSEEN:
                out[k] = value
            else:
                out[k] = masked
                changed += 1
        if not changed:
            return None
        self._counts[i] += changed
        if nulls:
            for k, value in enumerate(column):
                if value is None:
                    out[k] = None
        return out


class Masker:
    """A target's masking configuration, compiled; plan() once per result set."""

    def __init__(self, config: MaskingConfig, *, hash_key: bytes) -> None:
        if config.uses_hash and not hash_key:
            raise ValueError("masking uses the hash strategy but hash_key is empty")
        self.config = config
        self._key = bytes(hash_key)
        self._rules = [
            _Rule(pattern, rule.strategy) for rule in config.columns for pattern in rule.match
        ]
        self._detectors = _canonical(config.detectors)

    def strategy_for(self, column: ColumnSource) -> str | None:
        """The strategy a column rule imposes on this column, or None."""
        if not self._rules:
            return None
        if column.opaque and not column.sources:
            candidates = self._rules  # may derive from anything: every rule applies
        else:
            sources = column.sources or (column.name,)
            candidates = [r for r in self._rules if any(r.matches(s) for s in sources)]
        if not candidates:
            return None
        return min((r.strategy for r in candidates), key=_STRENGTH.__getitem__)

    def plan(self, columns: Sequence[ColumnSource]) -> MaskPlan:
        """Decide once per result set which output columns are masked, and how."""
        maskers: dict[str, Callable[[object], object]] = {}  # hash: one cache per plan
        ops: list[tuple[int, Callable[[object], object]]] = []
        for i, column in enumerate(columns):
            strategy = self.strategy_for(column)
            if strategy is not None:
                if strategy not in maskers:
                    maskers[strategy] = _value_masker(strategy, self._key)
                ops.append((i, maskers[strategy]))
        return MaskPlan(
            [c.name for c in columns],
            ops,
            self._detectors,
            self.config.detector_strategy,
            self._key,
        )

    def mask_error(self, message: str) -> str:
        """A database error message with the values it echoes masked: see :func:`mask_error`."""
        return mask_error(message, self)


# --------------------------------------------------------------------------- error messages

# Where database error messages echo values. Each pattern's group "value" is redacted. The
# groups are greedy to the end of the fragment (the last ")" or quote on the line): a value
# holding the delimiter itself is redacted with whatever follows it, never shown in part.
_ERROR_VALUES: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern)
    for pattern in (
        # PostgreSQL DETAIL: Key (email)=(jane@example.com) already exists. / ... is not
        # present in table "users". / ... is still referenced from table "orders". / ...
        # conflicts with existing key (room, during)=(1, [...)).
        r"\bKey \((?:[^\n]*?)\)=\((?P<value>[^\n]*)\)(?= already exists| is not present"
        r"| is still referenced| conflicts with)",
        r"\bexisting key \((?:[^\n]*?)\)=\((?P<value>[^\n]*)\)",
        # Other wordings: to the last ")" of the line (unless done above).
        r"\bKey \((?:[^\n]*?)\)=\((?!\[REDACTED\]\))(?P<value>[^\n]*)\)",
        # PostgreSQL DETAIL of check and not-null violations: Failing row contains (1, ...).
        r"\bFailing row contains \((?P<value>[^\n]*)\)",
        # PostgreSQL: invalid input syntax for type integer: "jane@example.com"; invalid input
        # value for enum mood: "..."; malformed array literal: "..."; value out of range: "..."
        r'(?m): "(?P<value>[^\n]*)"(?=\.?$)',
        # PostgreSQL DETAIL (json): Token "jane" is invalid.
        r'\bToken "(?P<value>[^\n]*)" is invalid',
        # PostgreSQL CONTEXT: JSON data, line 1: {"a": jane...; COPY users, line 3, column
        # email: "jane@example.com"
        r"\bJSON data, line \d+: (?P<value>[^\n]*)",
        r"\bCOPY [^\n]*?, line \d+[^\n:]*: (?P<value>[^\n]*)",
        # MariaDB / MySQL: Duplicate entry 'jane@example.com' for key 'email'
        r"\bDuplicate entry '(?P<value>[^\n]*)' for key",
        # Incorrect integer value: 'jane@example.com' for column `db`.`t`.`n` at row 1;
        # Truncated incorrect DOUBLE value: '...'; Incorrect string value: '\xF0\x9F...'
        r"\b[Vv]alue: '(?P<value>[^\n]*)'(?= for column)",
        r"\b[Vv]alue: '(?P<value>[^\n]*)'",
    )
)


def _redact_value(m: re.Match[str]) -> str:
    start, end = m.span("value")
    whole = m.group()
    return whole[: start - m.start()] + REDACTED + whole[end - m.start() :]


def mask_error(message: str, masker: Masker) -> str:
    """``message`` (a database error, any number of lines) with the values it echoes masked.

    Nothing changes when the target has no masking configured. Otherwise (fail closed: the
    broker cannot tell which column an echoed value came from, or whether a rule covers it):

    * the values in the fragments PostgreSQL and MariaDB echo them in are replaced with
      ``[REDACTED]``: ``Key (email)=([REDACTED]) already exists``, ``Failing row contains
      ([REDACTED])``, ``invalid input syntax for type integer: "[REDACTED]"``, ``Duplicate
      entry '[REDACTED]' for key 'email'``, ``Incorrect integer value: '[REDACTED]' for
      column ...``, JSON and COPY context lines;
    * then the value detectors run over the whole message with the target's
      ``detector_strategy``: the configured ones, and all of them when the target has column
      rules (a value of a masked column may be echoed in a form not listed above).
    """
    config = masker.config
    if not config.enabled:
        return message
    out = message
    for pattern in _ERROR_VALUES:
        out = pattern.sub(_redact_value, out)
    detectors = DETECTORS if config.columns else masker._detectors
    if detectors:
        out = mask_text(out, detectors, config.detector_strategy, hash_key=masker._key)
    return out


# --------------------------------------------------------------------------- lineage core
#
# The resolvers below turn a statement into one _Src per output column. They share the scope
# model: relations (tables, CTEs, derived tables, functions, joins) with known or unknown
# column lists; output items that are single columns or stars of unknown width; and an
# alignment of the items with the column names the driver reports.


@dataclass(frozen=True)
class _Src:
    cols: frozenset[str] = frozenset()
    opaque: bool = False
    anywhere: bool = False  # may derive from any column of any table (unknown function)

    def __or__(self, other: _Src) -> _Src:
        if not other.cols and not other.opaque:
            return self
        if not self.cols and not self.opaque:
            return other
        return _Src(
            self.cols | other.cols,
            self.opaque or other.opaque,
            self.anywhere or other.anywhere,
        )


_NONE = _Src()
_ANYWHERE = _Src(opaque=True, anywhere=True)


def _union(srcs: Iterable[_Src]) -> _Src:
    out = _NONE
    for src in srcs:
        out = out | src
    return out


Catalog = Callable[[str], Sequence[str]]
ViewSources = Callable[[str], dict[str, tuple[str, ...]]]
Variables = Callable[[str], Sequence[str]]


def _from_strings(sources: Iterable[str]) -> _Src:
    """Source strings (``"*"``: anything) as a _Src."""
    cols = frozenset(sources)
    if "*" in cols:
        return _Src(cols - {"*"}, True, True)
    return _Src(cols)


class _Rel:
    """A relation visible in a FROM clause."""

    visible: str | None = None  # name it is referred to by (alias or table name), lower case

    def columns(self) -> list[tuple[str, _Src]] | None:
        """Output columns in order, when known."""
        return None

    def lookup(self, name: str) -> tuple[_Src, bool] | None:
        """(source, certain) for column ``name``; None when the relation has no such column."""
        known = self.columns()
        if known is not None:
            hits = [src for col, src in known if col == name]
            return (_union(hits), True) if hits else None
        return self.guess(name), False

    def guess(self, name: str) -> _Src:
        """Sources of a column of unknown columns list (only called when columns() is None)."""
        return self.whole()

    def whole(self) -> _Src:
        """The whole row (row_to_json(t), t.*)."""
        known = self.columns()
        if known is not None:
            return _union(src for _, src in known)
        return _ANYWHERE

    def matches(self, qualifier: Sequence[str]) -> bool:
        return len(qualifier) == 1 and qualifier[0].lower() == self.visible

    def get(self, name: str) -> _Src:
        """Column ``name`` of this relation; when it seems to have none, assume the worst."""
        found = self.lookup(name.lower())
        return found[0] if found is not None else self.missing(name.lower())

    def missing(self, name: str) -> _Src:
        return self.whole()


class _TableRel(_Rel):
    def __init__(
        self,
        schema: str | None,
        table: str,
        alias: str | None,
        colnames: Sequence[str],
        catalog: Catalog | None,
        view_sources: ViewSources | None,
    ) -> None:
        self.schema = schema
        self.table = table
        self.qualified = f"{schema}.{table}" if schema else table
        self.visible = (alias or table).lower()
        self._cols: list[tuple[str, _Src]] | None = None
        names: list[str] = []
        if catalog is not None:
            try:
                names = [str(c) for c in catalog(self.qualified) or ()]
            except Exception:
                names = []
        underlying: dict[str, tuple[str, ...]] = {}
        if view_sources is not None:
            try:
                underlying = {
                    k.lower(): tuple(v) for k, v in (view_sources(self.qualified) or {}).items()
                }
            except Exception:
                underlying = {}
        self._underlying = underlying
        if names:
            cols = [(n.lower(), self._source(n.lower())) for n in names]
            # Column aliases (FROM users AS u(a, b)) rename the first columns.
            for i, alias_name in enumerate(colnames[: len(cols)]):
                cols[i] = (alias_name.lower(), cols[i][1])
            self._cols = cols
        self._renamed = {a.lower(): i for i, a in enumerate(colnames)}

    def _source(self, column: str) -> _Src:
        cols = {f"{self.qualified}.{column}"}
        cols.update(self._underlying.get(column, ()))
        cols.update(self._underlying.get("*", ()))  # what every column of it may hold
        if "*" in cols:  # may hold anything (broker.masking_views: a table of unknown lineage)
            return _Src(frozenset(cols - {"*"}), True, True)
        return _Src(frozenset(cols))

    def columns(self) -> list[tuple[str, _Src]] | None:
        return self._cols

    def guess(self, name: str) -> _Src:
        if name in self._renamed:  # renamed by a column alias: which column is unknown
            return self.whole()
        return self._source(name)

    def missing(self, name: str) -> _Src:
        return self.whole() | self._source(name)

    def whole(self) -> _Src:
        if self._cols is not None:
            return _union(src for _, src in self._cols)
        extra = {s for sources in self._underlying.values() for s in sources}
        return _Src(
            frozenset({f"{self.qualified}.*", *extra} - {"*"}), opaque=True, anywhere="*" in extra
        )

    def matches(self, qualifier: Sequence[str]) -> bool:
        q = [part.lower() for part in qualifier]
        if len(q) == 1:
            return q[0] == self.visible
        if self.visible != self.table.lower():  # an aliased table is only known by its alias
            return False
        if len(q) == 2:
            return q[1] == self.table.lower() and (
                self.schema is None or q[0] == self.schema.lower()
            )
        return False


@dataclass
class _Item:
    """One entry of a select list: a column, or a star whose columns are unknown."""

    name: str
    src: _Src
    star: _Rel | None = None  # set for "t.*" / "*" over a relation of unknown columns


class _DerivedRel(_Rel):
    """A subquery, CTE or VALUES list in FROM."""

    def __init__(self, visible: str | None, items: list[_Item], colnames: Sequence[str]) -> None:
        self.visible = visible.lower() if visible else None
        self.items = items
        self.colnames = [c.lower() for c in colnames]
        self._known: list[tuple[str, _Src]] | None = None
        if all(item.star is None for item in items):
            cols = [(item.name.lower(), item.src) for item in items]
            for i, alias_name in enumerate(self.colnames[: len(cols)]):
                cols[i] = (alias_name, cols[i][1])
            self._known = cols

    def columns(self) -> list[tuple[str, _Src]] | None:
        return self._known

    def guess(self, name: str) -> _Src:
        if self.colnames:  # renamed columns over a star: positions unknown
            return self.whole()
        hits = [item.src for item in self.items if item.star is None and item.name.lower() == name]
        for item in self.items:
            if item.star is not None:
                found = item.star.lookup(name)
                if found is not None:
                    hits.append(found[0])
        return _union(hits) if hits else self.whole()

    def whole(self) -> _Src:
        return _union(
            item.star.whole() if item.star is not None else item.src for item in self.items
        )


class _FunctionRel(_Rel):
    """A function in FROM: pure built-ins derive from their arguments, others from anything."""

    def __init__(self, visible: str | None, colnames: Sequence[str], src: _Src) -> None:
        self.visible = visible.lower() if visible else None
        self.colnames = [c.lower() for c in colnames]
        self.src = src

    def columns(self) -> list[tuple[str, _Src]] | None:
        if self.colnames:
            return [(c, self.src) for c in self.colnames]
        return None

    def guess(self, name: str) -> _Src:
        return self.src

    def whole(self) -> _Src:
        return self.src


class _JoinRel(_Rel):
    """``a JOIN b [USING (...)] [AS j]``: for star expansion and, with an alias, lookups."""

    def __init__(self, left: _Rel, right: _Rel, using: Sequence[str], alias: str | None) -> None:
        self.left = left
        self.right = right
        self.using = [u.lower() for u in using]
        self.visible = alias.lower() if alias else None

    def star_items(self) -> list[_Item]:
        left = _star_items(self.left)
        right = _star_items(self.right)
        if not self.using:
            return left + right
        merged = []
        for name in self.using:
            srcs = [found[0] for rel in (self.left, self.right) if (found := rel.lookup(name))]
            merged.append(_Item(name, _union(srcs) if srcs else _ANYWHERE))
        keep = [i for i in left + right if i.star is not None or i.name.lower() not in self.using]
        return merged + keep

    def columns(self) -> list[tuple[str, _Src]] | None:
        items = self.star_items()
        if any(item.star is not None for item in items):
            return None
        return [(item.name.lower(), item.src) for item in items]

    def lookup(self, name: str) -> tuple[_Src, bool] | None:
        found = [f for rel in (self.left, self.right) if (f := rel.lookup(name)) is not None]
        if not found:
            return None
        return _union(f[0] for f in found), any(f[1] for f in found)

    def whole(self) -> _Src:
        return self.left.whole() | self.right.whole()

    def children(self) -> list[_Rel]:
        out: list[_Rel] = []
        for rel in (self.left, self.right):
            if isinstance(rel, _JoinRel) and rel.visible is None:
                out.extend(rel.children())
            else:
                out.append(rel)
        return out


def _star_items(rel: _Rel) -> list[_Item]:
    if isinstance(rel, _JoinRel):
        return rel.star_items()
    known = rel.columns()
    if known is None:
        return [_Item("*", rel.whole(), star=rel)]
    return [_Item(name, src) for name, src in known]


class _Scope:
    def __init__(self, parent: _Scope | None = None) -> None:
        self.parent = parent
        self.from_items: list[_Rel] = []  # top-level FROM entries, for "*"
        self.ctes: dict[str, Callable[[str | None, Sequence[str]], _Rel]] = {}

    def add(self, rel: _Rel) -> None:
        self.from_items.append(rel)

    def rels(self) -> list[_Rel]:
        """Every relation addressable by name in this scope."""
        out: list[_Rel] = []
        for rel in self.from_items:
            if isinstance(rel, _JoinRel) and rel.visible is None:
                out.extend(rel.children())
            else:
                out.append(rel)
        return out

    def cte(self, name: str) -> Callable[[str | None, Sequence[str]], _Rel] | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return scope.ctes[name]
            scope = scope.parent
        return None

    def find(self, qualifier: Sequence[str]) -> _Rel | None:
        scope: _Scope | None = self
        while scope is not None:
            for rel in scope.rels():
                if rel.matches(qualifier):
                    return rel
            scope = scope.parent
        return None

    def column(self, name: str) -> _Src:
        """An unqualified column: every relation that has or may have it, innermost first."""
        name = name.lower()
        hits: list[_Src] = []
        certain = False
        scope: _Scope | None = self
        while scope is not None and not certain:
            for rel in scope.rels():
                found = rel.lookup(name)
                if found is not None:
                    hits.append(found[0])
                    certain = certain or found[1]
            scope = scope.parent
        if not certain:
            rel = self.find([name])  # a whole-row reference: row_to_json(u)
            if rel is not None:
                hits.append(rel.whole())
        if hits:
            return _union(hits)
        # Nothing has a column of that name (a stale catalog, or our naming of a derived
        # column is off): it may be any of them.
        srcs: list[_Src] = []
        scope = self
        while scope is not None:
            srcs.extend(rel.missing(name) for rel in scope.rels())
            scope = scope.parent
        everything = _union(srcs)
        return _Src(everything.cols, True, everything.anywhere) if everything.cols else _ANYWHERE

    def star(self) -> list[_Item]:
        items: list[_Item] = []
        for rel in self.from_items:
            items.extend(_star_items(rel))
        return items


def _align(items: list[_Item], names: Sequence[str]) -> list[_Src]:
    """Map select-list items onto the result's columns (stars of unknown width by name)."""
    n = len(names)
    unknown = [k for k, item in enumerate(items) if item.star is not None]
    if not unknown:
        if len(items) == n:
            return [item.src for item in items]
        everything = _union(item.src for item in items)
        return [_Src(everything.cols, True, everything.anywhere)] * n
    first, last = unknown[0], unknown[-1]
    head = items[:first]
    tail = items[last + 1 :]
    middle = items[first : last + 1]
    width = n - len(head) - len(tail)
    if width < 0:
        everything = _union(item.star.whole() if item.star else item.src for item in items)
        return [_Src(everything.cols, True, everything.anywhere)] * n
    out = [item.src for item in head]
    if len(middle) == 1:
        rel = middle[0].star
        assert rel is not None
        for k in range(width):
            found = rel.lookup(names[len(head) + k].lower())
            out.append(found[0] if found is not None else rel.missing(names[len(head) + k].lower()))
    else:
        fixed = _union(item.src for item in middle if item.star is None)
        for k in range(width):
            name = names[len(head) + k].lower()
            srcs = [fixed]
            for item in middle:
                if item.star is not None:
                    found = item.star.lookup(name)
                    srcs.append(found[0] if found is not None else item.star.missing(name))
            out.append(_union(srcs))
    out.extend(item.src for item in tail)
    return out


def _to_sources(names: Sequence[str], srcs: Sequence[_Src]) -> list[ColumnSource]:
    out = []
    for name, src in zip(names, srcs, strict=True):
        if src.anywhere:
            out.append(ColumnSource(name, (), True))
        else:
            out.append(ColumnSource(name, tuple(sorted(src.cols)), src.opaque))
    return out


def _all_opaque(names: Sequence[str]) -> list[ColumnSource]:
    return [ColumnSource(name, (), True) for name in names]


def _not_data(names: Sequence[str]) -> list[ColumnSource]:
    """Result columns that carry no table data (EXPLAIN, SHOW): matched by their own names."""
    return [ColumnSource(name, ()) for name in names]


# Functions whose result depends only on their arguments (and the clock, settings, ...):
# built-ins of PostgreSQL, MySQL and SQLite. Any other function may read any table (a
# user-defined function, query_to_xml, dblink, ...) and makes the output column opaque.
PURE_FUNCTIONS = frozenset(
    """
    bool bpchar char date float4 float8 int int2 int4 int8 interval numeric text timestamptz
    varchar
    abs acos acosd acosh age any_value array_agg array_append array_cat array_dims array_fill
    array_length array_lower array_ndims array_position array_positions array_prepend
    array_remove array_replace array_sample array_shuffle array_to_json array_to_string
    array_to_tsvector array_upper ascii asin asind asinh atan atan2 atan2d atand atanh avg
    bit_and bit_count bit_length bit_or bit_xor bool_and bool_or btrim cardinality casefold
    cbrt ceil ceiling char_length character_length chr clock_timestamp coalesce concat
    concat_ws convert convert_from convert_to corr cos cosd cosh cot cotd count covar_pop
    covar_samp cume_dist current_date current_time current_timestamp date_add date_bin
    date_format date_part date_sub date_trunc datediff day dayname dayofmonth dayofweek
    dayofyear decode degrees dense_rank div encode every exp extract factorial first_value
    floor format format_type gcd gen_random_uuid generate_series generate_subscripts
    get_byte greatest group_concat grouping hex hour ifnull iif initcap instr isfinite
    isnull json json_agg json_agg_strict json_array json_array_elements
    json_array_elements_text json_array_length json_arrayagg json_build_array
    json_build_object json_each json_each_text json_extract json_extract_path
    json_extract_path_text json_group_array json_group_object json_insert json_object
    json_object_agg json_object_keys json_objectagg json_patch json_populate_record
    json_populate_recordset json_quote json_remove json_replace json_set json_strip_nulls
    json_to_record json_to_recordset json_type json_typeof json_valid jsonb_agg
    jsonb_array_elements jsonb_array_elements_text jsonb_array_length jsonb_build_array
    jsonb_build_object jsonb_each jsonb_each_text jsonb_extract_path jsonb_extract_path_text
    jsonb_insert jsonb_object jsonb_object_agg jsonb_object_keys jsonb_path_exists
    jsonb_path_match jsonb_path_query jsonb_path_query_array jsonb_path_query_first
    jsonb_populate_record jsonb_populate_recordset jsonb_pretty jsonb_set jsonb_set_lax
    jsonb_strip_nulls jsonb_to_record jsonb_to_recordset jsonb_typeof julianday justify_days
    justify_hours justify_interval lag last_value lcase lcm lead least left length like
    ln localtime localtimestamp locate log log10 log2 lower lpad ltrim make_date
    make_interval make_time make_timestamp make_timestamptz max md5 min minute min_scale
    mod mode month monthname now nth_value ntile nullif num_nonnulls num_nulls octet_length
    overlay percent_rank percentile_cont percentile_disc pi position pow power printf
    quote quote_ident quote_literal quote_nullable radians random random_normal range_agg
    rank regexp_count regexp_instr regexp_like regexp_match regexp_matches regexp_replace
    regexp_split_to_array regexp_split_to_table regexp_substr regr_avgx regr_avgy
    regr_count regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy repeat replace
    reverse right round row_number row_to_json rpad rtrim scale second setseed sha1 sha2
    sha224 sha256 sha384 sha512 sign sin sind sinh split_part sqrt starts_with statement_timestamp
    stddev stddev_pop stddev_samp strftime string_agg string_to_array string_to_table strpos
    substr substring sum tan tand tanh time timeofday timestamp timezone to_ascii to_char
    to_date to_hex to_json to_jsonb to_number to_timestamp to_tsquery to_tsvector
    transaction_timestamp translate trim trim_array trunc truncate ts_headline ts_rank
    ts_rank_cd typeof ucase unhex unicode unistr unixepoch unnest upper uuid uuid_generate_v4
    var_pop var_samp variance version week weekday width_bucket xmlagg xmlconcat
    xmlelement xmlforest year
    """.split()
)

# Functions in FROM whose rows derive only from their arguments.
_PURE_TABLE_FUNCTIONS = frozenset(
    {
        "unnest",
        "generate_series",
        "generate_subscripts",
        "json_each",
        "json_each_text",
        "jsonb_each",
        "jsonb_each_text",
        "json_array_elements",
        "json_array_elements_text",
        "jsonb_array_elements",
        "jsonb_array_elements_text",
        "json_to_record",
        "json_to_recordset",
        "jsonb_to_record",
        "jsonb_to_recordset",
        "json_populate_record",
        "json_populate_recordset",
        "jsonb_populate_record",
        "jsonb_populate_recordset",
        "json_object_keys",
        "jsonb_object_keys",
        "jsonb_path_query",
        "regexp_matches",
        "regexp_split_to_table",
        "string_to_table",
        "json_tree",
    }
)


def _pure(name: str, schema: str | None = None) -> bool:
    if schema is not None and schema.lower() not in ("pg_catalog", "main"):
        return False
    return name.lower() in PURE_FUNCTIONS


# --------------------------------------------------------------------------- PostgreSQL


def column_sources_postgres(
    sql: str,
    result_columns: Sequence[str],
    catalog: Catalog | None = None,
    *,
    view_sources: ViewSources | None = None,
) -> list[ColumnSource]:
    """Source columns of each result column of one PostgreSQL statement (parsed with pglast).

    ``catalog(table)`` returns the column names of a table or view ("public.users" or "users",
    as written in the query) and makes ``*`` and whole-row references exact; without it they
    are resolved by the result's column names where that is sound, or are opaque.
    ``view_sources(view)`` may return ``{view_column: (underlying source columns, ...)}`` so
    that rules on the base tables also apply through a view; for a table it may name what a
    column was filled with in this session (key ``"*"``: every column; source ``"*"``:
    anything). Never raises: anything not understood yields opaque columns.
    """
    names = list(result_columns)
    try:
        from pglast import parse_sql
        from pglast.parser import ParseError
    except ImportError:  # pragma: no cover - pglast is a dependency
        return _all_opaque(names)
    try:
        statements = parse_sql(sql)
    except (ParseError, Exception):
        return _all_opaque(names)
    if len(statements) != 1:
        return _all_opaque(names)
    try:
        return _PgResolver(catalog, view_sources).statement(statements[0].stmt, names)
    except RecursionError:
        return _all_opaque(names)
    except Exception:
        return _all_opaque(names)


class _PgResolver:
    def __init__(self, catalog: Catalog | None, view_sources: ViewSources | None) -> None:
        from pglast import ast, enums

        self.ast = ast
        self.enums = enums
        self.catalog = catalog
        self.view_sources = view_sources

    # -- statements

    def statement(self, stmt: Any, names: list[str]) -> list[ColumnSource]:
        a = self.ast
        if isinstance(stmt, a.SelectStmt):
            if stmt.intoClause is not None:
                return _all_opaque(names)
            return _to_sources(names, self.select_aligned(stmt, _Scope(), names))
        if isinstance(stmt, a.InsertStmt | a.UpdateStmt | a.DeleteStmt | a.MergeStmt):
            return _to_sources(names, self.returning(stmt, names))
        if isinstance(stmt, a.ExplainStmt | a.VariableShowStmt):
            return _not_data(names)
        return _all_opaque(names)

    def returning(self, stmt: Any, names: list[str]) -> list[_Src]:
        a = self.ast
        scope = _Scope()
        self.with_clause(stmt.withClause, scope)
        clause = stmt.returningClause
        if clause is None or not clause.exprs:
            return [_ANYWHERE] * len(names)
        scope.add(self.from_item(stmt.relation, scope))
        extra: list[Any] = []
        if isinstance(stmt, a.UpdateStmt):
            extra = list(stmt.fromClause or ())
        elif isinstance(stmt, a.DeleteStmt):
            extra = list(stmt.usingClause or ())
        elif isinstance(stmt, a.MergeStmt) and stmt.sourceRelation is not None:
            extra = [stmt.sourceRelation]
        for node in extra:
            scope.add(self.from_item(node, scope))
        items = self.target_list(clause.exprs, scope)
        return _align(items, names)

    def with_clause(self, clause: Any, scope: _Scope) -> None:
        if clause is None:
            return
        for cte in clause.ctes or ():
            name = cte.ctename.lower()
            colnames = [c.sval for c in cte.aliascolnames or ()]
            query = cte.ctequery
            if clause.recursive and self._is_setop(query):
                items = self.recursive_cte(name, query, colnames, scope)
            elif isinstance(query, self.ast.SelectStmt):
                items = self.query_items(query, scope)
            else:  # data-modifying CTE: INSERT ... RETURNING
                items = self.modifying_items(query, scope)
            scope.ctes[name] = self._cte_factory(name, items, colnames)

    @staticmethod
    def _cte_factory(
        name: str, items: list[_Item], colnames: Sequence[str]
    ) -> Callable[[str | None, Sequence[str]], _Rel]:
        def make(alias: str | None, alias_cols: Sequence[str]) -> _Rel:
            rel = _DerivedRel(alias or name, items, colnames)
            if alias_cols:
                rel = _DerivedRel(alias or name, _rename(rel, alias_cols), ())
            return rel

        return make

    def modifying_items(self, stmt: Any, scope: _Scope) -> list[_Item]:
        a = self.ast
        if not isinstance(stmt, a.InsertStmt | a.UpdateStmt | a.DeleteStmt | a.MergeStmt):
            return [_Item("*", _ANYWHERE, star=_FunctionRel(None, (), _ANYWHERE))]
        clause = stmt.returningClause
        if clause is None:
            return []
        inner = _Scope(scope)
        inner.add(self.from_item(stmt.relation, inner))
        return self.target_list(clause.exprs, inner)

    def _is_setop(self, stmt: Any) -> bool:
        return (
            isinstance(stmt, self.ast.SelectStmt) and stmt.op != self.enums.SetOperation.SETOP_NONE
        )

    def recursive_cte(
        self, name: str, query: Any, colnames: Sequence[str], scope: _Scope
    ) -> list[_Item]:
        """Fixpoint: the recursive term sees the CTE as resolved so far."""
        base = self.query_items(query.larg, scope)
        items = base
        for _ in range(4):
            scope.ctes[name] = self._cte_factory(name, items, colnames)
            right = self.query_items(query.rarg, scope)
            merged = _merge_items(items, right)
            if _same_items(merged, items):
                break
            items = merged
        return items

    # -- queries

    def select_aligned(self, stmt: Any, parent: _Scope, names: list[str]) -> list[_Src]:
        if self._is_setop(stmt):
            scope = _Scope(parent)
            self.with_clause(stmt.withClause, scope)
            left = self.select_aligned(stmt.larg, scope, names)
            right = self.select_aligned(stmt.rarg, scope, names)
            return [lhs | rhs for lhs, rhs in zip(left, right, strict=True)]
        return _align(self.query_items(stmt, parent), names)

    def query_items(self, stmt: Any, parent: _Scope) -> list[_Item]:
        """Output items of a query (SELECT, set operation, VALUES)."""
        if not isinstance(stmt, self.ast.SelectStmt):
            return self.modifying_items(stmt, parent)
        scope = _Scope(parent)
        self.with_clause(stmt.withClause, scope)
        if self._is_setop(stmt):
            left = self.query_items(stmt.larg, scope)
            right = self.query_items(stmt.rarg, scope)
            return _merge_items(left, right)
        if stmt.valuesLists:
            rows = [list(row) for row in stmt.valuesLists]
            width = max(len(r) for r in rows)
            return [
                _Item(
                    f"column{k + 1}",
                    _union(self.expr(r[k], scope) for r in rows if k < len(r)),
                )
                for k in range(width)
            ]
        for node in stmt.fromClause or ():
            scope.add(self.from_item(node, scope))
        return self.target_list(stmt.targetList or (), scope)

    def target_list(self, targets: Sequence[Any], scope: _Scope) -> list[_Item]:
        a = self.ast
        items: list[_Item] = []
        for target in targets:
            val = target.val if isinstance(target, a.ResTarget) else target
            if isinstance(val, a.ColumnRef) and isinstance(val.fields[-1], a.A_Star):
                qualifier = [f.sval for f in val.fields[:-1]]
                if not qualifier:
                    items.extend(scope.star())
                    continue
                rel = scope.find(qualifier)
                items.extend(_star_items(rel) if rel is not None else [_Item("*", _ANYWHERE)])
                continue
            if (
                isinstance(val, a.A_Indirection)
                and val.indirection
                and isinstance(val.indirection[-1], a.A_Star)
            ):  # (t).* / (row_expr).*
                src = self.expr(val.arg, scope)
                items.append(_Item("*", src, star=_FunctionRel(None, (), src)))
                continue
            name = target.name if isinstance(target, a.ResTarget) and target.name else None
            items.append(_Item(name or self.figure_name(val), self.expr(val, scope)))
        return items

    def figure_name(self, node: Any) -> str:
        """PostgreSQL's FigureColname, enough for derived-table lookups."""
        a = self.ast
        if isinstance(node, a.ColumnRef):
            last = node.fields[-1]
            return last.sval if isinstance(last, a.String) else "?column?"
        if isinstance(node, a.A_Indirection):
            for ind in reversed(node.indirection or ()):
                if isinstance(ind, a.String):
                    return ind.sval
            return self.figure_name(node.arg)
        if isinstance(node, a.FuncCall):
            return node.funcname[-1].sval
        if isinstance(node, a.TypeCast):
            inner = self.figure_name(node.arg)
            if inner == "?column?" and node.typeName is not None:
                return node.typeName.names[-1].sval
            return inner
        if isinstance(node, a.CoalesceExpr):
            return "coalesce"
        if isinstance(node, a.CaseExpr):
            return "case"
        if isinstance(node, a.SubLink) and node.subselect is not None:
            sub = node.subselect
            if isinstance(sub, a.SelectStmt) and sub.targetList:
                first = sub.targetList[0]
                return first.name or self.figure_name(first.val)
        return "?column?"

    # -- FROM

    def from_item(self, node: Any, scope: _Scope) -> _Rel:
        a = self.ast
        if isinstance(node, a.RangeVar):
            alias = node.alias.aliasname if node.alias is not None else None
            colnames = [c.sval for c in (node.alias.colnames or ())] if node.alias else []
            if node.schemaname is None:
                cte = scope.cte(node.relname.lower())
                if cte is not None:
                    return cte(alias, colnames)
            return _TableRel(
                node.schemaname,
                node.relname,
                alias,
                colnames,
                self.catalog,
                self.view_sources,
            )
        if isinstance(node, a.RangeSubselect):
            alias = node.alias.aliasname if node.alias is not None else None
            colnames = [c.sval for c in (node.alias.colnames or ())] if node.alias else []
            items = self.query_items(node.subquery, scope)
            return _DerivedRel(alias, items, colnames)
        if isinstance(node, a.JoinExpr):
            left = self.from_item(node.larg, scope)
            # The right side sees the left (LATERAL); a plain join cannot refer to it anyway.
            inner = _Scope(scope)
            inner.add(left)
            right = self.from_item(node.rarg, inner)
            using = [u.sval for u in node.usingClause or ()]
            if node.isNatural:
                lcols, rcols = left.columns(), right.columns()
                if lcols is not None and rcols is not None:
                    rnames = {n for n, _ in rcols}
                    using = [n for n, _ in lcols if n in rnames]
            alias = node.alias.aliasname if node.alias is not None else None
            return _JoinRel(left, right, using, alias)
        if isinstance(node, a.RangeFunction):
            alias = node.alias.aliasname if node.alias is not None else None
            colnames = [c.sval for c in (node.alias.colnames or ())] if node.alias else []
            if not colnames and node.coldeflist:
                colnames = [c.colname for c in node.coldeflist]
            srcs: list[_Src] = []
            first_name: str | None = None
            for entry in node.functions or ():
                call = entry[0] if isinstance(entry, tuple | list) else entry
                if isinstance(call, a.FuncCall):
                    fname = call.funcname[-1].sval.lower()
                    schema = call.funcname[0].sval if len(call.funcname) > 1 else None
                    first_name = first_name or fname
                    args = _union(self.expr(arg, scope) for arg in call.args or ())
                    if fname in _PURE_TABLE_FUNCTIONS and (schema in (None, "pg_catalog")):
                        srcs.append(args)
                    else:
                        srcs.append(args | _ANYWHERE)
                else:
                    srcs.append(self.expr(call, scope))
            return _FunctionRel(alias or first_name, colnames, _union(srcs))
        if isinstance(node, a.RangeTableSample):
            return self.from_item(node.relation, scope)
        if isinstance(node, a.RangeTableFunc | a.JsonTable):
            alias = node.alias.aliasname if node.alias is not None else None
            src = _union(
                self.expr(part, scope)
                for part in (
                    getattr(node, "docexpr", None),
                    getattr(node, "rowexpr", None),
                    getattr(node, "context_item", None),
                )
                if part is not None
            )
            return _FunctionRel(alias, [], src)
        return _FunctionRel(None, [], _ANYWHERE)

    # -- expressions

    def expr(self, node: Any, scope: _Scope) -> _Src:
        a = self.ast
        if node is None:
            return _NONE
        if isinstance(node, tuple | list):
            return _union(self.expr(n, scope) for n in node)
        if not isinstance(node, a.Node):
            return _NONE
        if isinstance(node, a.ColumnRef):
            return self.column_ref(node, scope)
        if isinstance(node, a.A_Const | a.ParamRef | a.SQLValueFunction | a.TypeName):
            return _NONE
        if isinstance(node, a.A_Indirection):
            return self.indirection(node, scope)
        if isinstance(node, a.SubLink):
            src = self.expr(node.testexpr, scope)
            if node.subLinkType != self.enums.SubLinkType.EXISTS_SUBLINK:
                items = self.query_items(node.subselect, scope)
                src = src | _union(i.star.whole() if i.star else i.src for i in items)
            return src
        if isinstance(node, a.SelectStmt):
            items = self.query_items(node, scope)
            return _union(i.star.whole() if i.star else i.src for i in items)
        src = _NONE
        if isinstance(node, a.FuncCall):
            schema = node.funcname[0].sval if len(node.funcname) > 1 else None
            if not _pure(node.funcname[-1].sval, schema):
                src = _ANYWHERE
        for attr in node.__slots__:
            if attr == "location":
                continue
            value = getattr(node, attr, None)
            if isinstance(value, a.Node | tuple | list):
                src = src | self.expr(value, scope)
        return src

    def column_ref(self, node: Any, scope: _Scope) -> _Src:
        a = self.ast
        fields = node.fields
        if isinstance(fields[-1], a.A_Star):
            qualifier = [f.sval for f in fields[:-1]]
            if not qualifier:
                return _union(item.star.whole() if item.star else item.src for item in scope.star())
            rel = scope.find(qualifier)
            return rel.whole() if rel is not None else _ANYWHERE
        parts = [f.sval for f in fields]
        if len(parts) == 1:
            return scope.column(parts[0])
        for cut in (len(parts) - 1, 1):  # u.email / public.users.email; or col.field
            rel = scope.find(parts[:cut])
            if rel is not None:
                if cut == len(parts) - 1:
                    return rel.get(parts[-1])
                return rel.get(parts[cut])  # t.compositecol.field
        return scope.column(parts[0])  # compositecol.field

    def indirection(self, node: Any, scope: _Scope) -> _Src:
        a = self.ast
        arg = node.arg
        first = node.indirection[0] if node.indirection else None
        if isinstance(arg, a.ColumnRef) and len(arg.fields) == 1 and isinstance(first, a.String):
            rel = scope.find([arg.fields[0].sval])
            if rel is not None:  # (u).email
                return rel.get(first.sval) | self.expr(node.indirection[1:], scope)
        return self.expr(arg, scope) | self.expr(node.indirection, scope)


def _rename(rel: _Rel, names: Sequence[str]) -> list[_Item]:
    known = rel.columns()
    if known is None:
        return [_Item("*", rel.whole(), star=_FunctionRel(None, names, rel.whole()))]
    items = [_Item(n, s) for n, s in known]
    for i, new in enumerate(names[: len(items)]):
        items[i] = _Item(new, items[i].src)
    return items


def _merge_items(left: list[_Item], right: list[_Item]) -> list[_Item]:
    """Columns of ``left UNION right``: names from the left, sources of both."""
    if any(i.star for i in left) or any(i.star for i in right) or len(left) != len(right):
        everything = _union(i.star.whole() if i.star else i.src for i in left + right)
        return [_Item("*", everything, star=_FunctionRel(None, (), everything))]
    return [_Item(lhs.name, lhs.src | rhs.src) for lhs, rhs in zip(left, right, strict=True)]


def _same_items(a: list[_Item], b: list[_Item]) -> bool:
    return len(a) == len(b) and all(
        x.name == y.name and x.src == y.src and (x.star is None) == (y.star is None)
        for x, y in zip(a, b, strict=True)
    )


# --------------------------------------------------------------------------- MySQL, SQLite


def column_sources_sqlglot(
    sql: str,
    dialect: str,
    result_columns: Sequence[str],
    catalog: Catalog | None = None,
    *,
    view_sources: ViewSources | None = None,
    variables: Variables | None = None,
) -> list[ColumnSource]:
    """Like :func:`column_sources_postgres`, for MySQL ("mysql") or SQLite ("sqlite") with
    sqlglot's AST. Best effort with the same fail-closed rule: never raises.

    ``variables(name)`` gives the sources of what a MySQL variable holds in this session
    (``"@name"`` a user variable, ``"@@name"`` a system variable; ``"*"``: anything). Without
    it a user variable may hold anything (opaque) and a system variable holds no table data."""
    names = list(result_columns)
    try:
        import sqlglot
        from sqlglot import exp
    except ImportError:  # pragma: no cover - sqlglot is a dependency
        return _all_opaque(names)
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except Exception:
        return _all_opaque(names)
    if len(statements) != 1:
        return _all_opaque(names)
    try:
        resolver = _GlotResolver(exp, catalog, view_sources, variables)
        return resolver.statement(statements[0], names)
    except Exception:
        return _all_opaque(names)


class _GlotResolver:
    def __init__(
        self,
        exp: Any,
        catalog: Catalog | None,
        view_sources: ViewSources | None,
        variables: Variables | None = None,
    ) -> None:
        self.exp = exp
        self.catalog = catalog
        self.view_sources = view_sources
        self.variables = variables

    def variable(self, node: Any) -> _Src:
        """What ``@name`` (exp.Parameter) or ``@@name`` (exp.SessionParameter) holds."""
        e = self.exp
        system = isinstance(node, e.SessionParameter)
        inner = node.this
        name = inner.name if isinstance(inner, e.Expression) else str(inner or "")
        if not name:
            return _NONE if system else _ANYWHERE
        if self.variables is None:
            return _NONE if system else _ANYWHERE
        try:
            sources = tuple(self.variables(("@@" if system else "@") + name.lower()))
        except Exception:
            return _ANYWHERE
        return _from_strings(sources)

    @staticmethod
    def arg(node: Any, *keys: str) -> Any:
        for key in keys:
            value = node.args.get(key)
            if value is not None:
                return value
        return None

    def statement(self, stmt: Any, names: list[str]) -> list[ColumnSource]:
        e = self.exp
        if isinstance(stmt, e.Select | e.SetOperation | e.Subquery):
            if isinstance(stmt, e.Select) and self.arg(stmt, "into") is not None:
                return _all_opaque(names)
            return _to_sources(names, self.aligned(stmt, _Scope(), names))
        if isinstance(stmt, e.Insert | e.Update | e.Delete):
            returning = self.arg(stmt, "returning")
            if returning is None:
                return _all_opaque(names)
            scope = _Scope()
            target = self.arg(stmt, "this")
            if isinstance(target, e.Schema):
                target = target.this
            scope.add(self.from_item(target, scope))
            items = self.select_list(returning.expressions, scope)
            return _to_sources(names, _align(items, names))
        if isinstance(stmt, e.Describe | e.Show | e.Pragma | e.Set):
            return _not_data(names)
        return _all_opaque(names)

    def with_clause(self, node: Any, scope: _Scope) -> None:
        with_ = self.arg(node, "with_", "with")
        if with_ is None:
            return
        recursive = bool(with_.args.get("recursive"))
        for cte in with_.expressions:
            name = cte.alias_or_name.lower()
            alias = cte.args.get("alias")
            colnames = [c.name for c in (alias.columns if alias is not None else [])]
            query = cte.this
            e = self.exp
            if recursive and isinstance(query, e.SetOperation):
                base = self.items(query.this, scope)
                items = base
                for _ in range(4):
                    scope.ctes[name] = _PgResolver._cte_factory(name, items, colnames)
                    merged = _merge_items(items, self.items(query.expression, scope))
                    if _same_items(merged, items):
                        break
                    items = merged
            else:
                items = self.items(query, scope)
            scope.ctes[name] = _PgResolver._cte_factory(name, items, colnames)

    def aligned(self, node: Any, parent: _Scope, names: list[str]) -> list[_Src]:
        e = self.exp
        if isinstance(node, e.Subquery):
            return self.aligned(node.this, parent, names)
        if isinstance(node, e.SetOperation):
            scope = _Scope(parent)
            self.with_clause(node, scope)
            left = self.aligned(node.this, scope, names)
            right = self.aligned(node.expression, scope, names)
            return [lhs | rhs for lhs, rhs in zip(left, right, strict=True)]
        return _align(self.items(node, parent), names)

    def items(self, node: Any, parent: _Scope) -> list[_Item]:
        e = self.exp
        if isinstance(node, e.Subquery):
            return self.items(node.this, parent)
        scope = _Scope(parent)
        self.with_clause(node, scope)
        if isinstance(node, e.SetOperation):
            return _merge_items(self.items(node.this, scope), self.items(node.expression, scope))
        if isinstance(node, e.Values):
            rows = [list(t.expressions) for t in node.expressions]
            width = max((len(r) for r in rows), default=0)
            return [
                _Item(f"column{k + 1}", _union(self.expr(r[k], scope) for r in rows if k < len(r)))
                for k in range(width)
            ]
        if not isinstance(node, e.Select):
            return [_Item("*", _ANYWHERE, star=_FunctionRel(None, (), _ANYWHERE))]
        from_ = self.arg(node, "from_", "from")
        if from_ is not None:
            for source in [from_.this, *from_.expressions]:
                if source is not None:
                    scope.add(self.from_item(source, scope))
        for join in node.args.get("joins") or ():
            left = scope.from_items.pop() if scope.from_items else None
            inner = _Scope(scope)
            if left is not None:
                inner.add(left)
            right = self.from_item(join.this, inner)
            using = [u.name for u in join.args.get("using") or ()]
            if left is None:
                scope.add(right)
            else:
                if str(join.args.get("method") or "").upper() == "NATURAL":
                    lcols, rcols = left.columns(), right.columns()
                    if lcols is not None and rcols is not None:
                        rnames = {n for n, _ in rcols}
                        using = [n for n, _ in lcols if n in rnames]
                scope.add(_JoinRel(left, right, using, None))
        return self.select_list(node.expressions, scope)

    def select_list(self, expressions: Sequence[Any], scope: _Scope) -> list[_Item]:
        e = self.exp
        items: list[_Item] = []
        for node in expressions:
            if isinstance(node, e.Star):
                items.extend(scope.star())
                continue
            if isinstance(node, e.Column) and isinstance(node.this, e.Star):
                qualifier = [p.name for p in node.parts[:-1]]
                rel = scope.find(qualifier)
                items.extend(_star_items(rel) if rel is not None else [_Item("*", _ANYWHERE)])
                continue
            if isinstance(node, e.Alias):
                items.append(_Item(node.alias, self.expr(node.this, scope)))
                continue
            items.append(_Item(node.output_name or "?column?", self.expr(node, scope)))
        return items

    def from_item(self, node: Any, scope: _Scope) -> _Rel:
        e = self.exp
        alias_node = node.args.get("alias") if hasattr(node, "args") else None
        alias = alias_node.name if alias_node is not None and alias_node.name else None
        colnames = [c.name for c in alias_node.columns] if alias_node is not None else []
        if isinstance(node, e.Table) and isinstance(node.this, e.Identifier):
            db = node.args.get("db")
            schema = db.name if db is not None else None
            if schema is None:
                cte = scope.cte(node.name.lower())
                if cte is not None:
                    return cte(alias, colnames)
            return _TableRel(schema, node.name, alias, colnames, self.catalog, self.view_sources)
        if isinstance(node, e.Table):  # a function in FROM: json_each(x), ...
            call = node.this
            fname = (call.name if isinstance(call, e.Anonymous) else call.key or "").lower()
            src = self.expr(call, scope)
            if fname in _PURE_TABLE_FUNCTIONS or (
                not isinstance(call, e.Anonymous) and isinstance(call, e.Func)
            ):
                src = _union(self.expr(arg, scope) for arg in call.iter_expressions())
            return _FunctionRel(alias or fname, colnames, src)
        if isinstance(node, e.Subquery):
            return _DerivedRel(alias, self.items(node.this, scope), colnames)
        if isinstance(node, e.Unnest):
            return _FunctionRel(alias, colnames, self.expr(node.expressions, scope))
        if isinstance(node, e.Lateral):
            return self.from_item(node.this, scope)
        return _FunctionRel(alias, colnames, _ANYWHERE)

    def expr(self, node: Any, scope: _Scope) -> _Src:
        e = self.exp
        if node is None:
            return _NONE
        if isinstance(node, list | tuple):
            return _union(self.expr(n, scope) for n in node)
        if not isinstance(node, e.Expression):
            return _NONE
        if isinstance(node, e.Column):
            parts = [p.name for p in node.parts]
            if isinstance(node.this, e.Star):
                rel = scope.find(parts[:-1])
                return rel.whole() if rel is not None else _ANYWHERE
            if len(parts) == 1:
                return scope.column(parts[0])
            rel = scope.find(parts[:-1])
            if rel is None:
                return scope.column(parts[-1]) | _Src(opaque=True)
            return rel.get(parts[-1])
        if isinstance(node, e.Star):
            return _union(item.star.whole() if item.star else item.src for item in scope.star())
        if isinstance(node, e.Parameter | e.SessionParameter):
            return self.variable(node)
        if isinstance(node, e.Exists):  # chooses rows, produces no value (as in PostgreSQL)
            return _NONE
        if isinstance(node, e.Count) and isinstance(node.this, e.Star):
            return _NONE  # count(*) counts rows; it carries no column's value
        if isinstance(node, e.Select | e.SetOperation):
            return _union(i.star.whole() if i.star else i.src for i in self.items(node, scope))
        if isinstance(node, e.Subquery):
            return self.expr(node.this, scope)
        src = _NONE
        if isinstance(node, e.Anonymous) and not _pure(node.name):
            src = _ANYWHERE
        for child in node.iter_expressions():
            src = src | self.expr(child, scope)
        return src


# --------------------------------------------------------------------------- benchmark


def _synthetic_rows(count: int, *, with_email: bool) -> list[tuple[object, ...]]:
    import datetime
    import decimal

    base = datetime.datetime(2024, 1, 15, 10, 30)
    statuses = ("active", "suspended", "pending review", "closed")
    rows = []
    for i in range(count):
        rows.append(
            (
                i,
                f"Customer {i:06d}",
                f"user{i}@example.com" if with_email else f"user{i}",
                f"+1 415 555 {i % 10000:04d}",
                statuses[i % 4],
                base + datetime.timedelta(minutes=i),
                decimal.Decimal(i % 1000) / 7,
                i % 3 == 0,
                f"order {i} shipped to warehouse {i % 17}, tracking number pending",
            )
        )
    return rows


_BENCH_COLUMNS = ("id", "name", "email", "phone", "status", "created", "balance", "vip", "note")


def benchmark(rows: int = 1_000_000, *, out: Any = None) -> dict[str, float]:
    """Rows per second of MaskPlan.apply (one row at a time) and MaskPlan.apply_batch (500 rows
    at a time) on synthetic 9-column rows; prints them and returns {"case, apply": rate, ...}.
    Seconds of CPU time (time.process_time): on a busy machine as on an idle one."""
    out = out or sys.stdout
    pool = 200_000 if rows > 200_000 else rows
    plain = _synthetic_rows(pool, with_email=False)
    emails = _synthetic_rows(pool, with_email=True)
    # The rows of bench/sql.py: id, an email address, a note (every 100th with a card number).
    exported = [
        (
            i,
            f"user{i}@example.com",
            f"paid with 4111 1111 1111 1111 order {i}"
            if i % 100 == 0
            else f"order {i} shipped to desk {i % 97}",
        )
        for i in range(1, pool + 1)
    ]
    columns = [ColumnSource(n, (f"public.customers.{n}",)) for n in _BENCH_COLUMNS]
    big = [ColumnSource(n, (f"public.big.{n}",)) for n in ("id", "email", "note")]
    key = b"benchmark-key"
    every = MaskingConfig(detectors=list(DETECTORS))
    cases: list[tuple[str, MaskingConfig, list[tuple[object, ...]], list[ColumnSource]]] = [
        ("no masking (fast path)", MaskingConfig(), plain, columns),
        (
            "column rules: redact email, partial phone",
            MaskingConfig(
                columns=[
                    MaskColumnRule(match=["email"]),
                    MaskColumnRule(match=["phone"], strategy="partial"),
                ]
            ),
            emails,
            columns,
        ),
        (
            "column rules: hash email (mostly distinct values)",
            MaskingConfig(columns=[MaskColumnRule(match=["email"], strategy="hash")]),
            emails,
            columns,
        ),
        (
            "all detectors, nothing sensitive in the text columns",
            every,
            [(*r[:3], "n/a", *r[4:]) for r in plain],
            columns,
        ),
        ("all detectors, an email and a phone in every row", every, emails, columns),
        (
            "column rules + all detectors (email, phone by rule)",
            MaskingConfig(
                columns=[MaskColumnRule(match=["email", "phone"])], detectors=list(DETECTORS)
            ),
            emails,
            columns,
        ),
        ("bench/sql.py rows (id, email, note), all detectors", every, exported, big),
    ]
    results: dict[str, float] = {}
    print(f"masking benchmark: {rows} rows (9 columns; bench/sql.py rows: 3)", file=out)
    print(f"  {'case':<55} {'apply':>12} {'apply_batch':>12}", file=out)
    for label, config, data, cols in cases:
        rates = []
        for batched in (False, True):
            plan = Masker(config, hash_key=key).plan(cols)
            apply, apply_batch = plan.apply, plan.apply_batch
            done = 0
            start = time.process_time()
            while done < rows:
                chunk = data[: min(len(data), rows - done)]
                if batched:
                    for at in range(0, len(chunk), 500):
                        apply_batch(chunk[at : at + 500])
                else:
                    for row in chunk:
                        apply(row)
                done += len(chunk)
            rate = rows / (time.process_time() - start)
            results[f"{label}, {'apply_batch' if batched else 'apply'}"] = rate
            rates.append(rate)
        print(f"  {label:<55} {rates[0]:>12,.0f} {rates[1]:>12,.0f}  rows/s", file=out)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.masking")
    parser.add_argument("--bench", action="store_true", help="run the micro benchmark")
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return 2
    benchmark(args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
