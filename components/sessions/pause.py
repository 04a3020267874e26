"""Pause and resume a session: the engine's freezer cgroup (``docker pause``/``unpause``).

A paused session keeps every process and its memory exactly as they were; it uses no CPU
and answers nothing until it is resumed (an exec or file call, or an SSH certificate,
resumes it: :mod:`.hibernate`'s wake on use; so does an authenticated preview request,
through roles/preview_proxy's watcher). Both verbs are
idempotent no-ops when the session already is where it is asked to go (``changed:
false``, audited with ``already paused`` / ``already running``); a session whose
container is not running (stopped, restarting, gone) is a :class:`~dockyard.errors.Conflict`
naming its state. The Kubernetes backend has no pause: a Conflict naming the backend.

Refresh and destroy resume a paused session first (:func:`resume_for`), so its container
stops the normal way (the entrypoint's checkpoint on SIGTERM runs; a frozen process
cannot take a signal, and the engine would wait the whole stop timeout and kill it).
A backup of a paused session reads its volumes as they are (nothing writes them).

The service's ``resume`` (:func:`.hibernate.resume`) also starts a hibernated session, and
:func:`.hibernate.wake` resumes a session for a data-plane call that found it paused or
hibernated (wake on use: the caller does nothing).
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .. import capacity
from ..errors import Conflict, Failed
from . import audit
from .located import engine_container, labelled_as_session
from .registry import Record
from .request import SessionPlan
from .service import SessionsLike
from .settings import Paths

PAUSED = "paused"
RUNNING = "running"


@dataclass(frozen=True)
class State:
    """The answer of pause and resume: where the session is now, and whether this call
    moved it."""

    sessionId: str
    status: str
    changed: bool
    detail: str = ""
    """How it moved, when there is more to say (a resume from hibernation: restored from
    its checkpoint, or started cold and why)."""

    def as_dict(self) -> dict[str, Any]:
        """Without ``detail`` when there is none (the answer pause and resume always had)."""
        return {k: v for k, v in asdict(self).items() if k != "detail" or v}


def secret_names(request: Mapping[str, Any]) -> list[str]:
    names = request.get("secrets")
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def plan_of(sessions: SessionsLike, record: Record) -> SessionPlan:
    """The session's plan as destroy reads it (secret names only, never values)."""
    planned, _ = sessions.plan(
        record.request, dict.fromkeys(secret_names(record.request), ""), naming=record.naming
    )
    return planned


def require_docker(plan: SessionPlan, verb: str) -> None:
    backend = plan.config.backend
    if backend != "docker":
        raise Conflict(
            f"session {plan.session_id!r}: {verb} is not supported with backend {backend} "
            "(allowed: sessions of backend docker; the engine's freezer and image commit "
            "have no Kubernetes equivalent here)"
        )


def connect(host: str) -> Any:
    """A Docker SDK client of a record's host (``local``: the local engine)."""
    import docker  # the SDK only for verbs that reach an engine

    try:
        return capacity.connect(None if host == "local" else host)
    except docker.errors.DockerException as exc:
        raise Failed(f"the engine ({host}) cannot be reached: {exc}") from None


def container_of(record: Record, client: Any) -> Any:
    """The session's container on its engine, found by its registered engine name and
    checked by the labels dockyard put on it (never by what a manifest says)."""
    container = engine_container(record, client, Conflict)
    if not labelled_as_session(record, container):
        raise Conflict(
            f"session {record.session_id!r}: the engine's {record.environment_id} is not labelled as this session's; "
            "refusing to act on it"
        )
    return container


class Busy(Conflict):
    """The session's :func:`frozen_state` is held (a snapshot or backup runs) and the
    caller would not wait for it."""


@contextlib.contextmanager
def frozen_state(where: Paths, record: Record, *, wait: bool = True) -> Iterator[None]:
    """Exclusive, across this machine's processes, over a session's paused-or-running
    state: a snapshot copies while it holds the session paused, so no pause, resume or
    other snapshot may change that state meanwhile (they wait). ``wait=False``: a held
    lock raises :class:`Busy` at once (a request's thread never waits for a backup)."""
    directory = where.state / "locks"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / f"{record.stack_name}.freeze", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(
                f"session {record.session_id!r} is busy: a snapshot or backup of it is "
                "running; retry in a few seconds"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def shared_client(host: str) -> Any:
    """One client per engine for this process's pauses and resumes: a new client first
    asks the engine its API version, a round trip a resume should not pay each time (the
    HTTP face calls it many times). The SDK's client may be shared between threads."""
    with _CLIENTS_LOCK:
        if host not in _CLIENTS:
            _CLIENTS[host] = connect(host)
        return _CLIENTS[host]


@contextlib.contextmanager
def acting(
    sessions: SessionsLike, verb: str, session: str, tenant: str | None, *, wait: bool = True
) -> Iterator[Any]:
    """(record, container, audit entry) of ``verb`` on an existing session, audited, under
    the session's :func:`frozen_state` lock (``wait=False``: :class:`Busy` if it is held)."""
    record = sessions.registry.find(session, tenant)
    with audit.recorded(
        sessions.where.audit_log,
        verb,
        session=session,
        tenant=record.tenant,
        host=record.host,
        stack=record.stack_name,
    ) as entry:
        require_docker(plan_of(sessions, record), verb)
        with frozen_state(sessions.where, record, wait=wait):
            yield record, container_of(record, shared_client(record.host)), entry


def _move(
    sessions: SessionsLike,
    verb: str,
    session: str,
    tenant: str | None,
    *,
    source: str,
    target: str,
    act: Callable[[Any], None],
    allowed: str,
) -> State:
    """Take a session's container from ``source`` to ``target`` with ``act``; already at
    ``target``: no change (audited as such); anywhere else: a Conflict naming its state."""
    with acting(sessions, verb, session, tenant) as (record, container, entry):
        status = container.status
        if status == target:
            entry["detail"] = f"already {target}"
            return State(record.session_id, target, False)
        if status != source:
            raise Conflict(
                f"session {record.session_id!r}: its container is {status}, not {source}; "
                f"only a {source} session can be {verb}d (allowed: {allowed})"
            )
        act(container)
        return State(record.session_id, target, True)


def pause(sessions: SessionsLike, session: str, tenant: str | None = None) -> State:
    """Freeze the session's processes (memory kept). Already paused: no change."""
    return _move(
        sessions,
        "pause",
        session,
        tenant,
        source=RUNNING,
        target=PAUSED,
        act=freeze,
        allowed="`dockyard refresh` it first",
    )


def resume(sessions: SessionsLike, session: str, tenant: str | None = None) -> State:
    """Thaw a paused session where it was. Already running: no change. (The service's
    ``resume`` is :func:`.hibernate.resume`: it also starts a hibernated session.)"""
    return _move(
        sessions,
        "resume",
        session,
        tenant,
        source=PAUSED,
        target=RUNNING,
        act=thaw,
        allowed="`dockyard refresh` it",
    )


FREEZE_TRIES = 6
"""runc's freeze gives up ("unable to freeze") when a process of the container is in an
uninterruptible wait for longer than it waits, e.g. disk I/O on a busy host: retried with
backoff (0.1 s doubling, about 3 s in all) before it is reported."""


def freeze(container: Any) -> None:
    """``container.pause()``, retried while the runtime could not freeze it yet; the
    engine's refusal becomes a :class:`Failed` naming the session's container."""
    import docker.errors

    delay = 0.1
    for attempt in range(FREEZE_TRIES):
        try:
            container.pause()
            return
        except docker.errors.APIError as exc:
            transient = "unable to freeze" in str(exc)
            if not transient or attempt == FREEZE_TRIES - 1:
                raise Failed(
                    f"the engine could not pause {container.name}: {exc.explanation or exc}"
                    + (" (its processes would not freeze: retry)" if transient else "")
                ) from None
        time.sleep(delay)
        delay *= 2


def thaw(container: Any) -> None:
    import docker.errors

    try:
        container.unpause()
    except docker.errors.APIError as exc:
        raise Failed(
            f"the engine could not resume {container.name}: {exc.explanation or exc}"
        ) from None


def resume_for(record: Record) -> bool:
    """Before refresh or destroy replaces or removes a session's container: resume
    it if it is paused, so it stops the normal way. True if it was paused. Anything the
    engine says is left to the driver's own call to report."""
    import docker.errors

    try:
        client = connect(record.host)
    except Failed:
        return False
    with contextlib.closing(client):
        try:
            container = container_of(record, client)
            if container.status == PAUSED:
                container.unpause()
                return True
        except (Conflict, docker.errors.DockerException):
            return False
    return False
