"""Who is on the other end of one SSH connection to the broker."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class ConnectionContext:
    user: str
    groups: tuple[str, ...]
    remote: str
    anonymous: bool = False
    kind: str = "person"  # "person" or "agent": from the identity the user logged in with

    def may_use(self, allowed_groups: Iterable[str]) -> bool:
        return not self.anonymous and bool(set(allowed_groups) & set(self.groups))
