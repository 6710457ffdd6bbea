"""`hoopctl sessions` and `replay`: finding and replaying recorded sessions."""

from __future__ import annotations

from hoopctl.cli_common import app  # noqa: F401
