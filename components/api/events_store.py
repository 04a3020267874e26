"""Events in the API store (the key store's database): ingest the lines read from the
trails once each, the events the server observes itself, pruning, and reads by id.

On PostgreSQL one advisory lock orders the inserts, so ids become visible in id order and
a stream resuming after id N never misses a later-committed smaller id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError

from ..host.audit_trail import now
from .events_lines import Line, rows_of
from .events_tail import Tail
from .store.models import Event, EventSource, WebhookDelivery
from .store.transactions import Transactional

_LOCK_ID = 27003  # the PostgreSQL advisory lock that orders event inserts


class EventStore(Transactional):
    """Events in the API store (the key store's database)."""

    def position(self, tail: Tail) -> tuple[int | None, int]:
        with self._session() as session:
            row = session.get(EventSource, tail.id)
            return (row.inode, row.offset) if row is not None else (None, 0)

    def ingest(
        self, reads: list[tuple[Tail, list[Line], int | None, int]], *, positions: bool = True
    ) -> list[Event] | None:
        """Store the events of the lines read from every trail (merged in time order) that
        are not stored yet, and each trail's new position, in one transaction; returns
        the events this call stored. Lines without events (a request's own ``api`` line)
        and ``positions`` False: nothing is written and None is returned — the caller
        keeps the positions and writes them later; lines read again after a restart
        store nothing twice (events are keyed by their line)."""
        now = datetime.now(UTC)
        rows = [row for _, lines, _, _ in reads for line in lines for row in rows_of(line, now)]
        if not rows and not positions:
            return None
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
