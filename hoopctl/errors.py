"""hoopctl's errors: each becomes one line on stderr and a documented exit code."""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DENIED = 3
EXIT_APPROVAL = 4


class HoopError(Exception):
    """Base error; the message is one line a person can act on."""

    exit_code = EXIT_ERROR


class UsageError(HoopError):
    exit_code = EXIT_USAGE


class BrokerUnreachable(HoopError):
    pass


class HostKeyError(HoopError):
    """The broker's host key is unknown and was not accepted, or differs from the pinned one."""


class NotLoggedIn(HoopError):
    pass


class LoginError(HoopError):
    pass


class CredentialStoreError(HoopError):
    pass


class ApiCallError(HoopError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
