"""How an audit event is written to a sink: `native` (the store's record) or `ecs`.

`native` is the event exactly as stored and hashed, with its chain fields (`seq`,
`prev_hash`, `hash`). `ecs` maps it onto the Elastic Common Schema 8.11 so that a SIEM
indexes it without a custom pipeline; every native field is kept, either in its ECS place or
under `hoop.*`. docs/audit-events.md lists the mapping field by field.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

ECS_VERSION = "8.11.0"

# event.category and event.type for each event type (ECS allowed values).
_ECS_KIND: dict[str, tuple[list[str], list[str]]] = {
    "auth.login": (["authentication"], ["start"]),
    "auth.rejected": (["authentication"], ["denied"]),
    "session.start": (["session"], ["start"]),
    "session.end": (["session"], ["end"]),
    "session.rejected": (["session"], ["denied"]),
    "session.grant": (["session"], ["info"]),
    "session.replayed": (["session"], ["info"]),
    "session.searched": (["session"], ["info"]),
    "session.verified": (["session"], ["info"]),
    "command": (["process"], ["start"]),
    "command.blocked": (["process"], ["denied"]),
    "query": (["database"], ["access"]),
    "query.blocked": (["database"], ["denied"]),
    "schema.read": (["database"], ["info"]),
    "approval.requested": (["iam"], ["creation"]),
    "approval.approved": (["iam"], ["change", "allowed"]),
    "approval.denied": (["iam"], ["change", "denied"]),
    "approval.expired": (["iam"], ["change"]),
    "approval.cancelled": (["iam"], ["deletion"]),
    "approval.executed": (["iam"], ["access"]),
    "approval.standing.granted": (["iam"], ["creation"]),
    "approval.standing.revoked": (["iam"], ["deletion"]),
    "approval.standing.used": (["iam"], ["access", "allowed"]),
    "approval.standing.refused": (["iam"], ["denied"]),
    "session.exported": (["session"], ["info"]),
    "signal.action": (["intrusion_detection"], ["info"]),
    "audit.prune": (["file"], ["deletion"]),
    "audit.sink": (["configuration"], ["change"]),
}
_DEFAULT_KIND = (["session"], ["info"])
_SIGNAL_KIND = (["intrusion_detection"], ["info"])
# How much a signal weighs, as ECS event.severity (0-100) and event.risk_score.
_SIGNAL_SEVERITY = {
    "first-time": 21,
    "off-hours": 21,
    "long-session": 21,
    "volume-spike": 73,
    "repeated-denials": 47,
    "self-approval": 73,
    "approval-overridden": 73,
}

# details keys that have an ECS home of their own (they stay in hoop.details as well).
_DETAIL_FIELDS = {
    "command": "process.command_line",
    "exit_status": "process.exit_code",
    "rule": "rule.name",
}

_HOSTNAME = socket.gethostname()


def iso_time(timestamp: float) -> str:
    """RFC 3339 UTC with milliseconds: 2026-11-23T10:15:42.123Z."""
    whole = int(timestamp)
    millis = round((timestamp - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def _put(doc: dict[str, Any], dotted: str, value: Any) -> None:
    node = doc
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _split_remote(remote: str) -> tuple[str, int | None]:
    host, sep, port = remote.rpartition(":")
    if not sep or not port.isdigit():
        return remote, None
    return host.strip("[]"), int(port)


def to_ecs(record: dict[str, Any]) -> dict[str, Any]:
    """The ECS document for one stored audit event."""
    kind = str(record.get("type", "unknown"))
    signal = kind.startswith("signal.") and kind != "signal.action"
    category, types = _ECS_KIND.get(kind, _SIGNAL_KIND if signal else _DEFAULT_KIND)
    doc: dict[str, Any] = {
        "@timestamp": iso_time(float(record.get("time", 0.0))),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "event",
            "category": category,
            "type": types,
            "action": kind,
            "outcome": record.get("outcome", "unknown"),
            "module": "hoop",
            "dataset": "hoop.audit",
            "provider": "hoop-broker",
        },
        "observer": {"vendor": "hoop", "product": "hoop-broker", "hostname": _HOSTNAME},
    }
    if "seq" in record:
        doc["event"]["sequence"] = record["seq"]
        doc["event"]["id"] = record.get("hash")
        doc["hoop"] = {
            "chain": {
                "seq": record["seq"],
                "prev_hash": record.get("prev_hash"),
                "hash": record.get("hash"),
            }
        }
    if record.get("reason"):
        doc["event"]["reason"] = record["reason"]
    if record.get("actor"):
        _put(doc, "user.name", record["actor"])
    if record.get("groups"):
        _put(doc, "user.roles", list(record["groups"]))
    if record.get("actor_kind"):
        _put(doc, "hoop.actor_kind", record["actor_kind"])
    client = record.get("client")
    if isinstance(client, dict):
        _put(doc, "user_agent.name", client.get("name"))
        _put(doc, "user_agent.version", client.get("version"))
    if record.get("remote"):
        address, port = _split_remote(str(record["remote"]))
        _put(doc, "source.address", address)
        if port is not None:
            _put(doc, "source.ip", address)
            _put(doc, "source.port", port)
    if record.get("target"):
        _put(doc, "service.target.name", record["target"])
        _put(doc, "hoop.target", record["target"])
    if record.get("session"):
        _put(doc, "hoop.session", record["session"])
    details = record.get("details")
    if isinstance(details, dict) and details:
        for key, dotted in _DETAIL_FIELDS.items():
            if details.get(key) is not None:
                _put(doc, dotted, details[key])
        if details.get("approver"):
            _put(doc, "hoop.approver", details["approver"])
        if details.get("decision"):
            _put(doc, "hoop.decision", details["decision"])
        _put(doc, "hoop.details", details)
    if signal:
        # An alert: SIEMs index it beside their own detections.
        name = kind.removeprefix("signal.")
        doc["event"]["kind"] = "alert"
        doc["event"]["severity"] = _SIGNAL_SEVERITY.get(name, 21)
        doc["event"]["risk_score"] = float(_SIGNAL_SEVERITY.get(name, 21))
        _put(doc, "rule.name", name)
        _put(doc, "rule.ruleset", "hoop.signals")
        _put(doc, "rule.category", "insider-threat")
        if isinstance(details, dict) and details.get("id"):
            _put(doc, "rule.uuid", details["id"])
    doc["message"] = _message(record)
    return doc


def _message(record: dict[str, Any]) -> str:
    parts = [str(record.get("type", "event"))]
    if record.get("actor"):
        parts.append(f"by {record['actor']}")
    if record.get("target"):
        parts.append(f"on {record['target']}")
    text = " ".join(parts)
    details = record.get("details") if isinstance(record.get("details"), dict) else {}
    subject = details.get("command") or details.get("query")
    if subject:
        text += f": {str(subject)[:200]}"
    if record.get("reason"):
        text += f" ({record['reason']})"
    return text


def render(record: dict[str, Any], fmt: str) -> dict[str, Any]:
    return to_ecs(record) if fmt == "ecs" else record


def dumps(document: Any) -> str:
    """One JSON line (no newline): sorted keys, ASCII only, so it is safe on any transport."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def shrink(document: dict[str, Any], limit: int) -> str:
    """DOCUMENT as JSON within LIMIT bytes: the longest strings are cut first (marked `…`)."""
    text = dumps(document)
    if len(text) <= limit:
        return text
    doc = json.loads(text)
    for _ in range(64):
        path, longest = _longest_string(doc)
        if longest is None or len(longest) <= 32:
            break
        keep = max(16, len(longest) - (len(text) - limit) - 16)
        if keep > len(longest) - 8:
            keep = len(longest) // 2
        _replace(doc, path, longest[:keep] + "…[cut]")
        doc["truncated"] = True
        text = dumps(doc)
        if len(text) <= limit:
            return text
    minimal = {
        "truncated": True,
        "type": document.get("type") or document.get("event", {}).get("action"),
        "seq": document.get("seq") or document.get("event", {}).get("sequence"),
    }
    return dumps(minimal)


def _longest_string(node: Any, path: tuple[Any, ...] = ()) -> tuple[tuple[Any, ...], str | None]:
    best: tuple[tuple[Any, ...], str | None] = (path, None)
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, value in items:
        if isinstance(value, str):
            candidate: tuple[tuple[Any, ...], str | None] = ((*path, key), value)
        elif isinstance(value, dict | list):
            candidate = _longest_string(value, (*path, key))
        else:
            continue
        if candidate[1] is not None and (best[1] is None or len(candidate[1]) > len(best[1])):
            best = candidate
    return best


def _replace(node: Any, path: tuple[Any, ...], value: str) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
