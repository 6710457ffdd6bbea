"""Audit sinks: where audit events go besides the store (`[[audit.sinks]]` in the config).

`file` (JSON lines, rotated), `stdout`, `syslog` (RFC 5424 over UDP or TCP) and `webhook`
(batched HTTP POSTs, spooled on disk). Each runs on its own and never blocks a session.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from broker.audit.config import SinkConfig
from broker.audit.sinks.base import DEGRADED, FAILING, OK, Sink, SinkHealth
from broker.audit.sinks.file import FileSink
from broker.audit.sinks.stdout import StdoutSink
from broker.audit.sinks.syslog import SyslogSink
from broker.audit.sinks.webhook import WebhookSink

__all__ = [
    "DEGRADED",
    "FAILING",
    "OK",
    "FileSink",
    "Sink",
    "SinkHealth",
    "StdoutSink",
    "SyslogSink",
    "WebhookSink",
    "build_sink",
]


def build_sink(config: SinkConfig, *, data_dir: Path, stream: TextIO | None = None) -> Sink:
    if config.type == "file":
        return FileSink(config, data_dir=data_dir)
    if config.type == "stdout":
        return StdoutSink(config, stream=stream)
    if config.type == "syslog":
        return SyslogSink(config)
    return WebhookSink(config, data_dir=data_dir)
