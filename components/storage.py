"""Size bounds for every writable path of an environment (issue 25 item 4, R-SEC-1).

The engine's overlay2 on ext4 cannot cap a container layer (``--storage-opt size`` needs
XFS with project quotas), and the local volume driver mounts with mount(2), so ``o=loop``
is refused ("data: loop: invalid argument", measured on Docker 20.10). What bounds what:

- ``/workspace``, ``/config``, ``/checkpoints`` and ``$HOME`` (``/home/agent``): each a
  plain named volume of the local driver on whose directory a helper mounts (on the
  engine's host, through shared propagation) an ext4 filesystem that lives in a sparse
  image file on the engine's host (``<disks dir>/<environment>/<role>.img``), attached to
  a loop device. No mount options on the volume: engine 20.10 before 20.10.26 loses the
  local driver's mount count of such a volume across a live-restore engine restart, and
  then refuses its removal. The helper finds the device through a stable path
  (``/run/dockyard/disks/<environment>/<role>.dev``, a symlink to the loop device),
  because the loop device's number is only known once attached and changes after a
  reboot; /run empties at a reboot, so a stale link cannot name a device that now holds
  another environment's image. A write past the size gets ENOSPC inside; the host spends at most the
  size. ``$HOME`` starts empty (lost+found is removed), so the engine seeds it from the
  image on first use like any new named volume.
- ``/tmp``, ``/var/tmp``, ``/run/lock`` (the image's world-writable directories): tmpfs with ``size=``; their pages count against the
  container's memory limit too.
- Every file anywhere: the ``fsize`` rlimit (RLIMIT_FSIZE) is the largest bound, so no
  file can be longer than any filesystem it could live on: ``truncate -s 8T`` gets EFBIG.
  It also keeps sparse files, which ext4 allows beyond its size, from growing what a
  backup reads.

The images are made, attached and mounted by a helper container on the engine
(:mod:`dockyard.storage_scripts`: its scripts and command, and why it runs only from the
operator's ``helperImage``). One ``local.Command`` per environment: ``create`` makes
and attaches the images (an existing image is re-attached, never re-made: its data
stays), ``delete`` detaches them and removes the directory. ``python -m dockyard.storage
attach`` (:mod:`dockyard.storage_host`) re-attaches every image after a host reboot (loop
devices do not survive one), before the engine starts the environments.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from .config import ResolvedLimits
from .storage_host import DEFAULT_HELPER_IMAGE as DEFAULT_HELPER_IMAGE
from .storage_host import attach_all as attach_all
from .storage_host import main
from .storage_host import prune as prune
from .storage_scripts import (
    CREATE_SCRIPT,
    DELETE_SCRIPT,
    DISK_ROLES,
    DISKS_DIR,
    LINKS_DIR,
    MOUNT_SCRIPT,
    SECRETS_ROLE,
    UNMOUNT_SCRIPT,
    disk_dir,
    guarded_delete,
    helper_command,
    link_dir,
)
from .storage_scripts import HELPER_CAPABILITIES as HELPER_CAPABILITIES
from .storage_scripts import Bind as Bind
from .storage_scripts import helper_ref as helper_ref
from .storage_scripts import missing_helper as missing_helper

# Imported ``as`` themselves: re-exported, so ``dockyard.storage`` stays the one name its
# callers use (the sessions' snapshots, the tests, ``python -m dockyard.storage``).

AGENT_UID = 1000
DISK_PATHS = (*DISK_ROLES, "tmp", "secrets")
"""Every bounded path, as named in ``limits.disk`` (a :class:`DiskBounds` field is
``<path>_mb``)."""
HOME = "/home/agent"
SECRETS_DIR = "/run/secrets"
TMPFS_PATHS = ("/tmp", "/var/tmp", "/run/lock")  # noqa: S108 - paths inside the environment
"""The image's world-writable directories (Debian's): each a tmpfs of ``tmp_mb``."""
MIN_DISK_MB = 16
"""Below this mkfs.ext4 leaves too little room for a journal and a few files."""
MAX_DISK_MB = 16 * 1024 * 1024
"""16 TiB: ext4's largest file with 4 KiB blocks; no bound beyond it means anything."""
MIN_TMP_MB = 1


@dataclass(frozen=True)
class DiskBounds:
    """Sizes in MiB of an environment's writable paths. ``tmp_mb`` is each tmpfs
    (/tmp, /var/tmp); the others are the ext4 filesystems of the named volumes."""

    workspace_mb: int = 20 * 1024
    config_mb: int = 512
    checkpoints_mb: int = 4 * 1024
    home_mb: int = 4 * 1024
    tmp_mb: int = 1024
    secrets_mb: int = MIN_DISK_MB

    def __post_init__(self) -> None:
        problems = [
            f"{key}: {value!r} is not allowed (allowed: a whole number of MiB from {low} to {high})"
            for key, low, high in (
                *((f"{role}_mb", MIN_DISK_MB, MAX_DISK_MB) for role in (*DISK_ROLES, "secrets")),
                ("tmp_mb", MIN_TMP_MB, MAX_DISK_MB),
            )
            for value in [getattr(self, key)]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
        ]
        if problems:
            raise ValueError("disk bounds: " + "; ".join(problems))

    def size_mb(self, role: str) -> int:
        return int(getattr(self, f"{role.split('-')[0]}_mb"))

    @property
    def largest_file_bytes(self) -> int:
        """The ``fsize`` rlimit: the largest filesystem a file could live on."""
        return max(self.size_mb(role) for role in (*DISK_ROLES, "tmp")) * 1024 * 1024


def bounds_of(limits: ResolvedLimits) -> DiskBounds:
    """An environment's bounds from its resolved ``limits.disk`` (profile < stack <
    environment, dockyard.config)."""
    return DiskBounds(**{f"{path}_mb": getattr(limits.disk, path) for path in DISK_PATHS})


def volume_options(environment_id: str, role: str) -> dict[str, str] | None:
    """``driver_opts`` of a bounded volume: none. A volume with mount options is counted
    by the local driver, and engine 20.10 before 20.10.26 loses that count for containers
    live-restored across an engine restart: once they stop, the volume is refused removal
    ("volume has active mounts") until the engine restarts again. A plain volume is not
    counted; the helper mounts the ext4 filesystem on its directory
    (:data:`MOUNT_SCRIPT`)."""
    del environment_id, role
    return None


def tmpfs_mounts(bounds: DiskBounds) -> dict[str, str]:
    """The container's ``tmpfs`` input: each path capped at ``tmp_mb``."""
    options = f"size={bounds.tmp_mb}m,mode=1777,nodev,nosuid"
    return dict.fromkeys(TMPFS_PATHS, options)


def images_command(
    name: str,
    environment_id: str,
    bounds: DiskBounds,
    helper_image: pulumi.Input[str],
    roles: Sequence[str],
    docker_host: str | None,
    opts: pulumi.ResourceOptions,
) -> command.local.Command:
    """The ``local.Command`` that makes and attaches the images of ``roles`` on the
    engine (``create``) and detaches and removes them (``delete``). ``helper_image``: the
    operator's ``helperImage`` (sh, truncate, mkfs.ext4, debugfs and losetup in it), never
    the environment's own. ``create`` binds the environment's two directories only;
    ``delete`` their parents (removing a directory is a write to its parent)."""
    places = (disk_dir(environment_id), link_dir(environment_id))
    own = [(path, "rw") for path in places]
    roots = [(DISKS_DIR, "rw"), (LINKS_DIR, "rw")]
    specs = [f"{role}:{bounds.size_mb(role)}" for role in roles]
    image = pulumi.Output.from_input(helper_image)
    return command.local.Command(
        name,
        create=image.apply(lambda i: helper_command(i, CREATE_SCRIPT, *places, *specs, binds=own)),
        delete=image.apply(
            lambda i: guarded_delete(
                [f"{environment_id}-{role}" for role in roles],
                helper_command(i, DELETE_SCRIPT, *places, binds=roots),
            )
        ),
        environment={"DOCKER_HOST": docker_host} if docker_host else None,
        # No triggers: a replacement (create, then the old delete) must never happen to
        # images that hold data. A new size or image re-runs create, which keeps every
        # existing image as it is (growing one is docs/stacks.md's procedure).
        opts=opts,
    )


def mount_command(
    name: str,
    links: str,
    roles: Sequence[str],
    volume_names: Sequence[pulumi.Input[str]],
    helper_image: pulumi.Input[str],
    docker_host: str | None,
    opts: pulumi.ResourceOptions,
) -> command.local.Command:
    """The ``local.Command`` mounting the images of ``roles`` on their volumes'
    directories (:data:`MOUNT_SCRIPT`) and unmounting them (:data:`UNMOUNT_SCRIPT`)."""

    def text(values: list[str]) -> tuple[str, str]:
        image, names = values[0], dict(zip(roles, values[1:], strict=True))
        return (
            helper_command(
                image, MOUNT_SCRIPT, links, *roles, binds=[(links, "ro")], volumes=names
            ),
            helper_command(image, UNMOUNT_SCRIPT, *roles, volumes=names, missing_ok=True),
        )

    scripts = pulumi.Output.all(helper_image, *volume_names).apply(text)
    return command.local.Command(
        name,
        create=scripts.apply(lambda t: t[0]),
        delete=scripts.apply(lambda t: t[1]),
        # The volume names also as values of their own: what it uses, for any reader.
        environment={
            **({"DOCKER_HOST": docker_host} if docker_host else {}),
            **{f"DOCKYARD_VOLUME_{i}": v for i, v in enumerate(volume_names)},
        },
        opts=opts,
    )


@dataclass(frozen=True)
class Bounded:
    """What an environment declares from its bounds (all empty when it has none)."""

    environment_id: str
    bounds: DiskBounds | None
    roles: tuple[str, ...] = ()
    depends_on: tuple[pulumi.Resource, ...] = ()
    helper_image: pulumi.Input[str] = ""
    docker_host: str | None = None

    def mount(
        self, name: str, volumes: Mapping[str, pulumi.Input[str]], opts: pulumi.ResourceOptions
    ) -> tuple[pulumi.Resource, ...]:
        """Mount each bounded filesystem on its (plain) volume's directory on the engine
        (``create``), unmount it before the volumes go (``delete``). ``volumes``: role →
        volume name; ``opts`` must depend on the volumes. What the container and anything
        writing the volumes depend on."""
        roles = [r for r in self.roles if r in volumes]
        if not roles:
            return ()
        links = link_dir(self.environment_id)
        return (
            mount_command(
                name, links, roles, [volumes[r] for r in roles], self.helper_image,
                self.docker_host, opts,
            ),
        )  # fmt: skip

    @property
    def extra_roles(self) -> tuple[str, ...]:
        """Volumes beyond workspace/config/checkpoints: ``home`` and ``secrets-<digest>``
        when bounded."""
        return tuple(r for r in self.roles if r == "home" or is_secrets_role(r))

    def volume_options(self, role: str) -> dict[str, str] | None:
        return volume_options(self.environment_id, role) if role in self.roles else None

    @property
    def tmpfs(self) -> dict[str, str] | None:
        return tmpfs_mounts(self.bounds) if self.bounds is not None else None

    def ulimits(self, kind: type) -> list:
        """The fsize rlimit (``kind``: pulumi_docker.ContainerUlimitArgs)."""
        if self.bounds is None:
            return []
        largest = self.bounds.largest_file_bytes
        return [kind(name="fsize", soft=largest, hard=largest)]


def secrets_role(names: Sequence[str]) -> str:
    """``secrets-<digest of the sorted names>``: names only, never a value."""
    digest = hashlib.sha256("\n".join(sorted(set(names))).encode()).hexdigest()
    return f"{SECRETS_ROLE}-{digest[:8]}"


def is_secrets_role(role: str) -> bool:
    return re.fullmatch(rf"{SECRETS_ROLE}-[0-9a-f]{{8}}", role) is not None


def mount_path(role: str) -> str:
    if is_secrets_role(role):
        return SECRETS_DIR
    return HOME if role == "home" else f"/{role}"


def declare(
    name: str,
    environment_id: str,
    bounds: DiskBounds | None,
    helper_image: pulumi.Input[str],
    docker_host: str | None,
    *,
    workspace_bound_elsewhere: bool,
    opts: pulumi.ResourceOptions,
    secret_names: Sequence[str] = (),
) -> Bounded:
    """The environment's bounded filesystems (none when ``bounds`` is None). A workspace
    bound to a host directory (``workspaceHostPath``) stays that directory: its own
    filesystem is its bound."""
    if bounds is None:
        return Bounded(environment_id, None)
    roles = tuple(r for r in DISK_ROLES if not (r == "workspace" and workspace_bound_elsewhere))
    roles += (secrets_role(secret_names),)
    images = images_command(name, environment_id, bounds, helper_image, roles, docker_host, opts)
    return Bounded(environment_id, bounds, roles, (images,), helper_image, docker_host)


if __name__ == "__main__":
    sys.exit(main())
