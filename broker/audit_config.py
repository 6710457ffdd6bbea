"""The `[audit]` section of the broker config: where audit events go and who may review sessions."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AuditSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Members of these groups may list, search and replay every session.
    auditors: list[str] = Field(default_factory=list)
    # A user may replay their own sessions unless this is false.
    replay_own: bool = True
