"""Hibernate a session: its processes and memory checkpointed to disk with CRIU through
the engine's checkpoint (``docker checkpoint create``), its container stopped; ``resume``
starts it again from that checkpoint (issue 29 item 3).

Only where the host can do it, measured, never assumed: the engine runs in experimental
mode (its checkpoint endpoints answer 501 otherwise) and, for the local engine, ``criu
check`` passes. Anywhere else ``hibernate`` is a :class:`~dockyard.errors.Conflict` that
says what was measured and what the operator can do; nothing is faked. Measured on this
project's CI machines (Debian 12, kernel 6.18, engine 20.10): the engine is not
experimental and Debian 12's criu 3.17.1 fails ``criu check`` ("vdso: Failed to fill self
vdso symtable"), so hibernate answers that Conflict there (docs/instant-sessions.md). Debian
13's CRIU 4.1.1, built there, passes ``criu check`` and checkpoints and restores a container
whose processes run as root, but not a session's (they run as uid 1000: CRIU cannot read
their rlimits, "Can't get rlimit 0: Operation not permitted", because the engine runs
without CAP_SYS_RESOURCE on those machines); the engine's refusal is then a Failed.

A hibernated session is its container, exited, holding the checkpoint
:data:`CHECKPOINT`. ``resume`` (:func:`restore`, called by :func:`resume` and by
:func:`wake`, a wake on use) starts it from the checkpoint; when the restore fails it starts the same
container cold: the same container has the same volumes, so the session comes back with
its workspace, config and home (its processes start anew), never without them. The
checkpoint is removed once the session runs again, either way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Conflict, Failed
from . import pause as pausing
from .pause import PAUSED, RUNNING, State
from .registry import Record
from .service import SessionsLike

CHECKPOINT = "dockyard-hibernate"
"""The checkpoint's name on the container (the idle monitor's hibernate uses the same; a
contract test keeps them equal)."""
HIBERNATED = "hibernated"
STOPPED = ("exited", "created")
CRIU_CHECK_TIMEOUT_S = 30
SHOWN_BYTES = 600
"""How much of ``criu check``'s output a refusal quotes (its last lines say why)."""
ENGINE_PIDFILES = ("/run/docker.pid", "/var/run/docker.pid")
"""Where a local dockerd writes its process id (its ``--pidfile`` default)."""
CAP_SYS_RESOURCE = 24
"""The capability CRIU needs to read the rlimits of processes that are not root's (a
session's run as uid 1000): without it a dump fails with "Can't get rlimit 0: Operation
not permitted" (measured on this project's CI machines, whose engine runs without it)."""

WHAT_TO_DO = (
    'what to do: run the engine with "experimental": true in /etc/docker/daemon.json '
    "(then restart dockerd), and install a CRIU that passes `criu check` on this kernel "
    "(Debian 12's criu 3.17 fails on kernel 6.18 with a vdso error: a newer CRIU, e.g. 4.1.1 "
    "built from Debian 13's source, passes it and was measured to checkpoint and restore "
    "there), first on the engine's PATH; the engine also needs CAP_SYS_RESOURCE (without "
    "it CRIU cannot dump a session's processes, which run as uid 1000: measured \"Can't "
    'get rlimit 0: Operation not permitted"); meanwhile `dockyard pause` keeps the '
    "session's processes and memory in RAM (docs/instant-sessions.md, Hibernate)"
)


@dataclass(frozen=True)
class Capability:
    """Whether an engine's host can checkpoint, and each thing measured to say so."""

    able: bool
    findings: tuple[str, ...]


def criu_check() -> tuple[bool, str]:
    """(passes, what it said) of ``criu check`` on this machine."""
    path = shutil.which("criu") or next(
        (p for p in ("/usr/sbin/criu", "/sbin/criu") if os.access(p, os.X_OK)), None
    )
    if path is None:
        return False, "criu is not installed (no `criu` on PATH or in /usr/sbin)"
    try:
        done = subprocess.run(
            [path, "check"],
            capture_output=True,
            text=True,
            timeout=CRIU_CHECK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"`criu check` could not run: {exc}"
    said = (done.stdout + done.stderr).strip()
    if done.returncode == 0:
        return True, f"`criu check` passes ({said[-SHOWN_BYTES:] or 'no output'})"
    return False, f"`criu check` fails (exit {done.returncode}): {said[-SHOWN_BYTES:]}"


def engine_capabilities(
    pidfiles: tuple[str, ...] = ENGINE_PIDFILES, proc_root: str = "/proc"
) -> tuple[bool, str]:
    """(has it or cannot tell, what was read) of the local dockerd's CAP_SYS_RESOURCE, read
    from ``/proc/<pid>/status`` through its pidfile. Unreadable (no pidfile, another pid
    namespace, not a dockerd): not held against the host, the engine's answer decides."""
    for pidfile in pidfiles:
        try:
            pid = int(Path(pidfile).read_text().strip())
            proc = Path(proc_root, str(pid))
            if proc.joinpath("comm").read_text().strip() != "dockerd":
                continue
            status = proc.joinpath("status").read_text()
        except (OSError, ValueError):
            continue
        effective = next((x.split()[1] for x in status.splitlines() if x.startswith("CapEff:")), "")
        try:
            held = bool(int(effective, 16) >> CAP_SYS_RESOURCE & 1)
        except ValueError:
            continue
        if held:
            return True, f"the engine (dockerd pid {pid}) has CAP_SYS_RESOURCE"
        return False, (
            f"the engine (dockerd pid {pid}) runs without CAP_SYS_RESOURCE (CapEff "
            f"{effective}): CRIU cannot dump a session's processes (uid 1000)"
        )
    return True, "the engine's capabilities could not be read here (its answer decides)"


def capability(
    client: Any,
    host: str,
    check: Callable[[], tuple[bool, str]] = criu_check,
    caps: Callable[[], tuple[bool, str]] = engine_capabilities,
) -> Capability:
    """Measure whether ``client``'s engine can checkpoint: its experimental mode (asked of
    the engine) and, for the local engine, ``criu check`` on this machine and the engine
    process's CAP_SYS_RESOURCE. A remote engine's CRIU cannot be checked from here; its
    own answer to the checkpoint decides."""
    import docker.errors

    findings: list[str] = []
    able = True
    try:
        experimental = bool(client.info().get("ExperimentalBuild"))
    except docker.errors.DockerException as exc:
        raise Failed(f"the engine ({host}) cannot be reached: {exc}") from None
    if not experimental:
        able = False
        findings.append(f"the engine ({host}) does not run in experimental mode")
    if host == "local":
        passes, said = check()
        able = able and passes
        findings.append(said)
        held, read = caps()
        able = able and held
        if not held:
            findings.append(read)
    else:
        findings.append(f"criu on {host} is not checked from here (its engine answers)")
    return Capability(able, tuple(findings))


class Checkpoints:
    """The engine's checkpoint endpoints for one container (experimental in the engine;
    the SDK has no methods for them, so its low-level client calls them)."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self.api = container.client.api

    def _path(self, template: str, *args: str) -> str:
        return str(self.api._url(template, self.container.id, *args))

    def names(self) -> list[str]:
        """The container's checkpoints; [] when the engine cannot list them."""
        import docker.errors

        try:
            found = self.api._result(self.api._get(self._path("/containers/{0}/checkpoints")), True)
        except docker.errors.DockerException:
            return []
        return [str(c.get("Name")) for c in found or [] if isinstance(c, dict)]

    def create(self, name: str) -> None:
        """Checkpoint and stop the container (``Exit``)."""
        response = self.api._post_json(
            self._path("/containers/{0}/checkpoints"), data={"CheckpointID": name, "Exit": True}
        )
        self.api._raise_for_status(response)

    def remove(self, name: str) -> None:
        self.api._raise_for_status(
            self.api._delete(self._path("/containers/{0}/checkpoints/{1}", name))
        )

    def start(self, checkpoint: str | None) -> None:
        """Start the container, from ``checkpoint`` when given."""
        params = {"checkpoint": checkpoint} if checkpoint else {}
        response = self.api._post(self._path("/containers/{0}/start"), params=params)
        self.api._raise_for_status(response)


def checkpoints_of(container: Any) -> Checkpoints:
    return Checkpoints(container)


def is_hibernated(container: Any) -> bool:
    """The container is stopped and holds dockyard's checkpoint (a container object
    without an engine client to ask holds none this module can see)."""
    if container.status not in STOPPED or getattr(container, "client", None) is None:
        return False
    return CHECKPOINT in checkpoints_of(container).names()


def _explained(exc: Exception) -> str:
    return str(getattr(exc, "explanation", None) or exc)


def hibernate(
    sessions: SessionsLike,
    session: str,
    tenant: str | None = None,
    probe: Callable[[Any, str], Capability] | None = None,
) -> State:
    """Checkpoint the session's processes and memory to disk and stop its container.
    Already hibernated: no change. A host that cannot checkpoint: a Conflict saying what
    was measured and what to do (the session is left as it was)."""
    import docker.errors

    with pausing.acting(sessions, "hibernate", session, tenant) as (record, container, entry):
        status = container.status
        if status in STOPPED and is_hibernated(container):
            entry["detail"] = f"already {HIBERNATED}"
            return State(record.session_id, HIBERNATED, False)
        if status not in (RUNNING, PAUSED):
            raise Conflict(
                f"session {record.session_id!r}: its container is {status}, not running; "
                "only a running or paused session can be hibernated (allowed: `dockyard "
                "refresh` it first)"
            )
        found = (probe or capability)(container.client, record.host)
        if not found.able:
            raise Conflict(
                f"session {record.session_id!r}: hibernate is not available on its host "
                f"({record.host}): {'; '.join(found.findings)}. The session is left "
                f"{status}; {WHAT_TO_DO}"
            )
        if status == PAUSED:
            pausing.thaw(container)  # CRIU freezes the processes itself
        checkpoints = checkpoints_of(container)
        if CHECKPOINT in checkpoints.names():  # a stale one (a restore that failed)
            checkpoints.remove(CHECKPOINT)
        try:
            checkpoints.create(CHECKPOINT)
        except docker.errors.APIError as exc:
            with contextlib.suppress(docker.errors.DockerException):
                container.reload()
            raise Failed(
                f"session {record.session_id!r}: the engine could not checkpoint "
                f"{container.name}: {_explained(exc)}; the session is left {container.status}"
            ) from None
        return State(record.session_id, HIBERNATED, True)


def restore(record: Record, container: Any, entry: dict[str, Any]) -> State:
    """Start a hibernated session from its checkpoint; if that fails, start the same
    container cold (its volumes: workspace, config, home, as they were). The checkpoint
    is removed once it runs. Raises Failed only when the container cannot start at all
    (its volumes are untouched; `dockyard refresh` recreates the container on them)."""
    import docker.errors

    checkpoints = checkpoints_of(container)
    try:
        checkpoints.start(CHECKPOINT)
        detail = "restored from its checkpoint (processes and memory as they were)"
    except docker.errors.APIError as exc:
        why = _explained(exc)
        try:
            checkpoints.start(None)
        except docker.errors.APIError as cold:
            entry["detail"] = f"restore failed ({why}); cold start failed"
            raise Failed(
                f"session {record.session_id!r}: its checkpoint could not be restored ({why}) "
                f"and its container would not start cold ({_explained(cold)}); its volumes "
                f"are untouched: `dockyard refresh {record.session_id}` recreates the "
                "container on them"
            ) from None
        detail = (
            f"restore failed ({why}); started cold with its workspace, config and home "
            "(processes started anew)"
        )
    with contextlib.suppress(docker.errors.DockerException):
        checkpoints.remove(CHECKPOINT)
    entry["detail"] = detail
    return State(record.session_id, RUNNING, True, detail)


def resume(
    sessions: SessionsLike,
    session: str,
    tenant: str | None = None,
    *,
    woken: str = "",
    wait: bool = True,
) -> State:
    """Thaw a paused session where it was, or start a hibernated one from its checkpoint
    (:func:`.restore`: cold, with its volumes, if the restore fails). Already
    running: no change. ``woken``: what woke it (a call that needed it running), written
    to the audit line's detail. ``wait=False``: :class:`.pause.Busy` at once while a
    snapshot or backup holds the session."""
    with pausing.acting(sessions, "resume", session, tenant, wait=wait) as (
        record,
        container,
        entry,
    ):
        state = _resumed(record, container, entry)
        if woken:
            said = (f"woken by {woken}", entry.get("detail"))
            entry["detail"] = "; ".join(x for x in said if x)
        return state


def _resumed(record: Record, container: Any, entry: dict[str, Any]) -> State:
    status = container.status
    if status == RUNNING:
        entry["detail"] = f"already {RUNNING}"
        return State(record.session_id, RUNNING, False)
    if status == PAUSED:
        pausing.thaw(container)
        return State(record.session_id, RUNNING, True)
    if is_hibernated(container):
        return restore(record, container, entry)
    raise Conflict(
        f"session {record.session_id!r}: its container is {status}, not paused or "
        f"hibernated; only a paused or hibernated session can be resumed (allowed: "
        f"`dockyard refresh {record.session_id}` starts it again with its workspace)"
    )


def wake(
    sessions: SessionsLike, session: str, tenant: str | None, by: str, *, wait: bool = True
) -> bool:
    """Resume the session for a call that needs it running (an exec or a file call found
    it paused or stopped): True if it runs now (woken from pause or hibernation, or
    already running again), False if it cannot be woken (stopped without a checkpoint,
    gone: the caller reports its own error). Audited as a ``resume`` whose detail says what woke it.
    ``wait=False``: :class:`.pause.Busy` (raised) while a snapshot or backup holds it."""
    try:
        return resume(sessions, session, tenant, woken=by, wait=wait).status == RUNNING
    except pausing.Busy:
        raise
    except Conflict:
        return False


def wake_if_suspended(
    sessions: SessionsLike, record: Record, by: str, *, wait: bool = True
) -> bool:
    """Before something that will need the session running without passing through the
    data plane (an SSH certificate: its holder connects to the session's sshd next):
    wake it if it is paused or hibernated. One engine read when it runs (nothing woken,
    nothing audited); True if it was woken. ``wait=False``: see :func:`wake`."""
    try:
        container = pausing.container_of(record, pausing.shared_client(record.host))
    except (Conflict, Failed):
        return False  # the caller's own path reports what is wrong with it
    if container.status != PAUSED and not is_hibernated(container):
        return False
    return wake(sessions, record.session_id, record.tenant, by, wait=wait)
