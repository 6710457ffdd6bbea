"""The `stdout` sink: one JSON line per event on the broker's standard output.

Written at once, in the emitting task, as the broker always did: stdout is a local pipe or
file (journald, a container log), and tests and log shippers read it right after an action.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from broker.audit.config import SinkConfig
from broker.audit.sinks.base import FAILING, OK, Sink
from broker.audit.sinks.formats import dumps, render


class StdoutSink(Sink):
    type = "stdout"

    def __init__(self, config: SinkConfig, stream: TextIO | None = None) -> None:
        super().__init__(config)
        self._stream = stream

    def offer(self, record: dict[str, Any]) -> None:
        stream = self._stream or sys.stdout
        try:
            stream.write(dumps(render(record, self.config.format)) + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:
            self._health.dropped += 1
            self._set_state(FAILING, f"cannot write to stdout: {exc}")
            return
        self._health.delivered += 1
        if self._health.state != OK:
            self._set_state(OK, "stdout is writable again")
