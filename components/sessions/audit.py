"""The sessions' audit trail: one JSON line per lifecycle action (:func:`recorded` around
it), read back filtered (:func:`read`: by session, tenant, action, time and count, the
filters every face offers — ``dockyard audit`` and ``GET /api/audit``).

Lines are written by the one audit writer, :func:`dockyard.host.audit_trail.append` (fields,
locking, rotation), which the host scripts (health refresh, idle stop and power-off,
workspace backups) write their lines with too. A process that writes many lines at once
(the HTTP server: one per request) hands them to :func:`appended`, which writes whatever
is waiting as one group (:func:`~dockyard.host.audit_trail.append_lines`: one lock, one
write of whole lines, one ``fsync``) and returns once its line is on disk. ``actor`` is the CI actor if one is set,
else the OS user. Values are names and numbers only: no request body, env value or secret
is ever written.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import getpass
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from ..host.audit_trail import (
    DETAIL_MAX,
    FIELDS,
    KEEP,
    MAX_BYTES,
    append,
    append_lines,
    now,
)

__all__ = [
    "DETAIL_MAX",
    "FIELDS",
    "KEEP",
    "MAX_BYTES",
    "actor",
    "append",
    "appended",
    "moment",
    "now",
    "read",
    "recorded",
]
SINCE_EXAMPLE = "2026-12-07T00:00:00Z"
EXIT_FLUSH_S = 10.0
"""At exit, the lines still queued get this long to be written (a hung disk cannot keep
the process alive for ever)."""

logger = logging.getLogger(__name__)

# CI systems name who triggered a run; a person at a terminal is the OS user.
CI_ACTOR_VARIABLES = ("GITHUB_ACTOR", "GITLAB_USER_LOGIN", "BUILDKITE_BUILD_CREATOR", "CI_ACTOR")


def actor(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    for name in CI_ACTOR_VARIABLES:
        if env.get(name):
            return f"ci:{env[name]}"
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@contextlib.contextmanager
def recorded(log: Path, action: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Audit ``action`` around a block: one line with its result and duration, also when
    the block raises (then ``result: error`` and the exception's type as ``detail``)."""
    entry: dict[str, Any] = {"action": action, "actor": actor(), **fields}
    started = time.monotonic()
    try:
        yield entry
    except BaseException as exc:
        entry["result"] = "error"
        entry.setdefault("detail", type(exc).__name__)
        raise
    else:
        entry.setdefault("result", "ok")
    finally:
        entry.update(time=now(), duration_ms=round((time.monotonic() - started) * 1000))
        append(log, entry)


Done = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class GroupWriter:
    """The lines of one log from this process, written by one thread in the order they
    came, each group of waiting lines at once (:func:`append_lines`). No timer: while one
    group is written and synced the next one gathers, so a line waits at most for the group
    before it and its own; a caller learns its line is on disk (or the write's error) from
    its future. At most :attr:`MAX_WAITING` lines wait: beyond, a caller waits for room
    before its line is queued (a slow or hung disk cannot grow memory without bound). The
    thread ends after :attr:`LINGER_S` idle; it is a daemon, and lines handed over before
    the process exits are written by :func:`flush_all` (the server's shutdown; at exit,
    for at most :data:`EXIT_FLUSH_S`)."""

    MAX_GROUP = 512
    """Lines per write at most (≈ 150 KB)."""
    MAX_WAITING = 4 * MAX_GROUP
    """Lines queued at most."""
    LINGER_S = 0.2

    def __init__(self, log: Path) -> None:
        self.log = log
        self._waiting: list[tuple[Mapping[str, Any], Done | None]] = []
        lock = threading.Lock()
        self._wake = threading.Condition(lock)
        self._settled = threading.Condition(lock)
        self._roomy = threading.Condition(lock)
        self._room: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._thread: threading.Thread | None = None
        self._queued = self._done = 0
        self.groups = 0
        """Groups written (for tests and figures)."""

    def submit(self, entry: Mapping[str, Any], done: Done | None = None) -> None:
        """Queue ``entry``'s line (waiting for room first when :attr:`MAX_WAITING` lines
        wait); ``done``'s future gets the outcome once it is written. For a thread; an event
        loop's caller uses :meth:`offer`."""
        with self._wake:
            while len(self._waiting) >= self.MAX_WAITING:
                self._roomy.wait()
            self._queue(entry, done)

    def offer(self, entry: Mapping[str, Any], done: Done) -> asyncio.Future[None] | None:
        """Queue ``entry``'s line as :meth:`submit` does and answer ``None``; when
        :attr:`MAX_WAITING` lines wait, queue nothing and answer a future of ``done``'s loop
        that is resolved once there is room (then offer again; :meth:`withdraw` it if the
        caller gives up)."""
        with self._wake:
            if len(self._waiting) < self.MAX_WAITING:
                self._queue(entry, done)
                return None
            loop = done[0]
            room: asyncio.Future[None] = loop.create_future()
            self._room.append((loop, room))
            return room

    def withdraw(self, room: asyncio.Future[None]) -> None:
        """Forget a future :meth:`offer` answered (its caller went away)."""
        with self._wake:
            self._room = [(loop, future) for loop, future in self._room if future is not room]

    def _queue(self, entry: Mapping[str, Any], done: Done | None) -> None:
        self._waiting.append((entry, done))
        self._queued += 1
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"audit {self.log.name}", daemon=True
            )
            self._thread.start()
        else:
            self._wake.notify()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every line queued before this call is written (or failed), for at most
        ``timeout`` seconds (``None``: no limit); whether they were."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._settled:
            target = self._queued
            while self._done < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._settled.wait(left)
            return True

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._waiting:
                    self._wake.wait(self.LINGER_S)
                if not self._waiting:
                    self._thread = None
                    return
                group = self._waiting[: self.MAX_GROUP]
                del self._waiting[: self.MAX_GROUP]
                room, self._room = self._room, []
                self._roomy.notify_all()
            _settle([(waiter, None) for waiter in room])
            outcomes = _written(self.log, [entry for entry, _ in group])
            with self._settled:
                self.groups += 1
                self._done += len(group)
                self._settled.notify_all()
            _settle([(done, out) for (_, done), out in zip(group, outcomes, strict=True) if done])


def _written(log: Path, entries: list[Mapping[str, Any]]) -> list[BaseException | None]:
    """Each entry's outcome: the group's write, or, when an entry cannot be encoded (a
    value JSON cannot hold: nothing was written), line by line, so one bad line never
    costs the others theirs. A file error is every line's."""
    try:
        append_lines(log, entries)
    except OSError as exc:
        return [exc] * len(entries)
    except Exception:
        return [_one(log, entry) for entry in entries]
    return [None] * len(entries)


def _one(log: Path, entry: Mapping[str, Any]) -> BaseException | None:
    try:
        append_lines(log, [entry])
    except Exception as exc:  # this caller learns it
        return exc
    return None


def _settle(waiters: list[tuple[Done, BaseException | None]]) -> None:
    """Each loop woken once for all of its waiters of a group."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], Any]]] = {}
    for (loop, future), outcome in waiters:
        by_loop.setdefault(loop, []).append((future, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(_resolve, settled)


def _resolve(settled: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for future, error in settled:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


_writers: dict[Path, GroupWriter] = {}
_writers_lock = threading.Lock()


def writer(log: Path) -> GroupWriter:
    """This process's :class:`GroupWriter` of ``log``."""
    with _writers_lock:
        found = _writers.get(log)
        if found is None:
            found = _writers[log] = GroupWriter(log)
        return found


def flush_all(timeout: float) -> bool:
    """Wait until the lines every :class:`GroupWriter` of this process had queued are
    written, for at most ``timeout`` seconds in all; whether they were."""
    deadline = time.monotonic() + timeout
    with _writers_lock:
        writers = list(_writers.values())
    written = True
    for group in writers:  # each one, also after one that timed out
        written = group.flush(max(0.0, deadline - time.monotonic())) and written
    return written


@atexit.register
def _flush_at_exit() -> None:
    if not flush_all(EXIT_FLUSH_S):
        logger.warning("audit lines still queued after %g s at exit are lost", EXIT_FLUSH_S)


async def appended(log: Path, entry: Mapping[str, Any]) -> None:
    """:func:`append` for an event loop, without a thread of its own per line: ``entry``
    joins this process's next group for ``log``; returns once its line is on disk (raises
    the write's ``OSError``). Lines of one loop land in the order they were handed over."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    future.add_done_callback(_retrieved)
    group = writer(log)
    while (room := group.offer(entry, (loop, future))) is not None:
        try:
            await room  # the queue is full: the disk is not keeping up
        except asyncio.CancelledError:
            group.withdraw(room)
            logger.warning("audit line dropped: its caller went away while the queue was full")
            raise
    # A caller cancelled (its client went away) once its line is queued still gets it.
    await asyncio.shield(future)


def _retrieved(future: asyncio.Future[None]) -> None:
    """An error nobody awaits any more (the caller was cancelled) is not reported twice."""
    if not future.cancelled():
        future.exception()


def moment(text: str, key: str = "since") -> datetime:
    """An ISO 8601 time as a face's ``since`` gives it (``Z`` or an offset; none: UTC)."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            "audit", [f"{key}: {text!r} is not an ISO 8601 time (allowed: e.g. {SINCE_EXAMPLE})"]
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _at(text: str) -> datetime:
    """A line's time; one that cannot be read is older than any ``since``."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def read(
    log: Path,
    *,
    session: str | None = None,
    tenant: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Lines of the current log and its rotations, oldest first, filtered: ``session``,
    ``tenant`` and ``action`` equal to those given; ``since``: at or after that time (one
    without a zone is UTC); ``limit``: at most that many, the newest. A line that is not a
    JSON object with a string ``time`` and ``action`` is no audit line: left out."""
    problems = []
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        problems.append(f"limit: {limit!r} is not allowed (allowed: an integer >= 1)")
    if since is not None and not isinstance(since, datetime):
        problems.append(f"since: {since!r} is not allowed (allowed: a time, e.g. {SINCE_EXAMPLE})")
    if problems:
        raise InvalidInput("audit", problems)
    after = None if since is None else since if since.tzinfo else since.replace(tzinfo=UTC)
    files = [log.with_name(f"{log.name}.{i}") for i in range(KEEP, 0, -1)] + [log]
    entries = []
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not (
                    isinstance(entry, dict)
                    and isinstance(entry.get("time"), str)
                    and isinstance(entry.get("action"), str)
                ):
                    continue
                if session and entry.get("session") != session:
                    continue
                if tenant and entry.get("tenant") != tenant:
                    continue
                if action and entry["action"] != action:
                    continue
                if after is not None and _at(entry["time"]) < after:
                    continue
                entries.append(entry)
    return entries[-limit:] if limit is not None else entries
