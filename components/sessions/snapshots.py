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

The copies are made by a root helper container on the engine (:func:`_helper`) from the
operator's ``helperImage`` only (resolved to its image ID on that engine at each use),
never from the session's image (the tenant's choice) or a snapshot image (the agent's own
layer): their ``/bin/sh`` or ``cp`` would run as root over the disk images. It binds
only the source (read-only) and destination directories of this copy; removing one binds
its parent (the tenant's snapshot namespace, or the disks directory for a failed fork).

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
from ..config import from_host_settings
from ..config.values import SESSION_ALLOWED
from ..contract import (
    NAMING_CURRENT,
    SESSION_ID,
    UNTENANTED_STACK,
    session_id_reserved,
)
from ..errors import Conflict, Failed, InvalidInput, NotFound
from ..storage import Bind, disk_dir, helper_ref, missing_helper
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
from .settings import load_settings

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

# $1 source directory (bound read-only), $2 destination directory (bound: the engine makes
# it when missing; holding anything: exit 5), then role[:file,file...] specs. Runs as root
# in a helper on the engine, no network. The claim (mkdir, kept) is atomic against a
# concurrent copy to the same place; a copy that fails leaves the destination empty.
COPY_SCRIPT = r"""
set -eu
src=$1; dst=$2; shift 2
umask 077
sync
{ [ -z "$(ls -A "$dst")" ] && mkdir "$dst/.claimed"; } 2>/dev/null \
  || { echo "ERROR: $dst exists" >&2; exit 5; }
chmod 700 "$dst"
trap 'rc=$?; [ "$rc" -eq 0 ] || rm -rf -- "$dst"/*.img "$dst"/*.img.new "$dst/.claimed"' EXIT
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
# $1 the parent directory (bound), then names of directories in it to remove.
REMOVE_SCRIPT = r"""
set -eu
parent=$1; shift
for name in "$@"; do
  case $name in ''|.|..|*/*) echo "ERROR: $name is not a directory name" >&2; exit 2 ;; esac
  rm -rf -- "${parent:?}/$name"
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


def helper_image(client: Any, ref: str, host: str) -> str:
    """The ID on this engine of the operator's helper image ``ref`` (``helperImage``):
    a helper runs from that, never from a session's or a snapshot's image. Missing:
    Failed naming the key."""
    import docker.errors

    ref = helper_ref(ref)
    try:
        return str(client.images.get(ref).id)
    except docker.errors.ImageNotFound:
        raise Failed(missing_helper(ref, f"engine {host}")) from None
    except docker.errors.DockerException as exc:
        raise Failed(f"helperImage: {ref!r} on engine {host}: {exc}") from None


def host_helper_ref(sessions: SessionsLike) -> str:
    """``helperImage`` of the host settings (where no session's plan is at hand)."""
    settings = load_settings(sessions.where)
    return from_host_settings(
        settings, stack="sessions", cwd=str(sessions.where.state)
    ).helper_image


def copy_binds(src: str, dst: str) -> list[Bind]:
    """What a copy sees: its source read-only, its destination."""
    return [(src, "ro"), (dst, "rw")]


def remove_binds(path: str) -> tuple[list[Bind], str, str]:
    """(binds, parent, name) to remove the directory ``path``: removing an entry writes
    its parent, so the parent is bound (and nothing above it)."""
    parent, _, name = path.rstrip("/").rpartition("/")
    if not parent.startswith("/var/lib/dockyard/") or not name:
        raise ValueError(f"{path!r}: not a directory under /var/lib/dockyard/")
    return [(parent, "rw")], parent, name


def _helper(client: Any, image: str, script: str, *args: str, binds: list[Bind]) -> None:
    """Run ``script`` as root in a short-lived helper on the engine from ``image`` (the
    ID :func:`helper_image` resolved; never a session's or a snapshot's), no network, with
    only ``binds`` (paths on the engine's host, at the same path inside). Exit 5: the
    destination exists."""
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
            volumes={path: {"bind": path, "mode": mode} for path, mode in binds},
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


def _commit_and_copy(
    sessions: SessionsLike,
    client: Any,
    helper: str,
    record: Record,
    name: str,
    kind: str,
    volumes: list[str],
    target: str,
) -> Any:
    """With the session quiesced: its container committed as image ``name`` (``kind``) and
    its disk directory copied to ``target``; the image is removed again if the copy fails.
    The committed image."""
    container = container_of(record, client)
    with _quiesced(sessions, record, container):
        image = _commit(container, record, name, kind, volumes)
        source = disk_dir(record.environment_id)
        try:
            _helper(client, helper, COPY_SCRIPT, source, target, *_specs(),
                    binds=copy_binds(source, target))  # fmt: skip
        except BaseException:
            with contextlib.suppress(Exception):
                client.images.remove(image.id, force=True)
            raise
    return image


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
        plan = plan_of(sessions, record)
        refuse_unsupported(plan, "snapshot")
        entry["detail"] = f"snapshot {name}"
        client = connect(record.host)
        with contextlib.closing(client):
            if _image(client, record.tenant, name) is not None:
                raise Conflict(
                    f"snapshot {name!r} exists (allowed: another name, or remove it first)"
                )
            helper = helper_image(client, plan.config.helper_image, record.host)
            image = _commit_and_copy(
                sessions, client, helper, record, name, KIND_SNAPSHOT, list(COPIED_ROLES),
                snapshot_dir(record.tenant, name),
            )  # fmt: skip
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
                binds, parent, entry_name = remove_binds(snapshot_dir(snapshot.tenant, name))
                helper = helper_image(client, host_helper_ref(sessions), snapshot.host)
                _helper(client, helper, REMOVE_SCRIPT, parent, entry_name, binds=binds)
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
        plan = plan_of(sessions, record)
        refuse_unsupported(plan, "fork")
        if any(r.session_id == as_ and r.tenant == record.tenant for r in sessions.registry.all()):
            raise Conflict(f"session {as_!r} exists (allowed: a new session id)")
        name = snapshot or as_
        request = fork_request(record, as_, image_tag(record.tenant, name))
        fork_plan = plan_of(sessions, _placeholder(record, request))
        target = disk_dir(fork_plan.environment_id)
        client = connect(record.host)
        made: Any = None
        with contextlib.closing(client):
            helper = helper_image(client, plan.config.helper_image, record.host)
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
                source = snapshot_dir(record.tenant, snapshot)
                _helper(client, helper, COPY_SCRIPT, source, target, *_specs(),
                        binds=copy_binds(source, target))  # fmt: skip
            else:
                if _image(client, record.tenant, as_) is not None:
                    raise Conflict(
                        f"snapshot {as_!r} exists: a fork keeps its image under its own name "
                        "(allowed: another name, or remove that snapshot first)"
                    )
                made = _commit_and_copy(
                    sessions, client, helper, record, as_, KIND_FORK, [], target
                )
            try:
                return sessions.create(request, secrets, progress)  # type: ignore[no-any-return]
            except BaseException:
                # create leaves nothing of its own; the copies and a fork's image are ours.
                with contextlib.suppress(Exception):
                    binds, parent, entry_name = remove_binds(target)
                    _helper(client, helper, REMOVE_SCRIPT, parent, entry_name, binds=binds)
                if made is not None:
                    with contextlib.suppress(Exception):
                        client.images.remove(made.id, force=True)
                raise


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
