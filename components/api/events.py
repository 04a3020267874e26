"""Lifecycle and health events: one source, the audit trail, turned into stored events and
served as server-sent events (``GET /api/events``).

Every lifecycle verb of the service layer (:mod:`dockyard.sessions`) writes an audit line,
and so do the host scripts on their own (health refresh and restart, idle stop, workspace
backups; :mod:`dockyard.host.audit_trail`). The server tails those trails
(:class:`Tail`: byte offsets kept in the store, rotation followed by inode), maps each line
to zero or more events (:func:`events_of`) and stores them with an id that only grows
(:class:`EventStore`); ``session.ready`` is the one event the server observes itself, on
the engine, after a create, refresh or restart (:class:`Readiness`). A line is one event however often it is read (its SHA-256 is a
unique key), so restarts and several replicas on one host never duplicate it; on
PostgreSQL one lock orders the inserts, so ids become visible in id order and a stream
resuming after id N never misses a later-committed smaller id.

The trails are files the environments cannot write (the state directory and
``/var/log/dockyard`` are the host's, 0700/0600, and mounted into no container); their
values are still treated as data: coerced to short strings, and an SSE frame is one JSON
line (``ensure_ascii``), so no value can break the framing or forge an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError

from ..errors import InvalidInput
from ..host.audit_trail import KEEP, now
from .errors import RateLimited
from .events_settings import EventSettings
from .principal import Caller
from .store.models import Event, EventSource, WebhookDelivery
from .store.transactions import Transactional

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
LINE_MAX = 64 * 1024
READ_MAX = 1024 * 1024
DETAIL_MAX = 1000
READY_WATCHES = 500
"""Sessions watched for readiness at once (more creates at once are not watched)."""
PRUNE_EVERY_S = 3600.0
_LOCK_ID = 27003  # the PostgreSQL advisory lock that orders event inserts
log = logging.getLogger(__package__)


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


class Tail:
    """New complete lines of one trail since the last read (the current file, and the rest
    of the file it was rotated into, found by inode among ``.1`` … ``.KEEP``)."""

    def __init__(self, path: Path, source: str, inode: int | None, offset: int) -> None:
        self.path, self.source = path, source
        self.id = hashlib.sha256(f"{socket.gethostname()}:{path}".encode()).hexdigest()
        self.inode, self.offset = inode, offset

    def read(self) -> tuple[list[Line], int | None, int]:
        """``(lines, inode, offset)``: what is new, and the position after it (kept by the
        caller with :meth:`advance` once the lines are stored)."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return [], self.inode, self.offset
        lines: list[Line] = []
        inode, offset = self.inode, self.offset
        if inode is not None and stat.st_ino != inode:
            for index in range(1, KEEP + 1):
                rotated = self.path.with_name(f"{self.path.name}.{index}")
                with contextlib.suppress(OSError):
                    if os.stat(rotated).st_ino == inode:
                        lines += self._read(rotated, offset)[0]
                        break
            inode, offset = stat.st_ino, 0
        elif stat.st_size < offset:
            offset = 0  # truncated: start over (stored lines are not stored twice)
        inode = stat.st_ino
        more, offset = self._read(self.path, offset)
        return lines + more, inode, offset

    def advance(self, inode: int | None, offset: int) -> None:
        self.inode, self.offset = inode, offset

    def _read(self, path: Path, offset: int) -> tuple[list[Line], int]:
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read(READ_MAX)
        except OSError:
            return [], offset
        end = chunk.rfind(b"\n")
        if end < 0:
            # No complete line yet; a line longer than READ_MAX is no audit line: skip it.
            return [], offset + (len(chunk) if len(chunk) >= READ_MAX else 0)
        lines = [
            Line(raw, self.source)
            for raw in chunk[: end + 1].splitlines()
            if raw.strip() and len(raw) <= LINE_MAX
        ]
        return lines, offset + end + 1


class EventStore(Transactional):
    """Events in the API store (the key store's database)."""

    def position(self, tail: Tail) -> tuple[int | None, int]:
        with self._session() as session:
            row = session.get(EventSource, tail.id)
            return (row.inode, row.offset) if row is not None else (None, 0)

    def ingest(self, reads: list[tuple[Tail, list[Line], int | None, int]]) -> list[Event]:
        """Store the events of the lines read from every trail (merged in time order) that
        are not stored yet, and each trail's new position, in one transaction; returns
        the events this call stored."""
        now = datetime.now(UTC)
        rows = [row for _, lines, _, _ in reads for line in lines for row in rows_of(line, now)]
        rows.sort(key=lambda row: row.time)  # stable: one trail's lines keep their order
        for attempt in range(3):
            try:
                with self._session() as session:
                    if self.engine.dialect.name == "postgresql":
                        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
                    keys = [row.key for row in rows]
                    known = (
                        set(session.scalars(select(Event.key).where(Event.key.in_(keys))))
                        if keys
                        else set()
                    )
                    fresh = [row for row in rows if row.key not in known]
                    session.add_all(fresh)
                    for tail, _, inode, offset in reads:
                        source = session.get(EventSource, tail.id)
                        if source is None:
                            source = EventSource(id=tail.id, path=str(tail.path), inode=0, offset=0)
                            session.add(source)
                        source.inode, source.offset = inode or 0, offset
                return fresh
            except IntegrityError:
                if attempt == 2:
                    raise
                rows = [
                    row for _, lines, _, _ in reads for line in lines for row in rows_of(line, now)
                ]
                rows.sort(key=lambda row: row.time)
        return []

    def derive(self, trigger: Event, kind: str, detail: str | None = None) -> Event | None:
        """Store an event the server itself observed after ``trigger`` (``session.ready``),
        once: its key is derived from the trigger's. None if it was stored already."""
        row = Event(
            key=hashlib.sha256(f"{trigger.key}:{kind}".encode()).hexdigest(),
            type=kind,
            time=now(),
            session=trigger.session,
            tenant=trigger.tenant,
            stack=trigger.stack,
            host=trigger.host,
            actor="dockyard-api",
            result="ok",
            detail=detail,
            source="engine",
            stored_at=datetime.now(UTC),
        )
        with self._session() as session:
            if self.engine.dialect.name == "postgresql":
                session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
            if session.scalar(select(Event.id).where(Event.key == row.key)) is not None:
                return None
            session.add(row)
        return row

    def prune(self, keep_s: float) -> int:
        """Forget events stored more than ``keep_s`` seconds ago, with their settled
        webhook deliveries (an event still to be delivered stays); returns how many."""
        cutoff = datetime.now(UTC) - timedelta(seconds=keep_s)
        with self._session() as session:
            session.execute(
                delete(WebhookDelivery).where(
                    WebhookDelivery.state != "pending", WebhookDelivery.updated_at < cutoff
                )
            )
            owed = select(WebhookDelivery.event_id)
            gone = session.execute(
                delete(Event).where(Event.stored_at < cutoff, Event.id.not_in(owed))
            )
            return int(gone.rowcount or 0)  # type: ignore[attr-defined]

    def newest(self) -> int:
        with self._session() as session:
            return int(session.scalar(select(func.max(Event.id))) or 0)

    def after(
        self,
        after: int,
        *,
        tenant: str | None,
        every_tenant: bool,
        session_id: str | None = None,
        types: Iterable[str] = (),
        limit: int = 500,
    ) -> list[Event]:
        """Events with an id over ``after``, oldest first: a tenant's own (``every_tenant``
        False: only events of ``tenant``, never the untenanted or another's)."""
        query = select(Event).where(Event.id > after).order_by(Event.id).limit(limit)
        if not every_tenant or tenant is not None:
            query = query.where(Event.tenant == tenant)
        if session_id is not None:
            query = query.where(Event.session == session_id)
        wanted = list(types)
        if wanted:
            query = query.where(Event.type.in_(wanted))
        with self._session() as session:
            return list(session.scalars(query))


Probe = Callable[[str, str | None], str]
"""``(session, tenant)`` -> ``ready`` (running, and healthy if it has a health check),
``waiting`` or ``gone`` (no such session or container any more)."""
READY_AFTER = ("session.created", "session.refreshed", "session.restarted")


def _moment(stamp: str) -> datetime:
    """An audit line's time (``2026-12-06T17:15:37.123Z``); the epoch if unreadable."""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Readiness:
    """``session.ready``: after a create, refresh or restart stored by this server, the
    session's container is watched on its engine (every ``ready_poll_s``, at most
    ``ready_timeout_s``) until it is running and healthy; then the event is stored once
    (keyed by the trigger's, so replicas never store it twice). A server restarted while it
    watches does not resume the watch."""

    def __init__(self, hub: EventHub, probe: Probe | None) -> None:
        self.hub, self.probe = hub, probe
        self.tasks: set[asyncio.Task[None]] = set()

    def follow(self, stored: Iterable[Event]) -> None:
        """Watch the sessions of ``stored`` triggers, those of the last ``ready_timeout_s``
        only (a trail read from its start on a first run holds old creates)."""
        if self.probe is None:
            return
        recent = datetime.now(UTC) - timedelta(seconds=self.hub.settings.ready_timeout_s)
        for row in stored:
            if (
                row.type in READY_AFTER
                and row.session
                and len(self.tasks) < READY_WATCHES
                and _moment(row.time) > recent
            ):
                task = asyncio.get_running_loop().create_task(self._watch(row))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _watch(self, trigger: Event) -> None:
        session, probe = trigger.session, self.probe
        if session is None or probe is None:
            return
        settings = self.hub.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.ready_timeout_s
        while loop.time() < deadline:
            try:
                verdict = await to_thread.run_sync(probe, session, trigger.tenant)
            except Exception:
                log.exception("readiness of session %s", trigger.session)
                verdict = "waiting"
            if verdict == "gone":
                return
            if verdict == "ready":
                if await to_thread.run_sync(self.hub.store.derive, trigger, "session.ready"):
                    self.hub.bell.ring()
                return
            await asyncio.sleep(settings.ready_poll_s)

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()


class Bell:
    """Wakes every waiting stream when events were stored in this process."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def ring(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


class EventHub:
    """The event source of one server: the tails, the store, the bell; :meth:`run` is the
    background task the app's lifespan starts."""

    def __init__(
        self, store: EventStore, settings: EventSettings, probe: Probe | None = None
    ) -> None:
        self.store, self.settings = store, settings
        self.bell = Bell()
        self.readiness = Readiness(self, probe)
        self.streams = Streams()
        self.tails: list[Tail] = []
        self.closing = False
        self.last_ingest_ms: float | None = None

    def poll(self) -> list[Event]:
        """Read every trail once and store what is new (blocking: run in a thread)."""
        if not self.tails:
            for path, source in self.settings.audit_logs:
                tail = Tail(path, source, None, 0)
                tail.advance(*self.store.position(tail))
                self.tails.append(tail)
        reads = []
        for tail in self.tails:
            lines, inode, offset = tail.read()
            if (inode, offset) != (tail.inode, tail.offset):
                reads.append((tail, lines, inode, offset))
        if not reads:
            return []
        stored = self.store.ingest(reads)
        for tail, _, inode, offset in reads:
            tail.advance(inode, offset)
        return stored

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        pruned = loop.time()
        while not self.closing:
            try:
                stored = await to_thread.run_sync(self.poll)
                if stored:
                    self.bell.ring()
                    self.readiness.follow(stored)
                if loop.time() - pruned > PRUNE_EVERY_S:
                    pruned = loop.time()
                    await to_thread.run_sync(self.store.prune, self.settings.keep_days * 86400)
            except Exception:  # the store may be away for a while: keep trying
                log.exception("reading the audit trails failed")
                await asyncio.sleep(1.0)
            await asyncio.sleep(self.settings.poll_s)

    def close(self) -> None:
        self.closing = True
        self.readiness.close()
        self.bell.ring()


router = APIRouter(tags=["events"])


def _start(last_event_id: str | None, after: int | None, hub: EventHub) -> int:
    if last_event_id is not None:
        if not last_event_id.strip().isdigit():
            raise InvalidInput(
                "request",
                [
                    "header.Last-Event-ID: not an event id "
                    "(allowed: the id of the last event received, a whole number)"
                ],
            )
        return int(last_event_id.strip())
    if after is not None:
        return after
    return hub.store.newest()


@router.get(
    "/api/events",
    summary="Lifecycle and health events as server-sent events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An event stream."}},
)
async def stream_events(
    request: Request,
    caller: Caller,
    session: Annotated[
        str | None, Query(max_length=200, description="Only this session's.")
    ] = None,
    tenant: Annotated[
        str | None, Query(max_length=64, description="Admin keys: only this tenant's.")
    ] = None,
    types: Annotated[
        str | None, Query(max_length=1000, description="Comma-separated event types.")
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, description="Start after this event id (0: from the first).")
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    """Each event once, in id order: ``id`` (resume with ``Last-Event-ID`` or ``after``),
    ``event`` (its type) and one ``data`` line of JSON. Without either, the stream starts
    with the next new event. A tenant's key sees only its tenant's events."""
    hub: EventHub = request.app.state.events
    wanted = [t.strip() for t in (types or "").split(",") if t.strip()]
    unknown = [t for t in wanted if t not in EVENT_TYPES]
    if unknown:
        raise InvalidInput(
            "request",
            [
                f"query.types: {unknown[0]!r} is not an event type (allowed: {', '.join(EVENT_TYPES)})"
            ],
        )
    scope = caller.scope(tenant)
    position = await to_thread.run_sync(_start, last_event_id, after, hub)
    settings = hub.settings

    async def frames() -> AsyncIterator[str]:
        nonlocal position
        yield ": dockyard events\nretry: 3000\n\n"
        quiet = 0.0
        while not hub.closing:
            read = functools.partial(
                hub.store.after,
                position,
                tenant=scope,
                every_tenant=caller.admin,
                session_id=session,
                types=wanted,
            )
            rows = await to_thread.run_sync(read)
            for row in rows:
                position = row.id
                yield frame(row)
            if rows:
                quiet = 0.0
                continue
            if await request.is_disconnected():
                return
            if quiet >= settings.keepalive_s:
                quiet = 0.0
                yield ": keep-alive\n\n"
            started = asyncio.get_running_loop().time()
            await hub.bell.wait(settings.store_poll_s)
            quiet += asyncio.get_running_loop().time() - started

    return _Stream(frames(), hub.streams.reserve(caller.key_id, settings.streams_per_key))


class Streams:
    """Open streams per key, so one key cannot make the server poll the store for
    thousands of them (this replica's count)."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def reserve(self, key_id: str, most: int) -> Callable[[], None]:
        if self.open.get(key_id, 0) >= most:
            raise RateLimited(
                f"key {key_id} has {most} event streams open (allowed: at most {most} at "
                "once): close one, or filter one stream by session and types instead",
                1.0,
            )
        self.open[key_id] = self.open.get(key_id, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open[key_id] -= 1
                if not self.open[key_id]:
                    del self.open[key_id]

        return release


class _Stream(StreamingResponse):
    """An SSE response that gives its stream's place back however it ends."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
