"""One exception hierarchy for the broker; the CLI turns each into a one-line message."""

from __future__ import annotations


class BrokerError(Exception):
    """Base error: its message is meant for a person and names what went wrong."""

    exit_code = 1


class ConfigError(BrokerError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class AuthError(BrokerError):
    """A token, certificate or identity was refused."""


class StoreError(BrokerError):
    """The state store could not be opened or written."""
