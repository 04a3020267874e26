"""What an audit line means as events, and how an event is shown: the event types, the
``(type, detail)`` pairs of one audit line (:func:`events_of`), the stored rows of one raw
line (:func:`rows_of`, keyed by the line's SHA-256 so a line is one event however often it
is read), an event as a dict (SSE data, webhook body) and as one SSE frame.

Values are data: coerced to short strings, and a frame is one JSON line
(``ensure_ascii``), so no value can break the framing or forge an event.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .store.models import Event

EVENT_TYPES = (
    "session.created",
    "session.ready",
    "session.refreshed",
    "session.restarted",
    "session.unhealthy",
    "session.stopped",
    "session.paused",
    "session.resumed",
    "session.destroyed",
    "session.failed",
    "backup.done",
    "backup.failed",
    "backup.restored",
    "quota.refused",
    "host.poweroff",
)
"""Every type an event can have (webhook filters are checked against these)."""

QUOTA_PREFIX = "quota: "
"""How the service layer's quota refusal (:class:`dockyard.sessions.quotas.QuotaError`)
starts; a refused create's audit line carries it as its ``detail``."""
DETAIL_MAX = 1000


def events_of(entry: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """The ``(type, detail)`` of the events one audit line means (none for most: API
    requests, attaches, image builds)."""
    action, ok = entry.get("action"), entry.get("result") == "ok"
    detail = entry.get("detail") if isinstance(entry.get("detail"), str) else None
    if action == "create":
        if ok:
            return [("session.created", None)]
        if detail and detail.startswith(QUOTA_PREFIX):
            return [("quota.refused", detail)]
        return [("session.failed", f"create: {detail or 'failed'}")]
    if action in ("refresh", "destroy"):
        done = "session.refreshed" if action == "refresh" else "session.destroyed"
        return [(done, None)] if ok else [("session.failed", f"{action}: {detail or 'failed'}")]
    if action == "health-refresh":
        after = ("session.refreshed", None) if ok else ("session.failed", "health refresh failed")
        return [("session.unhealthy", detail), after]
    if action == "health-restart":
        after = ("session.restarted", None) if ok else ("session.failed", "health restart failed")
        return [("session.unhealthy", detail), after]
    if action in ("pause", "resume"):
        # The dashboard's table follows these (a paused row) as it follows the others.
        done = "session.paused" if action == "pause" else "session.resumed"
        return [(done, detail)] if ok else [("session.failed", f"{action}: {detail or 'failed'}")]
    if action == "idle-stop":
        return [("session.stopped", detail)]
    if action == "idle-poweroff":
        return [("host.poweroff", detail)] if ok else []
    if action == "backup":
        return [("backup.done" if ok else "backup.failed", detail)]
    if action == "backup-check":
        return [] if ok else [("backup.failed", f"check: {detail or 'failed'}")]
    if action == "restore":
        return [("backup.restored" if ok else "backup.failed", detail)]
    return []


def _text(value: Any, limit: int) -> str | None:
    """A field value as stored: a string of at most ``limit`` characters, or None."""
    if value is None:
        return None
    shown = value if isinstance(value, str) else json.dumps(value, default=str)
    return shown[:limit]


@dataclass(frozen=True)
class Line:
    """One complete line of a trail and the source it came from."""

    raw: bytes
    source: str


def rows_of(line: Line, stored_at: datetime) -> list[Event]:
    """The events of one raw audit line (none if it is not a JSON object)."""
    try:
        entry = json.loads(line.raw)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(entry, dict):
        return []
    digest = hashlib.sha256(line.raw).hexdigest()
    rows = []
    for n, (kind, detail) in enumerate(events_of(entry)):
        rows.append(
            Event(
                key=hashlib.sha256(f"{digest}:{n}".encode()).hexdigest(),
                type=kind,
                time=_text(entry.get("time"), 40) or "",
                session=_text(entry.get("session"), 200),
                tenant=_text(entry.get("tenant"), 64),
                stack=_text(entry.get("stack"), 300),
                host=_text(entry.get("host"), 300),
                actor=_text(entry.get("actor"), 200),
                result=_text(entry.get("result"), 20),
                detail=_text(detail, DETAIL_MAX),
                source=line.source,
                stored_at=stored_at,
            )
        )
    return rows


def as_dict(row: Event) -> dict[str, Any]:
    """An event as SSE data and webhook body."""
    return {
        "id": row.id,
        "type": row.type,
        "time": row.time,
        "session": row.session,
        "tenant": row.tenant,
        "stack": row.stack,
        "host": row.host,
        "actor": row.actor,
        "result": row.result,
        "detail": row.detail,
        "source": row.source,
    }


def frame(row: Event) -> str:
    """One SSE event: ``id``, ``event`` (a fixed type name) and ONE ``data`` line of
    ASCII JSON, so no value (a newline, a carriage return, U+2028) can end the frame."""
    data = json.dumps(as_dict(row), ensure_ascii=True, separators=(",", ":"))
    if row.type not in EVENT_TYPES or any(c in data for c in "\r\n"):
        raise ValueError(f"event {row.id}: cannot be framed")
    return f"id: {row.id}\nevent: {row.type}\ndata: {data}\n\n"
