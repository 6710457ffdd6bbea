"""The broker's own lines on a session channel, shown as hoopctl's.

Before a session's output starts, the broker may write lines of its own on the channel's
stderr (`hoop: approval required …`, `hoop-broker: no target 'x' is open to you`). A plain
`ssh` client shows them as they are; hoopctl shows them under its own prefix, so that every
line hoopctl prints starts the same way (docs/exit-codes.md). From the first stderr line that
is not the broker's, nothing is rewritten: a target's stderr is passed on untouched.
"""

from __future__ import annotations

BROKER_PREFIXES = ("hoop: ", "hoop-broker: ")


def as_ours(text: str) -> str:
    """TEXT with a leading broker prefix replaced by `hoopctl: `."""
    for prefix in BROKER_PREFIXES:
        if text.startswith(prefix):
            return "hoopctl: " + text[len(prefix) :]
    return text


class BrokerLines:
    """Rewrites the broker's lines at the start of a stderr stream, then passes bytes on."""

    def __init__(self) -> None:
        self._phase = True
        self._pending = b""

    def end_phase(self) -> bytes:
        """The session's output has started: what was held back, as it came."""
        self._phase = False
        held, self._pending = self._pending, b""
        return held

    def feed(self, data: bytes) -> bytes:
        if not self._phase:
            return data
        self._pending += data
        shown = []
        while self._phase and b"\n" in self._pending:
            line, rest = self._pending.split(b"\n", 1)
            text = line.decode("utf-8", "replace")
            if not text.startswith(BROKER_PREFIXES):
                shown.append(self.end_phase())
                break
            shown.append(as_ours(text).encode("utf-8") + b"\n")
            self._pending = rest
        return b"".join(shown)

    def close(self) -> bytes:
        held, self._pending = self._pending, b""
        if self._phase and held.decode("utf-8", "replace").startswith(BROKER_PREFIXES):
            return as_ours(held.decode("utf-8", "replace")).encode("utf-8")
        return held
