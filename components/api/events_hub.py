"""The event source of one server (:class:`EventHub`): it tails the trails into the store
in the background, rings a bell for waiting streams, watches for ``session.ready``
(:class:`Readiness`) and counts the open streams per key (:class:`Streams`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from anyio import to_thread

from .errors import RateLimited
from .events_settings import EventSettings
from .events_store import EventStore
from .events_tail import Tail
from .store.models import Event

READY_WATCHES = 500
"""Sessions watched for readiness at once (more creates at once are not watched)."""
PRUNE_EVERY_S = 3600.0
POSITIONS_EVERY_S = 5.0
"""How stale the stored trail positions may be when no event came (read again after a
restart, they store nothing twice)."""
log = logging.getLogger(__package__)


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
        self._positions_written = float("-inf")

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
        # Under a stream of requests every poll reads their own lines, none an event: their
        # positions are written with the next event, or every POSITIONS_EVERY_S (a commit
        # per poll was a twentieth of the server's CPU under 200 clients at once).
        due = time.monotonic() - self._positions_written >= POSITIONS_EVERY_S
        stored = self.store.ingest(reads, positions=due)
        for tail, _, inode, offset in reads:
            tail.advance(inode, offset)
        if stored is None:
            return []
        self._positions_written = time.monotonic()
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
