"""Each session's recent stats, kept in this process's memory: a small bounded ring per
session, fed by a sampler thread, read by the faces (the dashboard's table bars and the
detail page's chart over the last hour). No database: a restart starts the rings empty.

The sampler asks each engine host once per round which session containers run (one list
call, :func:`dockyard.sessions.status.engine_states`) and samples only those, one at a
time (the engine takes about 2 s per container), so a host with hundreds of stopped
sessions costs one call a round."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .status import engine_states

RING = 120
"""Samples kept per session (an hour at the default 30 s interval)."""
MAX_SESSIONS = 2000
"""Sessions with a ring at once (the least recently fed go first): at most 240,000
samples of about 250 bytes each (the sample and its numbers), ≈ 60 MB."""
INTERVAL_S = 30.0
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample: ``at`` (UNIX seconds), bytes of memory and disk used against their
    limits (None where unknown), CPU in percent of one CPU."""

    at: float
    memory_used: int | None
    memory_limit: int | None
    disk_used: int | None
    disk_total: int | None
    cpu_percent: float | None


def sample_of(stats: dict[str, Any], at: float) -> Sample:
    """A :class:`Sample` of what ``Workspace.stats()`` answers."""
    memory, disk, cpu = stats.get("memory") or {}, stats.get("disk") or {}, stats.get("cpu") or {}

    def whole(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    percent = cpu.get("percent")
    return Sample(
        at,
        whole(memory.get("used")),
        whole(memory.get("limit")),
        whole(disk.get("used")),
        whole(disk.get("total")),
        float(percent) if isinstance(percent, int | float) else None,
    )


Key = tuple[str | None, str]
"""(tenant, session id): two tenants' sessions of one name are two rings."""


class StatsHistory:
    """The rings, thread-safe."""

    def __init__(self, ring: int = RING, max_sessions: int = MAX_SESSIONS) -> None:
        self.ring, self.max_sessions = ring, max_sessions
        self._rings: dict[Key, deque[Sample]] = {}
        self._lock = threading.Lock()

    def record(self, tenant: str | None, session: str, sample: Sample) -> None:
        key = (tenant, session)
        with self._lock:
            ring = self._rings.pop(key, None) or deque(maxlen=self.ring)
            ring.append(sample)
            self._rings[key] = ring  # newest last: the first key is the least recently fed
            while len(self._rings) > self.max_sessions:
                del self._rings[next(iter(self._rings))]

    def latest(self, tenant: str | None, session: str) -> Sample | None:
        with self._lock:
            ring = self._rings.get((tenant, session))
            return ring[-1] if ring else None

    def series(
        self, tenant: str | None, session: str, seconds: float = 3600.0, now: float | None = None
    ) -> list[Sample]:
        """The samples of the last ``seconds``, oldest first."""
        since = (time.time() if now is None else now) - seconds
        with self._lock:
            return [s for s in self._rings.get((tenant, session), ()) if s.at >= since]

    def keep_only(self, keys: set[Key]) -> None:
        """Forget the rings of sessions that are gone."""
        with self._lock:
            for key in [k for k in self._rings if k not in keys]:
                del self._rings[key]


def sample_round(sessions: Any, history: StatsHistory) -> int:
    """Sample every running session once (all tenants); the number sampled."""
    rows = sessions.list(None)
    history.keep_only({(row["tenant"], row["sessionId"]) for row in rows})
    engines: dict[str, dict[str, dict[str, Any]] | None] = {}
    sampled = 0
    for row in rows:
        if row["host"] not in engines:
            engines[row["host"]] = engine_states(row["host"])
        state = (engines[row["host"]] or {}).get(row.get("container") or "", {})
        if state.get("status") != "running":
            continue
        try:
            workspace = sessions.workspace(row["sessionId"], row["tenant"])
        except Exception:  # gone meanwhile, or its manifest unreadable: next round
            log.debug("session %s: no workspace", row["sessionId"], exc_info=True)
            continue
        try:
            history.record(
                row["tenant"], row["sessionId"], sample_of(workspace.stats(), time.time())
            )
            sampled += 1
        except Exception:
            log.debug("stats of session %s", row["sessionId"], exc_info=True)
        finally:
            with contextlib.suppress(Exception):
                workspace.client.close()
    return sampled


class Sampler:
    """A daemon thread running :func:`sample_round` every ``interval_s`` (from the end of
    one round to the start of the next) until :meth:`stop`."""

    def __init__(
        self,
        sessions: Any,
        history: StatsHistory,
        interval_s: float = INTERVAL_S,
        round_: Callable[[Any, StatsHistory], int] = sample_round,
    ) -> None:
        self.sessions, self.history, self.interval_s = sessions, history, interval_s
        self._round = round_
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dockyard-stats", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._round(self.sessions, self.history)
            except Exception:  # the engine or the state directory may be away a while
                log.exception("sampling session stats failed")
            self._stop.wait(self.interval_s)
