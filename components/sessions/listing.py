"""One page of the sessions list, filtered by tenant and labels: what ``GET /api/sessions``
answers (and any face that pages).

The records are filtered and counted first and only the page's rows are expanded with
their manifest (container name and port mappings), so a page costs what it shows, not
what the registry holds. Records come from the registry's index and manifests through
:func:`.registry_index.cached`: a file is read again only when it changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .. import manifest as manifest_contract
from ..errors import InvalidInput
from . import registry_index
from .registry import Record
from .service import SessionsLike

T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    """The page's rows, each like :meth:`dockyard.sessions.Sessions.list`'s plus ``labels``."""
    total: int
    """Sessions matching the filters, on every page."""
    offset: int
    limit: int

    @property
    def next(self) -> int | None:
        """The offset of the next page, if any."""
        return self.offset + self.limit if self.offset + self.limit < self.total else None


def labels(record: Record) -> dict[str, str]:
    """The labels its request gave (none if they were not a mapping)."""
    given = record.request.get("labels")
    return {str(k): str(v) for k, v in given.items()} if isinstance(given, dict) else {}


def matches(found: dict[str, str], wanted: Sequence[str]) -> bool:
    """Whether ``found`` has every ``KEY`` (any value) and ``KEY=VALUE`` of ``wanted``."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in found or (sep and found[key] != value):
            return False
    return True


def _container(path: str) -> tuple[str, list[dict[str, Any]]]:
    manifest = manifest_contract.load(path)
    return manifest["container"]["name"], manifest["container"]["portMappings"]


def row(record: Record) -> dict[str, Any]:
    """The session's list row; ``container`` and ``ports`` only when its manifest reads."""
    expanded: dict[str, Any] = {
        "sessionId": record.session_id,
        "tenant": record.tenant,
        "stack": record.stack_name,
        "host": record.host,
        "cwd": record.cwd,
        "createdAt": record.created_at,
        "manifest": record.manifest_path,
        "labels": labels(record),
    }
    try:
        name, ports = registry_index.cached(record.manifest_path, "manifest", _container)
    except (OSError, manifest_contract.ManifestError):
        return expanded
    expanded["container"] = name
    expanded["ports"] = [dict(mapping) for mapping in ports]
    return expanded


def page(
    sessions: SessionsLike,
    tenant: str | None = None,
    label: Sequence[str] = (),
    offset: int = 0,
    limit: int = 100,
) -> Page:
    """Sessions of ``tenant`` (every one: None) with every label of ``label`` (``KEY`` or
    ``KEY=VALUE``), in stack name order; rows ``offset`` to ``offset + limit``."""
    problems = [
        f"{name}: {value!r} is not allowed (allowed: {allowed})"
        for name, value, allowed in (
            ("offset", offset, "an integer >= 0"),
            ("limit", limit, "an integer >= 1"),
        )
        if isinstance(value, bool) or not isinstance(value, int) or value < (name == "limit")
    ]
    if problems:
        raise InvalidInput("list", problems)
    found = [r for r in sessions.registry.all(tenant) if matches(labels(r), label)]
    return Page([row(r) for r in found[offset : offset + limit]], len(found), offset, limit)


@dataclass
class _Slot(Generic[T]):
    running: asyncio.Future[T] | None = None
    """The run under way: started before some calls now waiting arrived."""
    queued: asyncio.Future[T] | None = None
    """The result of the next run, for the calls that arrived while ``running`` ran."""
    queued_run: Callable[[], Awaitable[T]] | None = None


class Coalesced(Generic[T]):
    """Identical calls at the same time answered by one run, never by an older one: a call
    joins only a run that starts *after* it arrived. The first call starts a run; calls
    that arrive while it runs wait for it to end and share the next run, started then. So
    whatever was written before a call arrived (a create, a destroy) is in its answer, as
    if it had run alone, and N identical calls at once cost at most two runs, not N.

    For one event loop (the server's); ``run`` is what the call would have done alone
    (the face's page read in the service pool). A run's error is every joined call's."""

    def __init__(self) -> None:
        self._slots: dict[Hashable, _Slot[T]] = {}
        self.runs = 0
        """Runs started (for tests and figures)."""

    async def __call__(self, key: Hashable, run: Callable[[], Awaitable[T]]) -> T:
        """``run()``'s result, or that of a run of the same ``key`` started after now."""
        slot = self._slots.setdefault(key, _Slot())
        if slot.running is None:
            waited = self._start(key, slot, run)
        else:
            if slot.queued is None:
                slot.queued = asyncio.get_running_loop().create_future()
                slot.queued.add_done_callback(_retrieved)
                slot.queued_run = run
            waited = slot.queued
        # A caller that goes away (a client disconnects) does not cancel the others' run.
        return await asyncio.shield(waited)

    def _start(
        self, key: Hashable, slot: _Slot[T], run: Callable[[], Awaitable[T]]
    ) -> asyncio.Future[T]:
        self.runs += 1
        started = asyncio.ensure_future(run())
        slot.running = started
        started.add_done_callback(lambda done: self._ended(key, slot, done))
        return started

    def _ended(self, key: Hashable, slot: _Slot[T], done: asyncio.Future[T]) -> None:
        _retrieved(done)
        slot.running = None
        queued, run = slot.queued, slot.queued_run
        if queued is None or run is None:
            del self._slots[key]
            return
        slot.queued = slot.queued_run = None
        self._start(key, slot, run).add_done_callback(lambda ran: _relay(ran, queued))


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark an error as seen (asyncio logs one nobody awaited: every caller gone)."""
    if not future.cancelled():
        future.exception()


def _relay(source: asyncio.Future[T], target: asyncio.Future[T]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())
