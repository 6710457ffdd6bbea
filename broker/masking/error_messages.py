"""The values database error messages echo, masked: :func:`mask_error`."""

from __future__ import annotations

import re
from typing import Protocol

from broker.masking.config import MaskingConfig
from broker.masking.detectors import DETECTORS
from broker.masking.scanner import mask_text
from broker.masking.strategies import REDACTED


class MaskerParts(Protocol):
    """What mask_error reads of a Masker (broker.masking.masker, on the floor above)."""

    config: MaskingConfig
    _detectors: tuple[str, ...]
    _key: bytes


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


def mask_error(message: str, masker: MaskerParts) -> str:
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
