"""The ``[targets.masking]`` table: column rules, detectors, the key of the hash strategy.

broker.config imports these models; nothing else of broker.masking comes with them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
