"""`hoopctl approve`, `approvals`, `request` and `requests`: the approval workflow."""

from __future__ import annotations

from hoopctl.cli_common import app  # noqa: F401
