"""Snapshots of a session, and forks: a new session with its files and installed packages.

A snapshot is two things on the session's engine, both the tenant's:

- its container layer, committed to the image ``dockyard-snapshot/<namespace>:<name>``
  (``namespace``: the tenant, or ``sessions`` for sessions without one), labelled
  ``dockyard.snapshot=<name>``, ``dockyard.snapshot.namespace`` and
  ``dockyard.snapshot.session``: everything installed outside the volumes;
- copies of its bounded volumes' filesystem images (:mod:`dockyard.storage`: each an ext4
  image file on the engine's host) for ``workspace``, ``config`` and ``home``, in
  ``/var/lib/dockyard/snapshots/<namespace>/<name>/``. The copy is taken while the
  session is paused (:mod:`.pause`) after a ``sync``, so it is crash-consistent; its
  journal is replayed once (``e2fsck -p``) and the session's own identity is removed
  from the config copy (:data:`SCRUBBED`: its SSH host key, an agent CLI's login). The
  copy is ``cp --reflink=auto --sparse=always``: copy-on-write where the engine's
  filesystem has reflinks (XFS, btrfs), else a copy of the allocated blocks only.

Not in a snapshot: ``/checkpoints`` (the session's own crash checkpoints), ``/run/secrets``,
``/tmp`` (memory), and processes. A session with declared volumes (named, shared or bind)
or a workspace on a host directory is refused: those are not the session's alone to copy.

A fork (:func:`fork`) is a new session created through the normal create path
(:meth:`Sessions.create`: its own id, ports, secrets, network, SSH host key, quota) from
the parent's request with the snapshot's image, after the copies were put where its
bounded volumes' images go (the create adopts an existing image and makes the rest).
Without a named snapshot, a fork takes one of its own straight into the new session's
place (one copy, not two); its image stays, listed as a snapshot of kind ``fork`` without
volumes, until the fork is destroyed and the snapshot removed.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import contract
from ..config.values import SESSION_ALLOWED
from ..contract import (
    NAMING_CURRENT,
    SESSION_ID,
    UNTENANTED_STACK,
    session_id_reserved,
)
from ..errors import Conflict, Failed, InvalidInput, NotFound
from ..storage import DISKS_DIR, disk_dir
from . import audit
from .pause import (
    PAUSED,
    RUNNING,
    connect,
    container_of,
    freeze,
    frozen_state,
    plan_of,
    require_docker,
    thaw,
)
from .registry import Record
from .request import SessionPlan
from .service import SessionsLike

REPOSITORY = "dockyard-snapshot"
SNAPSHOTS_DIR = "/var/lib/dockyard/snapshots"
LABEL_SNAPSHOT = contract.LABEL_SNAPSHOT
LABEL_NAMESPACE = contract.LABEL_SNAPSHOT_NAMESPACE
LABEL_OF = contract.LABEL_SNAPSHOT_SESSION
LABEL_KIND = contract.LABEL_SNAPSHOT_KIND
LABEL_VOLUMES = contract.LABEL_SNAPSHOT_VOLUMES
LABEL_CREATED = contract.LABEL_SNAPSHOT_CREATED
KIND_SNAPSHOT = "snapshot"
KIND_FORK = "fork"
COPIED_ROLES = ("workspace", "config", "home")
SCRUBBED = {
    "config": (
        "/ssh/ssh_host_ed25519_key",
        "/ssh/ssh_host_ed25519_key.pub",
        "/ssh/principals",
        "/ssh/sshd.log",
        "/claude/.credentials.json",
        "/codex/auth.json",
    )
}
"""Per copied role: files of the session's own identity, removed from every copy (its SSH
host key is made anew at the fork's first start; a CLI login is the user's to repeat)."""
NAME_ALLOWED = SESSION_ALLOWED
Progress = Callable[[str], None]

# $1 source directory, $2 destination directory (must not exist: exit 5), then
# role[:file,file...] specs. Runs as root in a helper on the engine, no network.
COPY_SCRIPT = r"""
set -eu
src=$1; dst=$2; shift 2
umask 077
sync
mkdir -p "$(dirname "$dst")"
mkdir "$dst" 2>/dev/null || { echo "ERROR: $dst exists" >&2; exit 5; }
for spec in "$@"; do
  role=${spec%%:*}
  [ -f "$src/$role.img" ] || { echo "ERROR: no $role image in $src" >&2; exit 3; }
  cp --reflink=auto --sparse=always "$src/$role.img" "$dst/$role.img.new"
done
for spec in "$@"; do
  role=${spec%%:*}; files=${spec#*:}; img="$dst/$role.img.new"
  rc=0; e2fsck -p "$img" >/dev/null 2>&1 || rc=$?
  [ "$rc" -le 2 ] || { echo "ERROR: the $role copy does not check clean (e2fsck $rc)" >&2; exit 4; }
  if [ "$files" != "$spec" ] && [ -n "$files" ]; then
    echo "$files" | tr ',' '\n' | sed 's/^/rm /' | debugfs -w -f - "$img" >/dev/null 2>&1 || true
  fi
  mv "$img" "$dst/$role.img"
done
"""
REMOVE_SCRIPT = r"""
set -eu
for dir in "$@"; do
  case $dir in /var/lib/dockyard/*) rm -rf -- "$dir" ;; *) exit 2 ;; esac
done
"""


@dataclass(frozen=True)
class Snapshot:
    name: str
    tenant: str | None
    session: str
    """The session it was taken of."""
    kind: str
    """``snapshot`` (image and volumes) or ``fork`` (a fork's image; its volumes went
    into the fork)."""
    image: str
    imageId: str
    volumes: list[str] = field(default_factory=list)
    createdAt: str = ""
    host: str = "local"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def namespace(tenant: str | None) -> str:
    return tenant or UNTENANTED_STACK


def validate_name(name: Any, key: str = "snapshot") -> str:
    """A snapshot or fork name: the session id grammar (it becomes an image tag, a host
    directory and, for a fork, a session)."""
    if (
        not isinstance(name, str)
        or not SESSION_ID.fullmatch(name)
        or session_id_reserved(name)
        or name.startswith(".")
    ):
        shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
        raise InvalidInput(key, [f"{key}: {shown} is not allowed (allowed: {NAME_ALLOWED})"])
    return name


def image_tag(tenant: str | None, name: str) -> str:
    return f"{REPOSITORY}/{namespace(tenant)}:{name}"


def snapshot_dir(tenant: str | None, name: str) -> str:
    return f"{SNAPSHOTS_DIR}/{namespace(tenant)}/{name}"


def refuse_unsupported(plan: SessionPlan, verb: str) -> None:
    """A snapshot copies what is the session's alone; say what it cannot copy."""
    require_docker(plan, verb)
    env = plan.environment
    problems = []
    if env.volumes:
        problems.append(
            "request.container.volumes: declared volumes are not copied by a snapshot (a "
            "fork would share or lose them); allowed: a session without declared volumes"
        )
    if env.workspace_host_path:
        problems.append(
            "request.workspaceHostPath: the workspace is a host directory, not the "
            "session's own filesystem; allowed: a session whose workspace the engine holds"
        )
    if problems:
        raise InvalidInput(f"session {plan.session_id}", problems)


def _helper(client: Any, image: str, script: str, *args: str) -> None:
    """Run ``script`` as root in a short-lived helper on the engine (no network, only the
    disk and snapshot directories). Exit 5: the destination exists."""
    import docker.errors

    try:
        client.containers.run(
            image,
            ["-c", script, "snapshot", *args],
            entrypoint="/bin/sh",
            user="0:0",
            network_mode="none",
            cap_drop=["ALL"],
            cap_add=["DAC_OVERRIDE", "CHOWN", "FOWNER"],
            security_opt=["no-new-privileges"],
            mem_limit="256m",
            pids_limit=64,
            volumes={
                DISKS_DIR: {"bind": DISKS_DIR, "mode": "rw"},
                SNAPSHOTS_DIR: {"bind": SNAPSHOTS_DIR, "mode": "rw"},
            },
            # Not dockyard.managed: quotas and host tools count and act on those.
            labels={f"{LABEL_SNAPSHOT}.helper": "1"},
            remove=True,
            stdout=False,
            stderr=True,
        )
    except docker.errors.ContainerError as exc:
        said = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        reason = said[-1] if said else f"exit {exc.exit_status}"
        if exc.exit_status == 5:
            raise Conflict(f"{reason}: remove it or choose another name") from None
        raise Failed(f"copying volumes failed: {reason}") from None
    except docker.errors.DockerException as exc:
        raise Failed(f"copying volumes failed: {exc}") from None


def _specs() -> list[str]:
    return [f"{role}:{','.join(SCRUBBED.get(role, ()))}" for role in COPIED_ROLES]


@contextlib.contextmanager
def _quiesced(sessions: SessionsLike, record: Record, container: Any) -> Iterator[None]:
    """The session paused for the block (if it ran), as it was afterwards; no pause,
    resume or other snapshot of it meanwhile (:func:`.pause.frozen_state`)."""
    with frozen_state(sessions.where, record):
        container.reload()
        with _paused(container):
            yield


@contextlib.contextmanager
def _paused(container: Any) -> Iterator[None]:
    status = container.status
    if status not in (RUNNING, PAUSED):
        raise Conflict(
            f"its container is {status}: a snapshot is taken of a running or paused session"
        )
    if status == RUNNING:
        freeze(container)
    try:
        yield
    finally:
        if status == RUNNING:
            thaw(container)


def _commit(container: Any, record: Record, name: str, kind: str, volumes: list[str]) -> Any:
    labels = {
        LABEL_SNAPSHOT: name,
        LABEL_NAMESPACE: namespace(record.tenant),
        LABEL_OF: record.session_id,
        LABEL_KIND: kind,
        LABEL_VOLUMES: ",".join(volumes),
        LABEL_CREATED: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return container.commit(
        repository=f"{REPOSITORY}/{namespace(record.tenant)}",
        tag=name,
        conf={"Labels": labels},
        pause=False,
    )


def _image(client: Any, tenant: str | None, name: str) -> Any | None:
    """The snapshot image of ``name`` in ``tenant``'s namespace, checked by its labels."""
    import docker.errors

    try:
        image = client.images.get(image_tag(tenant, name))
    except docker.errors.ImageNotFound:
        return None
    labels = image.labels or {}
    if labels.get(LABEL_SNAPSHOT) != name or labels.get(LABEL_NAMESPACE) != namespace(tenant):
        return None
    return image


def _as_snapshot(image: Any, host: str) -> Snapshot:
    labels = image.labels or {}
    space = labels.get(LABEL_NAMESPACE, "")
    return Snapshot(
        name=labels.get(LABEL_SNAPSHOT, ""),
        tenant=None if space == UNTENANTED_STACK else space,
        session=labels.get(LABEL_OF, ""),
        kind=labels.get(LABEL_KIND, KIND_SNAPSHOT),
        image=image_tag(None if space == UNTENANTED_STACK else space, labels[LABEL_SNAPSHOT]),
        imageId=image.id,
        volumes=[v for v in labels.get(LABEL_VOLUMES, "").split(",") if v],
        createdAt=labels.get(LABEL_CREATED, ""),
        host=host,
    )


def _audited(sessions: SessionsLike, action: str, **fields: Any) -> Any:
    return audit.recorded(sessions.where.audit_log, action, **fields)


def take(sessions: SessionsLike, session: str, name: str, tenant: str | None = None) -> Snapshot:
    """Snapshot ``session`` as ``name`` (its tenant's namespace): the container layer and
    copies of its workspace, config and home. A name in use is a Conflict."""
    record = sessions.registry.find(session, tenant)
    with _audited(
        sessions, "snapshot", session=session, tenant=record.tenant, host=record.host,
        stack=record.stack_name,
    ) as entry:  # fmt: skip
        validate_name(name)
        refuse_unsupported(plan_of(sessions, record), "snapshot")
        entry["detail"] = f"snapshot {name}"
        client = connect(record.host)
        with contextlib.closing(client):
            if _image(client, record.tenant, name) is not None:
                raise Conflict(
                    f"snapshot {name!r} exists (allowed: another name, or remove it first)"
                )
            container = container_of(record, client)
            with _quiesced(sessions, record, container):
                image = _commit(container, record, name, KIND_SNAPSHOT, list(COPIED_ROLES))
                try:
                    _helper(
                        client, container.image.id, COPY_SCRIPT,
                        disk_dir(record.environment_id), snapshot_dir(record.tenant, name),
                        *_specs(),
                    )  # fmt: skip
                except BaseException:
                    with contextlib.suppress(Exception):
                        client.images.remove(image.id, force=True)
                    raise
            image.reload()
            return _as_snapshot(image, record.host)


def _hosts(sessions: SessionsLike, tenant: str | None) -> list[str]:
    return sorted({"local", *(r.host for r in sessions.registry.all(tenant))})


def listing(sessions: SessionsLike, tenant: str | None = None) -> list[Snapshot]:
    """Snapshots of ``tenant``'s namespace (None: every namespace) on the engines of this
    machine's sessions."""
    import docker.errors

    found = []
    selector = [LABEL_SNAPSHOT] + ([f"{LABEL_NAMESPACE}={namespace(tenant)}"] if tenant else [])
    for host in _hosts(sessions, tenant):
        try:
            client = connect(host)
        except Failed:
            continue
        with contextlib.closing(client):
            try:
                images = client.images.list(filters={"label": selector})
            except docker.errors.DockerException:
                continue
            for image in images:
                labels = image.labels or {}
                tag = image_tag(
                    None
                    if labels.get(LABEL_NAMESPACE) == UNTENANTED_STACK
                    else labels.get(LABEL_NAMESPACE),
                    labels.get(LABEL_SNAPSHOT, ""),
                )
                if tag in (image.tags or []):
                    found.append(_as_snapshot(image, host))
    return sorted(found, key=lambda s: (s.tenant or "", s.name))


def _find(sessions: SessionsLike, name: str, tenant: str | None) -> tuple[Any, Snapshot]:
    """(client, snapshot) of ``name`` in ``tenant``'s namespace; NotFound otherwise (also
    for another tenant's)."""
    validate_name(name)
    for host in _hosts(sessions, tenant):
        try:
            client = connect(host)
        except Failed:
            continue
        image = _image(client, tenant, name)
        if image is not None:
            return client, _as_snapshot(image, host)
        client.close()
    scope = f" of tenant {tenant}" if tenant else ""
    raise NotFound(f"no snapshot {name!r}{scope} on this machine's engines")


def users(sessions: SessionsLike, snapshot: Snapshot) -> list[str]:
    """Sessions whose request runs the snapshot's image."""
    return sorted(
        r.session_id
        for r in sessions.registry.all(snapshot.tenant)
        if (r.request.get("container") or {}).get("image") == snapshot.image
        and r.tenant == snapshot.tenant
    )


def remove(sessions: SessionsLike, name: str, tenant: str | None = None) -> Snapshot:
    """Remove the snapshot's image and volume copies. Refused while a session runs its
    image (a fork: destroy the fork first)."""
    with _audited(sessions, "snapshot-remove", tenant=tenant) as entry:
        entry["detail"] = f"snapshot {str(name)[:80]}"
        client, snapshot = _find(sessions, name, tenant)
        with contextlib.closing(client):
            using = users(sessions, snapshot)
            if using:
                raise Conflict(
                    f"snapshot {name!r} is the image of session(s) {', '.join(using)}: "
                    "destroy them first"
                )
            if snapshot.volumes:
                _helper(
                    client, snapshot.imageId, REMOVE_SCRIPT, snapshot_dir(snapshot.tenant, name)
                )
            client.images.remove(snapshot.image, force=False)
            return snapshot


def fork_request(record: Record, as_: str, image: str) -> dict[str, Any]:
    """The fork's request: the parent's, with its own id and the snapshot's image (the
    image holds any language layer already: ``variant: core``)."""
    request = copy.deepcopy(record.request)
    request["sessionId"] = as_
    container = dict(request.get("container") or {})
    container["image"] = image
    request["container"] = container
    request["variant"] = "core"
    return request


def fork(
    sessions: Any,
    session: str,
    as_: str,
    tenant: str | None = None,
    snapshot: str | None = None,
    secrets: Mapping[str, str] | None = None,
    progress: Progress = lambda _line: None,
) -> Mapping[str, Any]:
    """A new session ``as_`` (same tenant) with ``session``'s files and installed packages:
    from the named ``snapshot``, else from one taken now. Returns its manifest.
    ``sessions``: :class:`dockyard.sessions.Sessions` (its ``create`` makes the fork)."""
    record = sessions.registry.find(session, tenant)
    with _audited(
        sessions, "fork", session=session, tenant=record.tenant, host=record.host,
        stack=record.stack_name,
    ) as entry:  # fmt: skip
        validate_name(as_, "as")
        if snapshot is not None:
            validate_name(snapshot)
        entry["detail"] = f"as {as_}" + (f" from snapshot {snapshot}" if snapshot else "")
        refuse_unsupported(plan_of(sessions, record), "fork")
        if any(r.session_id == as_ and r.tenant == record.tenant for r in sessions.registry.all()):
            raise Conflict(f"session {as_!r} exists (allowed: a new session id)")
        name = snapshot or as_
        request = fork_request(record, as_, image_tag(record.tenant, name))
        fork_plan = plan_of(sessions, _placeholder(record, request))
        target = disk_dir(fork_plan.environment_id)
        client = connect(record.host)
        made: Any = None
        with contextlib.closing(client):
            if snapshot is not None:
                image = _image(client, record.tenant, snapshot)
                if image is None:
                    scope = f" of tenant {record.tenant}" if record.tenant else ""
                    raise NotFound(f"no snapshot {snapshot!r}{scope} on engine {record.host}")
                held = _as_snapshot(image, record.host)
                if held.kind != KIND_SNAPSHOT or not held.volumes:
                    raise InvalidInput(
                        "snapshot", [f"snapshot: {snapshot!r} holds no volumes (a fork's image)"]
                    )
                _helper(client, image.id, COPY_SCRIPT, snapshot_dir(record.tenant, snapshot),
                        target, *_specs())  # fmt: skip
            else:
                if _image(client, record.tenant, as_) is not None:
                    raise Conflict(
                        f"snapshot {as_!r} exists: a fork keeps its image under its own name "
                        "(allowed: another name, or remove that snapshot first)"
                    )
                container = container_of(record, client)
                with _quiesced(sessions, record, container):
                    made = _commit(container, record, as_, KIND_FORK, [])
                    try:
                        _helper(client, container.image.id, COPY_SCRIPT,
                                disk_dir(record.environment_id), target, *_specs())  # fmt: skip
                    except BaseException:
                        with contextlib.suppress(Exception):
                            client.images.remove(made.id, force=True)
                        raise
            try:
                return sessions.create(request, secrets, progress)  # type: ignore[no-any-return]
            except BaseException:
                # create leaves nothing of its own; the copies and a fork's image are ours.
                with contextlib.suppress(Exception):
                    _helper(client, container_image(client, record), REMOVE_SCRIPT, target)
                if made is not None:
                    with contextlib.suppress(Exception):
                        client.images.remove(made.id, force=True)
                raise


def container_image(client: Any, record: Record) -> str:
    return str(container_of(record, client).image.id)


def _placeholder(record: Record, request: dict[str, Any]) -> Record:
    """A record of the fork-to-be, to plan it as destroy would (names only)."""
    return Record(
        session_id=str(request["sessionId"]),
        tenant=record.tenant,
        stack_name="",
        cwd=record.cwd,
        manifest_path="",
        host=record.host,
        request=request,
        created_at="",
        naming=NAMING_CURRENT,
    )
