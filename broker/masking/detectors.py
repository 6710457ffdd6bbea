"""The value detectors: what each one finds (pattern, shortest match, checksum, check).

A new detector is a name in :data:`DETECTORS` (in priority order), its pattern in _PATTERNS,
its shortest match in _MIN_LEN, its check in _CHECKS, its prefilter in broker.masking.scanner
and its name in config.DetectorName.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from itertools import accumulate

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
_NON_DIGITS = bytes(c for c in range(256) if not 48 <= c <= 57)


def _count_digits(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass").translate(None, _NON_DIGITS))


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
